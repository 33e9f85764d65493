"""Small building blocks of the stage-1 DiT (reference 3.2, 3.3, 4.1-4.3). Parameter names follow the official
checkpoint (``t_embedder.mlp.0``, ``y_embedder.y_proj.fc1``, ``mlp.inverted_conv.conv`` ...).

Token layout inside the model is ``[B, T, S, C]`` (frame-major, S = H * W tokens per latent frame), so per-frame
modulation and temporal convolutions are plain broadcasts / slices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned weight, computed in float32 (diffusers / Sana numerics)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class PatchEmbed3D(nn.Module):
    """Patch-1 Conv3d embedder (``proj``): ``[B, Cin, T, H, W]`` -> tokens ``[B, T, H*W, C]``."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=1, stride=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)  # [B, C, T, H, W]
        return y.flatten(3).permute(0, 2, 3, 1)


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[..., dim]`` = [cos | sin] of ``t`` (already integer-truncated), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def truncate_timestep(t: torch.Tensor) -> torch.Tensor:
    """The official forward casts timesteps with ``.long()`` (toward zero) before embedding; so do we."""
    return torch.trunc(t.float())


class TimestepEmbedder(nn.Module):
    """``mlp`` = Linear(256, C) -> SiLU -> Linear(C, C) on the sinusoidal features."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` ``[B, T]`` (truncated) -> ``[B, T, C]``."""
        feats = timestep_features(t, self.freq_dim)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    """``fc1`` -> GELU(tanh) -> ``fc2`` (timm Mlp layout used by the caption embedder)."""

    def __init__(self, cin: int, hidden: int, cout: int):
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """``y_proj`` MLP; ``y_embedding`` is the learned null caption (training-time dropout only, kept for loading)."""

    def __init__(self, caption_channels: int, hidden: int, caption_length: int):
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden, hidden)
        self.register_buffer("y_embedding", torch.zeros(caption_length, caption_channels))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class FinalLayer(nn.Module):
    """LN (no affine) * (1 + scale) + shift with (shift, scale) = table + t_e per frame, then ``linear``."""

    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)
        self.scale_shift_table = nn.Parameter(torch.zeros(2, hidden))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, T, S, C]``, ``t_emb`` ``[B, T, C]`` -> ``[B, T, S, out]``."""
        mod = self.scale_shift_table[None, None] + t_emb[:, :, None, :]  # [B, T, 2, C]
        shift, scale = mod[:, :, 0:1], mod[:, :, 1:2]
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class CrossAttention(nn.Module):
    """Multi-head cross-attention to the text tokens (reference 4.1); no pre-norm, no gate."""

    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(hidden, hidden)
        self.kv_linear = nn.Linear(hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.q_norm = RMSNorm(hidden, eps)
        self.k_norm = RMSNorm(hidden, eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor, text_bias: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, N, C]``, ``y`` ``[B, L, C]``, ``text_bias`` ``[B, 1, 1, L]`` additive (0 / -1e4)."""
        B, N, C = x.shape
        h = self.heads
        q = self.q_norm(self.q_linear(x))
        k, v = self.kv_linear(y).chunk(2, dim=-1)  # k rows first, then v
        k = self.k_norm(k)
        q = q.reshape(B, N, h, C // h).transpose(1, 2)
        k = k.reshape(B, -1, h, C // h).transpose(1, 2)
        v = v.reshape(B, -1, h, C // h).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=text_bias.to(q.dtype))
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class ConvLayer(nn.Module):
    """Holds ``conv`` so the checkpoint names (``mlp.inverted_conv.conv.weight``) line up."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class GLUMBConvTemp(nn.Module):
    """Spatial GLU-MBConv per frame, then a residual dense temporal conv (reference 4.2).

    The temporal part is written over explicit segments so one module serves every mode: each segment
    [s, e) is convolved with ``k // 2`` frames of left context (the previous segment's last frames, or the
    carried ``left`` tail for the first segment; zeros when none) and zeros on the right (no look-ahead
    across a chunk boundary). One segment with zero context is the bidirectional conv.
    """

    def __init__(self, hidden: int, ffn_hidden: int, t_kernel: int):
        super().__init__()
        self.inverted_conv = ConvLayer(hidden, 2 * ffn_hidden, 1)
        self.depth_conv = ConvLayer(2 * ffn_hidden, 2 * ffn_hidden, 3, groups=2 * ffn_hidden)
        self.point_conv = ConvLayer(ffn_hidden, hidden, 1, bias=False)
        self.t_conv = nn.Conv2d(hidden, hidden, kernel_size=(t_kernel, 1), padding=(t_kernel // 2, 0), bias=False)
        self.pad = t_kernel // 2

    def spatial(self, m: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``m`` ``[B, T, S, C]`` -> t_conv input ``h`` ``[B, C, T, S]``."""
        B, T, S, C = m.shape
        z = m.reshape(B * T, height, width, C).permute(0, 3, 1, 2)
        z = self.depth_conv(F.silu(self.inverted_conv(z)))
        value, gate = z.chunk(2, dim=1)
        z = self.point_conv(value * F.silu(gate))  # [B*T, C, H, W]
        return z.reshape(B, T, C, S).permute(0, 2, 1, 3)

    def temporal(
        self, h: torch.Tensor, segments: tuple[tuple[int, int], ...], left: torch.Tensor | None
    ) -> torch.Tensor:
        """``h`` ``[B, C, T, S]``; ``left`` ``[B, C, pad, S]`` context before frame 0 (None = zeros)."""
        B, C, T, S = h.shape
        p = self.pad
        zeros = h.new_zeros(B, C, p, S)
        outs = []
        for s, e in segments:
            if s == 0:
                ctx = zeros if left is None else left.to(h.dtype)
            else:
                ctx = h[:, :, s - p : s]
            seg = torch.cat([ctx, h[:, :, s:e], zeros], dim=2)
            outs.append(F.conv2d(seg, self.t_conv.weight))
        conv = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return h + conv

    def forward(
        self,
        m: torch.Tensor,
        height: int,
        width: int,
        segments: tuple[tuple[int, int], ...],
        left: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(out [B, T, S, C], tail [B, pad, S, C])``; ``tail`` = last t_conv-input frames (carried)."""
        h = self.spatial(m, height, width)
        out = self.temporal(h, segments, left)
        tail = h[:, :, h.shape[2] - self.pad :].permute(0, 2, 3, 1)
        return out.permute(0, 2, 3, 1), tail
