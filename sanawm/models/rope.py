"""Wan-style 3-D RoPE as real cos/sin tables (interleaved pairs), positioned by absolute frame index.

Head vectors are rotated pairwise: pair j = (x[2j], x[2j+1]) is multiplied by the unit complex number
exp(i * angle_j), i.e. (x0 c - x1 s, x0 s + x1 c). The D/2 pairs split into (t, h, w) groups
(``cfg.rope_split``, 20/18/18 at D = 112); axis a with 2*n_a real dims uses frequencies
theta^(-2k / (2 n_a)), k < n_a (diffusers ``get_1d_rotary_pos_embed``). The camera branch rotates the second
half of each head with a *slice* of the same table: the first (t', h', w') = ``cfg.cam_rope_split`` columns
of each axis group (reference 7.3).

Tables are computed in float64 and stored as float32 non-persistent buffers, so they never enter the state
dict; rows are gathered by index, which keeps the graph shape-static and export-friendly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import GeneratorConfig


def _axis_angles(num_pairs: int, max_len: int, theta: float) -> torch.Tensor:
    """Angles ``[max_len, num_pairs]`` (float64) of one axis with ``2 * num_pairs`` real dims."""
    dim = 2 * num_pairs
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[:num_pairs] / dim)
    return torch.arange(max_len, dtype=torch.float64)[:, None] * inv[None, :]


class RopeTables(nn.Module):
    """cos/sin tables of the three axes; ``forward`` builds the per-token tables of a (frames, H, W) grid."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        nt, nh, nw = cfg.rope_split
        ct, ch, cw = cfg.cam_rope_split
        self.split = (nt, nh, nw)
        # columns of the full pair table kept by the camera slice (t', then h', then w')
        cam_cols = list(range(ct)) + list(range(nt, nt + ch)) + list(range(nt + nh, nt + nh + cw))
        self.register_buffer("cam_cols", torch.tensor(cam_cols, dtype=torch.int64), persistent=False)
        L = cfg.rope_max_len
        for name, n in (("t", nt), ("h", nh), ("w", nw)):
            ang = _axis_angles(n, L, cfg.rope_theta)
            self.register_buffer(f"{name}_cos", ang.cos().float(), persistent=False)
            self.register_buffer(f"{name}_sin", ang.sin().float(), persistent=False)

    def forward(self, frame_index: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token tables for frames ``frame_index`` ``[n]`` (int64, absolute) x ``height`` x ``width``.

        Returns ``(cos, sin)``, each ``[n * height * width, D / 2]`` float32, tokens frame-major.
        """
        n = frame_index.shape[0]
        parts = []
        for tab in ("cos", "sin"):
            t = getattr(self, f"t_{tab}").index_select(0, frame_index)  # [n, nt]
            h = getattr(self, f"h_{tab}")[:height]
            w = getattr(self, f"w_{tab}")[:width]
            grid = torch.cat(
                [
                    t[:, None, None, :].expand(n, height, width, t.shape[-1]),
                    h[None, :, None, :].expand(n, height, width, h.shape[-1]),
                    w[None, None, :, :].expand(n, height, width, w.shape[-1]),
                ],
                dim=-1,
            )
            parts.append(grid.reshape(n * height * width, -1))
        return parts[0], parts[1]

    def cam_slice(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The camera branch's ``[N, D / 4]`` sub-table (first t'/h'/w' columns of each axis group)."""
        return cos.index_select(-1, self.cam_cols), sin.index_select(-1, self.cam_cols)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` ``[..., N, 2P]`` by tables ``[N, P]``; computed in float32.

    ``inverse`` rotates by the conjugate (used to decode camera-branch outputs).
    """
    dtype = x.dtype
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    s = -sin if inverse else sin
    out = torch.stack([x0 * cos - x1 * s, x0 * s + x1 * cos], dim=-1).flatten(-2)
    return out.to(dtype)
