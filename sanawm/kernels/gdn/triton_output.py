"""Phase C of the chunkwise GDN kernels: project the queries of every token onto its frame's state.

    o[t, s] = q[t, s] H_t / (qz[t, s] . Hz_t + eps)      (HAS_DEN; camera form: o = q H_t)

H_t / Hz_t are the combined forward (+ reverse) histories from :mod:`.triton_scan`. Grid
(token blocks, value-column blocks, B*H*T): fully parallel. BS = 64 tokens, BD = whole key dim padded to a
power of two (112 -> 128, masked), BV = 64 value columns: the q tile [64, 128] and state tile [128, 64] are
32 KB each in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def gdn_output_kernel(
    q,  # [B*H*T, S, D]
    hm,  # [B*H*T, D, Dv] float32
    qz,  # [B*H*T, S, D] (read if HAS_DEN)
    hz,  # [B*H*T, D] float32 (read if HAS_DEN)
    o,  # [B*H*T, S, Dv] out, in o's dtype
    S,
    D,
    Dv,
    eps,
    HAS_DEN: tl.constexpr,
    BS: tl.constexpr,
    BD: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_s, i_v, i_bht = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_s = i_s * BS + tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    o_v = i_v * BV + tl.arange(0, BV)
    m_s = o_s < S
    m_d = o_d < D
    m_v = o_v < Dv
    m_sd = m_s[:, None] & m_d[None, :]
    # [BS, BD]
    b_q = tl.load(q + i_bht * S * D + o_s[:, None] * D + o_d[None, :], mask=m_sd, other=0.0).to(tl.float32)
    # [BD, BV]
    b_hm = tl.load(hm + i_bht * D * Dv + o_d[:, None] * Dv + o_v[None, :], mask=m_d[:, None] & m_v[None, :], other=0.0)
    # [BS, BV]
    b_o = tl.dot(b_q, b_hm, input_precision=DOT_PRECISION)
    if HAS_DEN:
        b_qz = tl.load(qz + i_bht * S * D + o_s[:, None] * D + o_d[None, :], mask=m_sd, other=0.0).to(tl.float32)
        b_hz = tl.load(hz + i_bht * D + o_d, mask=m_d, other=0.0)  # [BD]
        b_den = tl.sum(b_qz * b_hz[None, :], axis=1)  # [BS]
        b_o = b_o / (b_den[:, None] + eps)
    p_o = o + i_bht * S * Dv + o_s[:, None] * Dv + o_v[None, :]
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_s[:, None] & m_v[None, :])


OUTPUT_NUM_WARPS = 4
OUTPUT_NUM_STAGES = 1  # no loop in this kernel: nothing to pipeline


def output_blocks(D: int, Dv: int) -> tuple[int, int, int]:
    """(BS, BD, BV)."""
    return 64, max(16, triton.next_power_of_2(D)), max(16, min(64, triton.next_power_of_2(Dv)))


def gdn_output(
    q: torch.Tensor,
    hm: torch.Tensor,
    qz: torch.Tensor | None,
    hz: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
    dot_precision: str = "ieee",
) -> torch.Tensor:
    """Launcher. ``q``/``qz`` [B, H, T, S, D], ``hm`` [B, H, T, D, Dv], ``hz`` [B, H, T, D, 1]."""
    B, H, T, S, D = q.shape
    Dv = hm.shape[-1]
    o = torch.empty(B, H, T, S, Dv, dtype=out_dtype, device=q.device)
    BS, BD, BV = output_blocks(D, Dv)
    grid = (triton.cdiv(S, BS), triton.cdiv(Dv, BV), B * H * T)
    has_den = qz is not None
    gdn_output_kernel[grid](
        q, hm, qz if has_den else q, hz if has_den else hm, o, S, D, Dv, float(eps),
        HAS_DEN=has_den, BS=BS, BD=BD, BV=BV, DOT_PRECISION=dot_precision,
        num_warps=OUTPUT_NUM_WARPS, num_stages=OUTPUT_NUM_STAGES,
    )  # fmt: skip
    return o
