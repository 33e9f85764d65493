"""Frame-wise Gated DeltaNet recurrence: the plain torch reference (the oracle).

Straight from sana-wm-reference.md section 5.3. Per batch b and head h, with frame t holding S tokens:

    M_t = gamma_t (I - K_t^T B_t K_t) M_{t-1} + K_t^T B_t V_t          (KV state, [Dk, Dv])
    z_t = gamma_t (I - Kz_t^T B_t Kz_t) z_{t-1} + Kz_t^T beta_t        (normaliser, [Dk])

All tokens of a frame read the same decayed state and their updates are summed ("frame-wise").
Forward outputs are inclusive (frame t reads M_t); the reverse scan is exclusive (frame t reads the state
built from frames t+1..T-1 of the same call, using their own gates) and never carries state between calls.

    o = q^T (M_t + R_t) / (qz^T (z_t + zeta_t) + eps)       main branch (q, k rotated; qz, kz not)
    o = q^T (M_t + R_t)                                      camera branch (numerator only)

Layouts (shared by every form of this op: reference, Triton, ONNX):
    q, k, qz, kz  [B, H, T, S, D]     v  [B, H, T, S, Dv]
    beta          [B, H, T, S]        gamma  [B, H, T]
    state         [B, H, D, Dv] float32   (forward KV state; "[k, v]" layout)
    z             [B, H, D]     float32
"""

from __future__ import annotations

import torch

from .checks import check_gdn_inputs


