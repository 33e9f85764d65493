"""Phase B of the chunkwise GDN kernels: the serial scan over frames on D x D transition matrices.

    forward (inclusive):  h_t = W_t h_{t-1} + U_t,  h_{-1} = h0 (or 0)       -> hist[t] = h_t, ht = h_{T-1}
    reverse (exclusive):  r_{T-1} = 0, r_t = W_{t+1} r_{t+1} + U_{t+1}        -> hist[t] += r_t

Columns of the state are independent (h[:, j] = W h[:, j] + U[:, j]), so the grid is
(column blocks of N, B*H) and each program keeps a [BD, BN] slice of the state in registers for all T
frames. BD = the whole key dim padded to a power of two (D = 112 -> 128, masked); it must hold all rows
because W mixes every row. BN = 32 columns: for D = 112, Dv = 112 and 20 heads that is 4 x 20 = 80
programs. The W tile ([128, 128] fp32, 64 KB) is staged through shared memory: num_stages = 2 (prefetch
the next frame's W) gives 80 KB per program on sm_90/sm_120 (the default 3 stages took 144 KB, over
sm_120's 99 KB). Forward and reverse are separate launches of the same kernel (REVERSE constexpr).
The normaliser z is the same scan with N = 1 (BN = 16, masked: tl.dot needs >= 16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def gdn_scan_kernel(
    w,  # [B*H, T, D, D] float32 (W_t = gamma_t (I - K^T B K))
    u,  # [B*H, T, D, N] float32
    h0,  # [B*H, D, N] float32 (read if USE_INITIAL_STATE)
    hist,  # [B*H, T, D, N] float32 out: forward (+ reverse) state per frame
    ht,  # [B*H, D, N] float32 out (written if STORE_FINAL_STATE)
    T,
    D,
    N,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    REVERSE: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = tl.arange(0, BD)
    o_n = i_n * BN + tl.arange(0, BN)
    m_d = o_d < D
    m_n = o_n < N
    m_dd = m_d[:, None] & m_d[None, :]
    m_dn = m_d[:, None] & m_n[None, :]
    p_w = w + i_bh * T * D * D + o_d[:, None] * D + o_d[None, :]
    p_u = u + i_bh * T * D * N + o_d[:, None] * N + o_n[None, :]
    p_hist = hist + i_bh * T * D * N + o_d[:, None] * N + o_n[None, :]
    if not REVERSE:
        # [BD, BN]
        b_h = tl.zeros([BD, BN], dtype=tl.float32)
        if USE_INITIAL_STATE:
            b_h = tl.load(h0 + i_bh * D * N + o_d[:, None] * N + o_n[None, :], mask=m_dn, other=0.0)
        for t in range(0, T):
            b_w = tl.load(p_w + t * D * D, mask=m_dd, other=0.0)  # [BD, BD]
            b_u = tl.load(p_u + t * D * N, mask=m_dn, other=0.0)
            b_h = tl.dot(b_w, b_h, input_precision=DOT_PRECISION) + b_u
            tl.store(p_hist + t * D * N, b_h, mask=m_dn)
        if STORE_FINAL_STATE:
            tl.store(ht + i_bh * D * N + o_d[:, None] * N + o_n[None, :], b_h, mask=m_dn)
    else:
        # exclusive: frame t gets r_t built from frames t+1..T-1; hist already holds the forward pass
        b_r = tl.zeros([BD, BN], dtype=tl.float32)
        for i_t in range(0, T):
            t = T - 1 - i_t
            b_hist = tl.load(p_hist + t * D * N, mask=m_dn, other=0.0)
            tl.store(p_hist + t * D * N, b_hist + b_r, mask=m_dn)
            b_w = tl.load(p_w + t * D * D, mask=m_dd, other=0.0)
            b_u = tl.load(p_u + t * D * N, mask=m_dn, other=0.0)
            b_r = tl.dot(b_w, b_r, input_precision=DOT_PRECISION) + b_u


SCAN_NUM_WARPS = 4
SCAN_NUM_STAGES = 2


def scan_blocks(D: int, N: int) -> tuple[int, int]:
    """(BD, BN)."""
    return max(16, triton.next_power_of_2(D)), max(16, min(32, triton.next_power_of_2(N)))


def gdn_scan_fwd(
    w: torch.Tensor,
    u: torch.Tensor,
    h0: torch.Tensor | None,
    reverse: bool,
    dot_precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher. ``w`` [B, H, T, D, D], ``u`` [B, H, T, D, N], ``h0`` [B, H, D, N] or None (all float32).

    Returns ``(hist [B, H, T, D, N], ht [B, H, D, N])``.
    """
    B, H, T, D, N = u.shape
    hist = torch.empty_like(u)
    ht = torch.empty(B, H, D, N, dtype=torch.float32, device=u.device)
    BD, BN = scan_blocks(D, N)
    grid = (triton.cdiv(N, BN), B * H)
    # two launches: forward, then reverse adding into the forward hist (no intra-kernel store->load hazard)
    for rev in (False, True) if reverse else (False,):
        gdn_scan_kernel[grid](
            w, u, ht if h0 is None else h0, hist, ht, T, D, N,
            USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=True, REVERSE=rev,
            BD=BD, BN=BN, DOT_PRECISION=dot_precision, num_warps=SCAN_NUM_WARPS, num_stages=SCAN_NUM_STAGES,
        )  # fmt: skip
    return hist, ht
