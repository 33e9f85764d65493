"""Public Triton entry point: the three phases chained, same signature and returns as the reference.

    A  (parallel over frames)  W, U, Wz, uz      triton_phase_a.py
    B  (serial over frames)    hist = M + R      triton_scan.py
    C  (parallel over tokens)  o = q H / (qz Hz + eps)   triton_output.py

Workspaces (float32, per call): W [B,H,T,D,D], U and hist [B,H,T,D,Dv]; for the full clip (H = 20, D = 112,
T = 121) that is 3 x 121 MB. Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import os

import torch

from .checks import check_gdn_inputs

MAX_HEAD_DIM = 256  # the scan keeps all D rows of a state slice in one program (BD = next_pow2(D))


def _check_device(q: torch.Tensor) -> None:
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"gdn_scan_triton: tensors are on {q.device}; the Triton kernels need CUDA tensors, or set "
            "TRITON_INTERPRET=1 before importing triton to run them on CPU (slow, for tests)"
        )


def gdn_scan_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    qz: torch.Tensor | None = None,
    kz: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    reverse: bool = True,
    eps: float = 1e-8,
    dot_precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Frame-wise GDN with the chunkwise Triton kernels. Args/returns as :func:`gdn_recurrent_ref`.

    ``dot_precision``: ``"ieee"`` (fp32 products, matches the reference to ~1e-6) or ``"tf32"`` (faster
    on GPU, ~1e-3). State is always accumulated in float32.
    """
    check_gdn_inputs(q, k, v, beta, gamma, qz, kz, state, z)
    _check_device(q)
    D = q.shape[-1]
    if D > MAX_HEAD_DIM:
        raise ValueError(f"gdn_scan_triton: head dim D={D} > {MAX_HEAD_DIM} is not supported; use the reference")
    if dot_precision not in ("ieee", "tf32"):
        raise ValueError(f"gdn_scan_triton: dot_precision must be 'ieee' or 'tf32', got {dot_precision!r}")
    from .triton_output import gdn_output
    from .triton_phase_a import gdn_phase_a
    from .triton_scan import gdn_scan_fwd

    q, k, v, beta, gamma = (t.contiguous() for t in (q, k, v, beta, gamma))
    has_den = qz is not None
    p = dot_precision
    w = gdn_phase_a(k, beta, gamma, transition=True, dot_precision=p)  # [B, H, T, D, D]
    u = gdn_phase_a(k, beta, gamma, x=v, dot_precision=p)  # [B, H, T, D, Dv]
    hm, state_out = gdn_scan_fwd(w, u, state, reverse, dot_precision=p)
    hz = z_out = None
    if has_den:
        qz, kz = qz.contiguous(), kz.contiguous()
        wz = gdn_phase_a(kz, beta, gamma, transition=True, dot_precision=p)
        uz = gdn_phase_a(kz, beta, gamma, dot_precision=p)  # [B, H, T, D, 1]
        hz, z_out = gdn_scan_fwd(wz, uz, None if z is None else z[..., None], reverse, dot_precision=p)
        z_out = z_out[..., 0]
    o = gdn_output(q, hm, qz, hz, eps, v.dtype, dot_precision=p)
    return o, state_out, z_out