def gdn_recurrent_ref(
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
    """One call of the frame-wise GDN over T frames, float32, one loop over frames.

    Args:
        q, k: numerator query/key ``[B, H, T, S, D]`` (rotated for the main branch).
        v: values ``[B, H, T, S, Dv]``.
        beta: per-token write strength ``[B, H, T, S]``.
        gamma: per-frame decay ``[B, H, T]``.
        qz, kz: denominator query/key ``[B, H, T, S, D]``; both ``None`` selects the numerator-only
            (camera) form.
        state, z: forward initial states (``None`` = zeros).
        reverse: add the in-call exclusive reverse scan (bidirectional inside the call).
        eps: added to the denominator before the single division.

    Returns:
        ``(o, state_out, z_out)``: ``o`` ``[B, H, T, S, Dv]`` in ``v.dtype``; the forward state after the
        last frame (float32); ``z_out`` is ``None`` for the numerator-only form.
    """
    check_gdn_inputs(q, k, v, beta, gamma, qz, kz, state, z)
    out_dtype = v.dtype
    f32 = torch.float32
    q, k, v, beta, gamma = (t.to(f32) for t in (q, k, v, beta, gamma))
    has_den = qz is not None
    if has_den:
        qz, kz = qz.to(f32), kz.to(f32)
    B, H, T, S, D = q.shape
    Dv = v.shape[-1]

    M = torch.zeros(B, H, D, Dv, dtype=f32, device=q.device) if state is None else state.to(f32).clone()
    Z = None
    if has_den:
        Z = torch.zeros(B, H, D, dtype=f32, device=q.device) if z is None else z.to(f32).clone()

    def update(M, Z, t):
        kt, vt, bt, gt = k[:, :, t], v[:, :, t], beta[:, :, t], gamma[:, :, t]  # [B,H,S,D] ...
        kb = kt * bt[..., None]  # B_t K_t
        # gamma (M - K^T B K M) + K^T B V
        M = gt[..., None, None] * (M - kb.transpose(-1, -2) @ (kt @ M)) + kb.transpose(-1, -2) @ vt
        if Z is not None:
            kzt = kz[:, :, t]
            kzb = kzt * bt[..., None]
            Z = gt[..., None] * (Z - (kzb.transpose(-1, -2) @ (kzt @ Z[..., None]))[..., 0]) + kzb.sum(-2)
        return M, Z

    num = torch.zeros(B, H, T, S, Dv, dtype=f32, device=q.device)
    den = torch.zeros(B, H, T, S, dtype=f32, device=q.device) if has_den else None
    for t in range(T):  # forward, inclusive
        M, Z = update(M, Z, t)
        num[:, :, t] = q[:, :, t] @ M
        if has_den:
            den[:, :, t] = (qz[:, :, t] @ Z[..., None])[..., 0]
    state_out, z_out = M, Z

    if reverse:  # exclusive, within this call only
        R = torch.zeros(B, H, D, Dv, dtype=f32, device=q.device)
        RZ = torch.zeros(B, H, D, dtype=f32, device=q.device) if has_den else None
        for t in range(T - 1, -1, -1):
            num[:, :, t] += q[:, :, t] @ R
            if has_den:
                den[:, :, t] += (qz[:, :, t] @ RZ[..., None])[..., 0]
            R, RZ = update(R, RZ, t)

    o = num / (den[..., None] + eps) if has_den else num
    return o.to(out_dtype), state_out, z_out


def gdn_chunk_ref(
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
    """The same op computed the way the Triton kernels split it (second reference; same args/returns).

    Phase A (parallel over all frames): per-frame transition and input matrices
        W_t = gamma_t (I - K_t^T B_t K_t)   [D, D]      U_t = K_t^T B_t V_t   [D, Dv]
        Wz_t = gamma_t (I - Kz_t^T B_t Kz_t)            uz_t = Kz_t^T beta_t  [D]
    Phase B (serial over frames, DxD only): M_t = W_t M_{t-1} + U_t (forward, inclusive, seeded with
        ``state``), and the exclusive reverse R_t = W_{t+1} R_{t+1} + U_{t+1}, R_{T-1} = 0; the kernels
        keep the sum H_t = M_t + R_t ("combined history").
    Phase C (parallel over frames and tokens): o = q H_t / (qz Hz_t + eps).
    """
    check_gdn_inputs(q, k, v, beta, gamma, qz, kz, state, z)
    out_dtype = v.dtype
    f32 = torch.float32
    q, k, v, beta, gamma = (t.to(f32) for t in (q, k, v, beta, gamma))
    has_den = qz is not None
    B, H, T, S, D = q.shape
    Dv = v.shape[-1]
    eye = torch.eye(D, dtype=f32, device=q.device)

    # Phase A: [B, H, T, D, D] and [B, H, T, D, Dv]
    kb = k * beta[..., None]
    W = gamma[..., None, None] * (eye - kb.transpose(-1, -2) @ k)
    U = kb.transpose(-1, -2) @ v
    if has_den:
        kz = kz.to(f32)
        kzb = kz * beta[..., None]
        Wz = gamma[..., None, None] * (eye - kzb.transpose(-1, -2) @ kz)
        Uz = kzb.sum(-2)[..., None]  # [B, H, T, D, 1]: Kz^T beta as a one-column "value"

    def scan(W, U, h0):
        # [B, H, T, D, D] x [B, H, T, D, N] -> combined history [B, H, T, D, N] and final forward state
        hist = []
        h = h0
        for t in range(T):
            h = W[:, :, t] @ h + U[:, :, t]
            hist.append(h)
        h_final = h
        if reverse:
            r = torch.zeros_like(h0)
            for t in range(T - 1, -1, -1):
                hist[t] = hist[t] + r
                r = W[:, :, t] @ r + U[:, :, t]
        return torch.stack(hist, 2), h_final

    M0 = torch.zeros(B, H, D, Dv, dtype=f32, device=q.device) if state is None else state.to(f32)
    Hm, state_out = scan(W, U, M0)
    num = q @ Hm  # Phase C: [B, H, T, S, D] @ [B, H, T, D, Dv]
    if not has_den:
        return num.to(out_dtype), state_out, None
    Z0 = torch.zeros(B, H, D, dtype=f32, device=q.device) if z is None else z.to(f32)
    Hz, z_out = scan(Wz, Uz, Z0[..., None])
    den = (qz.to(f32) @ Hz)[..., 0]  # [B, H, T, S]
    return (num / (den[..., None] + eps)).to(out_dtype), state_out, z_out[..., 0]
