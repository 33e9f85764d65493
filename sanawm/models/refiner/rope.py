"""LTX-2 video RoPE at explicit absolute frame positions."""

from __future__ import annotations

import torch
from torch import nn

class RefinerRope(nn.Module):
    """cos/sin tables ``[1, heads, n*H*W, r]`` from int64 frame positions, as diffusers builds them.

    Mirrors ``build_rotary_emb_for_absolute_positions`` + ``SanaWMLTX2AudioVideoRotaryPosEmbed.forward`` with
    the same float32 operation order (the products reach ~1e4 rad, so the order matters at 1e-4).
    """

    def __init__(self, rope, fps: float):
        super().__init__()
        if rope.patch_size != 1 or rope.patch_size_t != 1:
            raise NotImplementedError("refiner step modules support patch_size = patch_size_t = 1 (LTX-2) only")
        self.dim = rope.dim
        self.heads = rope.num_attention_heads
        self.rope_type = rope.rope_type
        self.scale = tuple(int(s) for s in rope.scale_factors)
        self.causal_offset = float(rope.causal_offset)
        self.base = (float(rope.base_num_frames), float(rope.base_height), float(rope.base_width))
        self.fps = float(fps)
        n = self.dim // 6
        fdt = torch.float64 if rope.double_precision else torch.float32
        pw = torch.pow(rope.theta, torch.linspace(0.0, 1.0, steps=n, dtype=fdt))
        self.register_buffer("freqs", (pw * torch.pi / 2.0).to(torch.float32), persistent=False)

    def forward(self, frame_pos: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        s_t, s_h, s_w = self.scale
        f = frame_pos.to(torch.float32)
        # temporal: pixel-space [start, end) -> causal shift, clamp, / fps -> midpoint / base
        t0 = ((f * s_t + self.causal_offset - s_t).clamp(min=0) / self.fps)
        t1 = (((f + 1.0) * s_t + self.causal_offset - s_t).clamp(min=0) / self.fps)
        t = (t0 + t1) / 2.0 / self.base[0]  # [n]
        gh = torch.arange(height, dtype=torch.float32, device=f.device)
        gw = torch.arange(width, dtype=torch.float32, device=f.device)
        hh = ((gh * s_h) + ((gh + 1.0) * s_h)) / 2.0 / self.base[1]  # [H]
        ww = ((gw * s_w) + ((gw + 1.0) * s_w)) / 2.0 / self.base[2]  # [W]
        n, H, W = f.shape[0], height, width
        grid = torch.stack(
            [
                t[:, None, None].expand(n, H, W),
                hh[None, :, None].expand(n, H, W),
                ww[None, None, :].expand(n, H, W),
            ],
            dim=-1,
        ).reshape(n * H * W, 3)
        fr = (grid.unsqueeze(-1) * 2 - 1) * self.freqs  # [N, 3, F]
        fr = fr.transpose(-1, -2).flatten(1)  # [N, 3F]
        N = fr.shape[0]
        if self.rope_type == "split":
            pad = self.dim // 2 - fr.shape[-1]
            cos, sin = fr.cos(), fr.sin()
            if pad:
                cos = torch.cat([torch.ones_like(cos[:, :pad]), cos], dim=-1)
                sin = torch.cat([torch.zeros_like(sin[:, :pad]), sin], dim=-1)
        else:
            cos = fr.cos().repeat_interleave(2, dim=-1)
            sin = fr.sin().repeat_interleave(2, dim=-1)
            pad = self.dim % 6
            if pad:
                cos = torch.cat([torch.ones_like(cos[:, :pad]), cos], dim=-1)
                sin = torch.cat([torch.zeros_like(sin[:, :pad]), sin], dim=-1)
        cos = cos.reshape(N, self.heads, -1).transpose(0, 1).unsqueeze(0)  # [1, h, N, r]
        sin = sin.reshape(N, self.heads, -1).transpose(0, 1).unsqueeze(0)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_type: str) -> torch.Tensor:
    """Rotate ``x`` [1, h, N, D] (float32 maths, like diffusers)."""
    dt = x.dtype
    x = x.float()
    if rope_type == "split":
        r = x.shape[-1] // 2
        x1, x2 = x[..., :r], x[..., r:]
        out = torch.cat([x1 * cos - sin * x2, x2 * cos + sin * x1], dim=-1)
    else:
        xr, xi = x[..., 0::2], x[..., 1::2]
        rot = torch.stack([-xi, xr], dim=-1).flatten(-2)
        out = x * cos + rot * sin
    return out.to(dt)
