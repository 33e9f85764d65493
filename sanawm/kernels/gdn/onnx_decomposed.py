"""Export form (a): the GDN op in plain torch ops that export to standard ONNX, unrolled over T frames.

Same maths and args/returns as :func:`gdn_recurrent_ref`, in the phase order of the kernels (batched
per-frame products, serial D x D scan, batched query projection). Only MatMul / Mul / Add / Sub / Div /
Transpose / ReduceSum / Unsqueeze / Slice (frame select) / Concat (stack) appear; no loops, no
data-dependent control flow and no in-place indexing, so ``torch.onnx.export(dynamo=True)`` lowers it
directly. T (frames per call) is static per graph: the Python loop is unrolled at trace time.
Gamma (I - P) h is applied as gamma (h - P h) so no identity constant is needed.

Symbolic T (one graph for several chunk lengths, ``sanawm.models.generator_step.GeneratorStepDynamic``): a
loop cannot be unrolled over a symbolic length, so inside ``padded_frames(t_max)`` the scan runs over t_max
frames: the per-frame products P, U of the real frames are padded at the END with P = 0, U = 0 and gamma = 1.
A padding frame then maps the forward state h -> 1 * (h - 0 h) + 0 = h and the reverse carry r -> r (which is
0 when it reaches the real frames, since the padding comes last), bit for bit, so state_out and every real
frame's history equal the unpadded scan; the history is sliced back to T. Only the serial D x D scan pays for
the padding (t_max / T of it); the projections, the per-frame products and the query product stay at T.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from .checks import check_gdn_inputs


_PAD_FRAMES: contextvars.ContextVar[int | None] = contextvars.ContextVar("gdn_pad_frames", default=None)


@contextlib.contextmanager
def padded_frames(t_max: int):
    """Within this block, a decomposed scan over a symbolic frame count T runs over ``t_max`` frames (T <= t_max)."""
    tok = _PAD_FRAMES.set(int(t_max))
    try:
        yield
    finally:
        _PAD_FRAMES.reset(tok)


def _scan_length(T) -> int:
    if isinstance(T, int):
        return T
    t_max = _PAD_FRAMES.get()
    if t_max is None:
        raise ValueError(
            "gdn_scan_decomposed: the frame count is symbolic (dynamic frame axis) but no static maximum is set; "
            "trace inside sanawm.kernels.gdn.onnx_decomposed.padded_frames(t_max)"
        )
    return t_max


def _pad_frames(x: torch.Tensor, n: int, value: float) -> torch.Tensor:
    """``x`` [B, H, T, ...] -> [B, H, n, ...], padded at the end with ``value``; the size is static (n) even
    when T is symbolic: [x ; n pad frames][:, :, :n] (valid for any T <= n, no empty tensors).

    The pad is ``0 * x[frame 0] (+ value)`` broadcast, not a ``torch.full``: a full-shape constant would be
    folded into an initializer (4 MB per D x D pad at full size, ~240 MB over the model), and x is finite."""
    pad = x[:, :, :1] * 0.0
    if value:
        pad = pad + value
    pad = pad.expand(*x.shape[:2], n, *x.shape[3:])
    return torch.cat([x, pad], 2)[:, :, :n]


def gdn_scan_decomposed(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Frame-wise GDN as an unrolled, export-friendly torch graph (see module docstring)."""
    # the finiteness check is a host sync / data-dependent branch: skip it while tracing
    check_gdn_inputs(q, k, v, beta, gamma, qz, kz, state, z, check_finite=not torch.compiler.is_exporting())
    out_dtype = v.dtype
    f32 = torch.float32
    q, k, v, beta, gamma = (t.to(f32) for t in (q, k, v, beta, gamma))
    B, H, T, S, D = q.shape
    Dv = v.shape[-1]
    has_den = qz is not None
    T_scan = _scan_length(T)
    padded = not isinstance(T, int)
    g = gamma[..., None, None]  # [B, H, T, 1, 1]
    if padded:
        g = _pad_frames(g, T_scan, 1.0)

    def scan(P, U, h0):
        # P [B,H,T,D,D], U [B,H,T,D,N], h0 [B,H,D,N] or None -> hist [B,H,T,D,N], final [B,H,D,N]
        if padded:
            P, U = _pad_frames(P, T_scan, 0.0), _pad_frames(U, T_scan, 0.0)
        Ps, Us, gs = P.unbind(2), U.unbind(2), g.unbind(2)
        hist = []
        h = h0
        for t in range(T_scan):
            h = Us[t] if h is None else gs[t] * (h - Ps[t] @ h) + Us[t]
            hist.append(h)
        h_final = h
        if reverse:
            r = None  # exclusive: frame T-1 gets nothing
            for t in range(T_scan - 1, -1, -1):
                if r is not None:
                    hist[t] = hist[t] + r
                r = Us[t] if r is None else gs[t] * (r - Ps[t] @ r) + Us[t]
        out = torch.stack(hist, 2)
        if padded:  # a gather, not a slice: a slice's strides keep t_max and make later matmuls guard on T
            out = out.index_select(2, torch.arange(T, device=out.device))
        return out, h_final

    kbT = (k * beta[..., None]).transpose(-1, -2)  # [B, H, T, D, S]
    Hm, state_out = scan(kbT @ k, kbT @ v, None if state is None else state.to(f32))
    num = q @ Hm  # [B, H, T, S, Dv]
    if not has_den:
        return num.to(out_dtype), state_out, None
    kz = kz.to(f32)
    kzbT = (kz * beta[..., None]).transpose(-1, -2)
    uz = kzbT.sum(-1, keepdim=True)  # [B, H, T, D, 1]
    Hz, z_out = scan(kzbT @ kz, uz, None if z is None else z.to(f32)[..., None])
    den = qz.to(f32) @ Hz  # [B, H, T, S, 1]
    return (num / (den + eps)).to(out_dtype), state_out, z_out[..., 0]
