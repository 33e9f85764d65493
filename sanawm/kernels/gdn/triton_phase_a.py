"""Phase A of the chunkwise GDN kernels: per-frame products over the S tokens of one frame.

For every (b, h, t) this builds, tiled over S with masks (S need not be a multiple of the block):

    TRANSITION:  out = gamma_t (I - K^T diag(beta) K)      [D, D]    (W_t, Wz_t)
    otherwise:   out = K^T diag(beta) X                     [D, N]    (U_t = K^T B V; X_IS_ONES: uz_t = K^T beta)

All frames are independent, so this is the parallel part (grid over frames); the serial part only ever
sees the small D x D matrices (:mod:`.triton_scan`).

Block sizes (see :func:`phase_a_blocks`): BS = 64 tokens per step of the S loop; BK = next power of two of D
up to 128 (D = 112 is padded to 128 in-kernel, masked), BN = the same for the output columns, at most 64
so that the [BK, BN] fp32 accumulator stays in registers (128 x 64 x 4 B over 4 warps = 64 regs/thread).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def gdn_phase_a_kernel(
    k,  # [B*H*T, S, D]
    x,  # [B*H*T, S, N] (unused when X_IS_ONES or TRANSITION)
    beta,  # [B*H*T, S]
    gamma,  # [B*H*T]
    out,  # [B*H*T, D, N] float32
    S,
    D,
    N,
    TRANSITION: tl.constexpr,
    X_IS_ONES: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_k, i_n, i_bht = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_k = i_k * BK + tl.arange(0, BK)
    o_n = i_n * BN + tl.arange(0, BN)
    m_k = o_k < D
    m_n = o_n < N
    # [BK, BN]
    b_acc = tl.zeros([BK, BN], dtype=tl.float32)
    for i_s in range(0, tl.cdiv(S, BS)):
        o_s = i_s * BS + tl.arange(0, BS)
        m_s = o_s < S
        p_k = k + i_bht * S * D + o_s[:, None] * D + o_k[None, :]
        # [BS, BK]; masked tokens/channels read 0 so they add nothing
        b_k = tl.load(p_k, mask=m_s[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_beta = tl.load(beta + i_bht * S + o_s, mask=m_s, other=0.0).to(tl.float32)
        if TRANSITION:
            # X = K: the other operand is the same frame's keys over the output-column block
            p_x = k + i_bht * S * D + o_s[:, None] * D + o_n[None, :]
            b_x = tl.load(p_x, mask=m_s[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        elif X_IS_ONES:
            b_x = tl.where(m_s[:, None] & (o_n[None, :] == 0), 1.0, 0.0)
        else:
            p_x = x + i_bht * S * N + o_s[:, None] * N + o_n[None, :]
            b_x = tl.load(p_x, mask=m_s[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        # [BK, BS] @ [BS, BN]
        b_acc += tl.dot(tl.trans(b_k * b_beta[:, None]), b_x, input_precision=DOT_PRECISION)
    if TRANSITION:
        b_g = tl.load(gamma + i_bht).to(tl.float32)
        b_eye = tl.where(o_k[:, None] == o_n[None, :], 1.0, 0.0)
        b_acc = b_g * (b_eye - b_acc)
    p_o = out + i_bht * D * N + o_k[:, None] * N + o_n[None, :]
    tl.store(p_o, b_acc, mask=m_k[:, None] & m_n[None, :])


PHASE_A_NUM_WARPS = 4
PHASE_A_NUM_STAGES = 2  # S-loop prefetch depth; shared memory per program stays < 99 KB (sm_120)


def phase_a_blocks(D: int, N: int) -> tuple[int, int, int]:
    """(BS, BK, BN): tl.dot needs every block dim >= 16."""
    BK = max(16, min(128, triton.next_power_of_2(D)))
    BN = max(16, min(64, triton.next_power_of_2(N)))
    return 64, BK, BN


def gdn_phase_a(
    k: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    x: torch.Tensor | None = None,
    transition: bool = False,
    dot_precision: str = "ieee",
) -> torch.Tensor:
    """Launcher. ``k`` [B, H, T, S, D], ``beta`` [B, H, T, S], ``gamma`` [B, H, T], ``x`` [B, H, T, S, N].

    transition: returns W = gamma (I - K^T B K) [B, H, T, D, D];
    x given: returns K^T B X [B, H, T, D, N]; x None (and not transition): K^T beta as [B, H, T, D, 1].
    """
    B, H, T, S, D = k.shape
    N = D if transition else (1 if x is None else x.shape[-1])
    out = torch.empty(B, H, T, D, N, dtype=torch.float32, device=k.device)
    BS, BK, BN = phase_a_blocks(D, N)
    grid = (triton.cdiv(D, BK), triton.cdiv(N, BN), B * H * T)
    gdn_phase_a_kernel[grid](
        k, k if x is None else x, beta, gamma, out, S, D, N,
        TRANSITION=transition, X_IS_ONES=(x is None and not transition),
        BS=BS, BK=BK, BN=BN, DOT_PRECISION=dot_precision,
        num_warps=PHASE_A_NUM_WARPS, num_stages=PHASE_A_NUM_STAGES,
    )  # fmt: skip
    return out
