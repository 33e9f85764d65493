"""The module exported as the ONE ``generator`` engine: the dynamic-length step plus the Euler update.

``GeneratorEngine(model)`` takes the inputs of ``sanawm.spec.generator_engine_io(cfg)`` in order: the step's
(``GeneratorStepDynamic``: both chunk lengths on a symbolic frame axis, chunk 0 with an all-masked window)
followed by ``dt`` [1, n], and returns the step's outputs followed by ``latents.out`` = latents + dt * velocity
(per frame, float32). ``kv_dtype`` (an export choice) is the storage type of the softmax K/V window inputs
and chunk K/V outputs, cast at the engine's boundary. The FP8 / FP16 layer policy is the model's own (found under ``step.model``). With the
Euler step inside the engine the chunk's latents stay where the engine runs
between the four denoising passes; only ``timestep`` and ``dt`` cross per pass.
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import generator_engine_io


class GeneratorEngine(nn.Module):
    """``GeneratorStepDynamic`` + Euler output (see the module docstring)."""

    def __init__(self, model, step: nn.Module | None = None, kv_dtype: str = "float32"):
        super().__init__()
        from .generator_step import GeneratorStepDynamic

        self.step = step if step is not None else GeneratorStepDynamic(model)
        self.io = generator_engine_io(model.cfg, kv_dtype=kv_dtype)
        self.kv_dtype = getattr(torch, kv_dtype)
        names = [t.name for t in self.io.inputs]
        if names[:-1] != list(getattr(self.step, "input_names", names[:-1])):
            raise ValueError("the step module's inputs are not generator_engine_io's minus dt; rebuild both from one config")
        self.input_names = tuple(names)
        self.output_names = tuple(t.name for t in self.io.outputs)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *inputs, dt = args
        # the K/V window is stored as kv_dtype; the step computes in float32
        inputs = [x.to(torch.float32) if n.endswith("_win") else x for n, x in zip(self.input_names, inputs)]
        out = [y.to(self.kv_dtype) if n.endswith("_chunk") else y for n, y in zip(self.output_names, self.step(*inputs))]
        latents, velocity = inputs[0], out[0]
        step = dt.to(torch.float32)[:, None, :, None, None]  # [1, n] -> [1, 1, n, 1, 1]
        return (*out, (latents.to(torch.float32) + step * velocity.to(torch.float32)))
