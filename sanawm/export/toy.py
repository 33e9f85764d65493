"""A toy engine with the structure of a generator step, for tests and CLI smoke runs (build side).

``ToyStep`` takes its inputs positionally in ``toy_step_io()`` order and returns a tuple in output order,
the convention every exported step module follows. It has a carried recurrent state (like a GDN state),
a softmax over a padded, masked KV window plus the current chunk (like the softmax blocks), linears and a
GELU FFN, and declares which linears are FP8-quantizable the way the stage-1 model does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import StepIO, TensorSpec


def toy_step_io(tokens: int = 6, width: int = 32, window: int = 8) -> StepIO:
    f32 = "float32"
    ins = (
        TensorSpec("x", f32, (1, tokens, width), "chunk tokens"),
        TensorSpec("t", f32, (1,), "timestep 0..1000"),
        TensorSpec("pos", "int64", (tokens,), "token positions"),
        TensorSpec("k_win", f32, (1, window, width), "cached keys (padded)"),
        TensorSpec("v_win", f32, (1, window, width), "cached values (padded)"),
        TensorSpec("win_valid", f32, (window,), "1 = cached token, 0 = padding"),
        TensorSpec("h", f32, (1, width, width), "recurrent state"),
    )
    outs = (
        TensorSpec("y", f32, (1, tokens, width), "output"),
        TensorSpec("h.out", f32, (1, width, width), "recurrent state after this chunk"),
        TensorSpec("k_chunk", f32, (1, tokens, width), "this chunk's keys"),
        TensorSpec("v_chunk", f32, (1, tokens, width), "this chunk's values"),
    )
    return StepIO(ins, outs, {"h.out": "h"})


class ToyStep(nn.Module):
    # precision policy (read by sanawm.export.quantize): fnmatch patterns of module names
    fp8_quantizable = ("q", "k", "v", "o", "ffn.*")
    fp8_skip = ("ffn.2",)  # last FFN projection kept FP32 (like a proj_out)

    def __init__(self, width: int = 32, max_pos: int = 64):
        super().__init__()
        self.t_embed = nn.Linear(1, width)
        self.pos = nn.Embedding(max_pos, width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.decay = nn.Parameter(torch.full((width,), 0.9))
        self.norm = nn.LayerNorm(width)

    def forward(self, x, t, pos, k_win, v_win, win_valid, h):
        # 1. conditioning
        x = x + self.t_embed((t / 1000.0)[:, None])[:, None, :] + self.pos(pos)[None]  # [1, T, C]
        q, k, v = self.q(x), self.k(x), self.v(x)
        # 2. softmax over window + chunk, padded window slots masked out
        keys = torch.cat([k_win, k], dim=1)  # [1, W+T, C]
        vals = torch.cat([v_win, v], dim=1)
        valid = torch.cat([win_valid, torch.ones_like(k[0, :, 0])])  # [W+T]
        logits = q @ keys.transpose(1, 2) / q.shape[-1] ** 0.5 + (valid - 1.0) * 1e4
        att = torch.softmax(logits, dim=-1) @ vals
        # 3. linear-attention recurrence (state read, state updated)
        kn = torch.nn.functional.normalize(k, dim=-1)
        rec = q @ h  # [1, T, C]
        h_new = h * self.decay[None, :, None] + kn.transpose(1, 2) @ v / x.shape[1]
        y = x + self.o(att + rec)
        y = y + self.ffn(self.norm(y))
        return y, h_new, k, v
