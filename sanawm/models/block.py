"""One DiT block (reference 4): adaLN-single modulated self-attention (GDN or softmax, with camera branch),
post-attention Plücker add, cross-attention, modulated GLUMBConvTemp FFN."""

from __future__ import annotations

import torch
from torch import nn

from ..config import GeneratorConfig
from .attention import GDNAttention, PosContext, SoftmaxAttention
from .layers import CrossAttention, GLUMBConvTemp
from .plan import Plan


class SanaWMBlock(nn.Module):
    def __init__(self, cfg: GeneratorConfig, index: int):
        super().__init__()
        C = cfg.hidden_size
        self.is_softmax = cfg.is_softmax_block(index)
        self.norm1 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.attn = SoftmaxAttention(cfg) if self.is_softmax else GDNAttention(cfg)
        self.cross_attn = CrossAttention(C, cfg.num_heads, cfg.cross_norm_eps)
        self.norm2 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.mlp = GLUMBConvTemp(C, cfg.ffn_hidden, cfg.t_kernel_size)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, C))
        self.has_plucker = index < cfg.plucker_post_attn_blocks
        if self.has_plucker:
            self.plucker_proj = nn.Linear(C, C)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        text_bias: torch.Tensor,
        t0: torch.Tensor,
        plucker: torch.Tensor,
        pos: PosContext,
        plan: Plan,
        state: dict | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """One block.

        Args:
            x: ``[B, T, S, C]`` residual stream. y: ``[B, L, C]`` text tokens; text_bias ``[B, 1, 1, L]``.
            t0: ``[B, T, 6, C]`` t_block output per frame. plucker: ``[B, T, S, C]`` embedded Plücker maps.
            state: carried tensors of this block (see :class:`GDNAttention`; plus ``ffn_tail [B, p, S, C]`` (p = t_kernel // 2)
                and, for softmax blocks, ``window`` = dict(k, v, cam_k, cam_v, valid)).
        Returns:
            ``(x, state_out)``; softmax blocks return this call's ``k, v, cam_k, cam_v`` in ``state_out``.
        """
        state = state or {}
        B, T, S, C = x.shape
        mod = self.scale_shift_table[None, None] + t0  # [B, T, 6, C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mod[:, :, i : i + 1] for i in range(6))

        a = self.norm1(x) * (1 + scale_msa) + shift_msa
        if self.is_softmax:
            attn, out = self.attn(a, pos, plan, state.get("window"))
        else:
            attn, out = self.attn(a, pos, plan, state)
        x = x + gate_msa * attn
        if self.has_plucker:
            x = x + self.plucker_proj(plucker)
        x = x + self.cross_attn(x.reshape(B, T * S, C), y, text_bias).reshape(B, T, S, C)
        m = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        ffn_tail = state.get("ffn_tail")
        left = None if ffn_tail is None else ffn_tail.permute(0, 3, 1, 2)  # [B, p, S, C] -> [B, C, p, S]
        f, tail = self.mlp(m, pos.height, pos.width, plan.segments, left)
        x = x + gate_mlp * f
        out["ffn_tail"] = tail
        return x, out
