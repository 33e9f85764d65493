"""Export form (a): the GDN op in plain torch ops that export to standard ONNX, unrolled over T frames.

Same maths and args/returns as :func:`gdn_recurrent_ref`, in the phase order of the kernels (batched
per-frame products, serial D x D scan, batched query projection). Only MatMul / Mul / Add / Sub / Div /
Transpose / ReduceSum / Unsqueeze / Slice (frame select) / Concat (stack) appear; no loops, no
data-dependent control flow and no in-place indexing, so ``torch.onnx.export(dynamo=True)`` lowers it
directly. T (frames per call) is static per graph: the Python loop is unrolled at trace time.
Gamma (I - P) h is applied as gamma (h - P h) so no identity constant is needed.
"""

from __future__ import annotations

import torch

from .checks import check_gdn_inputs


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
    g = gamma[..., None, None]  # [B, H, T, 1, 1]

    def scan(P, U, h0):
        # P [B,H,T,D,D], U [B,H,T,D,N], h0 [B,H,D,N] or None -> hist [B,H,T,D,N], final [B,H,D,N]
        Ps, Us, gs = P.unbind(2), U.unbind(2), g.unbind(2)
        hist = []
        h = h0
        for t in range(T):
            h = Us[t] if h is None else gs[t] * (h - Ps[t] @ h) + Us[t]
            hist.append(h)
        h_final = h
        if reverse:
            r = None  # exclusive: frame T-1 gets nothing
            for t in range(T - 1, -1, -1):
                if r is not None:
                    hist[t] = hist[t] + r
                r = Us[t] if r is None else gs[t] * (r - Ps[t] @ r) + Us[t]
        return torch.stack(hist, 2), h_final

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
