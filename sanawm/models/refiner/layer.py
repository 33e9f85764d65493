"""One refiner transformer layer with explicit K/V, and the layer stack (RefinerCore)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...constants import FPS
from .rope import RefinerRope, apply_rope

MASK_NEG = -3.0e4  # additive bias for padded history keys (finite so FP16 engines stay NaN-free)

def _heads(x: torch.Tensor, h: int) -> torch.Tensor:  # [1, N, h*D] -> [1, h, N, D]
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:  # [1, h, N, D] -> [1, N, h*D]
    return x.transpose(1, 2).flatten(2)


def _attend(q, k, v, bias):
    # SDPA: fused kernels in torch on GPU; the ONNX exporter (opset <= 22) decomposes it to MatMul/Softmax
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class RefinerLayer(nn.Module):
    """Video path of ``SanaWMLTX2RefinerTransformerBlock`` (self-attn over [sink; history; current], prompt
    cross-attn, FFN) with every K/V passed explicitly. Holds references to the diffusers submodules only, so the
    audio branches are not part of this module (nor of an exported graph)."""

    def __init__(self, block, rope_type: str):
        super().__init__()
        if getattr(block, "video_cross_attn_adaln", False):
            raise NotImplementedError("cross_attn_mod=True (LTX-2.3 prompt AdaLN) is not supported by the refiner")
        self.norm1, self.attn1 = block.norm1, block.attn1
        self.norm2, self.attn2 = block.norm2, block.attn2
        self.norm3, self.ff = block.norm3, block.ff
        self.scale_shift_table = block.scale_shift_table
        self.heads = block.attn1.heads
        self.rope_type = rope_type

    def mod_params(self, temb: torch.Tensor):
        # temb [1, 1, 6*dim] -> six [1, 1, dim]
        t = self.scale_shift_table[None, None] + temb.reshape(1, 1, self.scale_shift_table.shape[0], -1)
        return t.unbind(dim=2)

    def self_kv(self, x: torch.Tensor):
        """Pre-RoPE K (after qk-norm) and V of ``x`` [1, N, dim] -> [1, h, N, D] each."""
        a = self.attn1
        return _heads(a.norm_k(a.to_k(x)), self.heads), _heads(a.to_v(x), self.heads)

    def text_kv(self, ctx: torch.Tensor):
        """Prompt cross-attention K (after qk-norm) and V of the projected prompt ``ctx`` -> [1, h, L, D]."""
        b = self.attn2
        return _heads(b.norm_k(b.to_k(ctx)), self.heads), _heads(b.to_v(ctx), self.heads)

    def _gate_out(self, a, x_in, o):
        if a.to_gate_logits is not None:
            g = 2.0 * torch.sigmoid(a.to_gate_logits(x_in))  # [1, N, h]
            o = o * g.transpose(1, 2).unsqueeze(-1)
        return a.to_out[0](_merge(o))

    def forward(self, hs, temb, ctx, text_bias, rope, prefix_k, prefix_v, key_bias, capture_only: bool = False,
                with_pre_rope: bool = False):
        """hs [1,N,dim]; ctx: projected prompt [1,L,dim] or its precomputed (text_k, text_v); rope (cos, sin)
        of the active tokens; prefix_k/v [1,h,P,D] post-RoPE (or None).

        Returns (hidden, k_post, v) with this layer's post-RoPE K and V of the active tokens, and with
        ``with_pre_rope`` also the pre-RoPE K (what the sink stores).
        """
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.mod_params(temb)
        x = self.norm1(hs) * (1 + scale_msa) + shift_msa
        a = self.attn1
        q = _heads(a.norm_q(a.to_q(x)), self.heads)
        k_pre, v = self.self_kv(x)
        q = apply_rope(q, *rope, self.rope_type)
        k = apply_rope(k_pre, *rope, self.rope_type)
        if capture_only:
            return hs, k, v
        if prefix_k is not None:
            kk, vv = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
        else:
            kk, vv = k, v
        o = _attend(q, kk, vv, key_bias)
        hs = hs + self._gate_out(a, x, o) * gate_msa

        x = self.norm2(hs)
        b = self.attn2
        q2 = _heads(b.norm_q(b.to_q(x)), self.heads)
        k2, v2 = ctx if isinstance(ctx, tuple) else self.text_kv(ctx)
        hs = hs + self._gate_out(b, x, _attend(q2, k2.to(q2.dtype), v2.to(q2.dtype), text_bias))

        x = self.norm3(hs) * (1 + scale_mlp) + shift_mlp
        hs = hs + self.ff(x) * gate_mlp
        return (hs, k, v, k_pre) if with_pre_rope else (hs, k, v)


class RefinerCore(nn.Module):
    """Video-only refiner transformer with explicit K/V (shared by the step modules)."""

    # precision policy (read by sanawm.export.quantize): fnmatch patterns of module names
    # (norms have no Linear; per-head gate logits are tiny and stay FP32 by not being listed)
    fp8_quantizable = tuple(
        f"layers.*.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")
    ) + ("layers.*.ff.net.0.proj", "layers.*.ff.net.2")
    fp8_skip = ("proj_in", "proj_out", "time_embed.*", "caption_projection.*")

    def __init__(self, transformer, fps: float = float(FPS)):
        super().__init__()
        cfg = transformer.config
        self.proj_in, self.proj_out = transformer.proj_in, transformer.proj_out
        self.time_embed = transformer.time_embed
        self.caption_projection = transformer.caption_projection
        self.norm_out = transformer.norm_out
        self.scale_shift_table = transformer.scale_shift_table
        self.rope = RefinerRope(transformer.rope, fps)
        self.layers = nn.ModuleList(RefinerLayer(b, cfg.rope_type) for b in transformer.transformer_blocks)
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.attention_head_dim
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.caption_channels = cfg.caption_channels
        self.timestep_scale_multiplier = float(cfg.timestep_scale_multiplier)
        self.rope_type = cfg.rope_type
        self.fps = float(fps)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # -- shared pieces ------------------------------------------------------------------------------------
    def tokens(self, latents: torch.Tensor) -> torch.Tensor:  # [1,C,n,H,W] -> [1, n*H*W, C]
        return latents.permute(0, 2, 3, 4, 1).flatten(1, 3)

    def text(self, text: torch.Tensor, text_mask: torch.Tensor, dtype):
        ctx = self.caption_projection(text.to(dtype))
        bias = ((1 - text_mask.to(dtype)) * -10000.0)[:, None, None, :]  # [1,1,1,L]
        return ctx, bias

    def temb(self, timestep: torch.Tensor, dtype):
        temb, emb_t = self.time_embed(timestep.reshape(-1)[:1], batch_size=1, hidden_dtype=dtype)
        return temb.view(1, 1, -1), emb_t.view(1, 1, -1)

    def head(self, hs, emb_t):
        ss = self.scale_shift_table[None, None] + emb_t[:, :, None]
        shift, scale = ss[:, :, 0], ss[:, :, 1]
        return self.proj_out(self.norm_out(hs) * (1 + scale) + shift)
