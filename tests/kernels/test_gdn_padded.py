"""The decomposed GDN scan over a symbolic frame count (padded to a static maximum inside the graph) equals the
reference at every length up to that maximum: outputs, forward state and normaliser state, with the reverse scan.

The program is traced once by ``torch.export`` with a dynamic T in [2, 5] inside ``padded_frames(5)`` and run
at T = 2..5; the padding frames (P = 0, U = 0, gamma = 1, at the end) leave state and reverse carry untouched.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sanawm.kernels.gdn import gdn_recurrent_ref  # noqa: E402
from sanawm.kernels.gdn.onnx_decomposed import gdn_scan_decomposed, padded_frames  # noqa: E402

T_MAX = 5
TOL = 1e-5


class _Scan(torch.nn.Module):
    def forward(self, q, k, v, beta, gamma, qz, kz, state, z):
        with padded_frames(T_MAX):
            return gdn_scan_decomposed(q, k, v, beta, gamma, qz, kz, state, z, reverse=True)


class _Unbounded(torch.nn.Module):
    def forward(self, *args):
        return gdn_scan_decomposed(*args)


def _inputs(T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    B, H, S, D = 1, 2, 6, 8

    def r(*s):
        return torch.rand(*s, generator=g)

    q, k, v = r(B, H, T, S, D), r(B, H, T, S, D) * 0.3, torch.randn(B, H, T, S, D, generator=g)
    beta, gamma = r(B, H, T, S), 0.5 + 0.5 * r(B, H, T)
    qz, kz = r(B, H, T, S, D), r(B, H, T, S, D) * 0.3
    return q, k, v, beta, gamma, qz, kz, r(B, H, D, D) * 0.2, r(B, H, D) * 0.2


def test_padded_scan_equals_reference_at_every_length():
    T = torch.export.Dim("T", min=2, max=T_MAX)
    frame = {2: T}
    shapes = (frame, frame, frame, frame, frame, frame, frame, None, None)
    prog = torch.export.export(_Scan(), _inputs(3, 0), dynamic_shapes=shapes)
    for t in range(2, T_MAX + 1):
        args = _inputs(t, seed=t)
        got = prog.module()(*args)
        want = gdn_recurrent_ref(*args, reverse=True)
        for name, a, b in zip(("o", "state", "z"), want, got):
            err = float((a - b).norm() / a.norm())
            assert err <= TOL, (t, name, err)
    with pytest.raises(ValueError, match="padded_frames"):  # a symbolic T without a maximum is refused
        torch.export.export(_Unbounded(), _inputs(3, 0), dynamic_shapes={"args": shapes})
