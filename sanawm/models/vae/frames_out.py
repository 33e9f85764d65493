"""The decoder engine's pixel output as the runtime ships it: uint8 [F, H, W, 3], converted inside the graph.

``Uint8Frames(step)`` wraps a ``VAEDecoderStep``: its ``frames`` output [1, 3, F, H, W] in [-1, 1] becomes
uint8 [F, H, W, 3] with exactly ``sanawm.runtime.frames.to_uint8``'s arithmetic (float32 (x + 1) * 127.5,
clipped to [0, 255], truncated), so the only large tensor that leaves the device is a quarter of the float
frames; every other output (the causal-conv caches) passes through unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ...spec import StepIO, TensorSpec


def uint8_frames_io(io: StepIO, name: str = "frames") -> StepIO:
    """``io`` with output ``name`` [1, 3, F, H, W] float replaced by uint8 [F, H, W, 3]."""
    outs = []
    for t in io.outputs:
        if t.name == name:
            _, c, f, h, w = t.shape
            t = TensorSpec(name, "uint8", (f, h, w, c), "decoded RGB frames, uint8 (converted in the graph)")
        outs.append(t)
    return StepIO(io.inputs, tuple(outs), io.state_map)


class Uint8Frames(nn.Module):
    def __init__(self, step: nn.Module, name: str = "frames"):
        super().__init__()
        self.step = step
        self.index = [t.name for t in step.io.outputs].index(name)
        self.io = uint8_frames_io(step.io, name)
        self.first = getattr(step, "first", None)

    def forward(self, *args):
        out = list(self.step(*args))
        x = out[self.index].to(torch.float32)[0]  # [3, F, H, W]
        y = ((x + 1.0) * 127.5).clamp(0.0, 255.0).floor().to(torch.uint8)  # floor == truncation: y >= 0
        out[self.index] = y.permute(1, 2, 3, 0).contiguous()  # [F, H, W, 3]
        return tuple(out)
