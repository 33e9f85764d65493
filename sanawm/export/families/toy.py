"""Export spec of the toy engine: a small stand-in for smoke tests (``sanawm.export.toy``)."""

from __future__ import annotations

from ..job import EngineJob


def toy_job(seed: int = 0) -> EngineJob:
    import torch

    from ..onnx import FIXED_SHAPE_NOTE, random_inputs, run_torch
    from ..toy import ToyStep, toy_step_io

    torch.manual_seed(seed)
    io = toy_step_io()

    def calib(q):
        for s in range(4):
            run_torch(q, io, random_inputs(io, seed=100 + s))

    return EngineJob("toy", "toy_step", ToyStep().eval(), io, calib, random_inputs(io, seed), f"toy engine; {FIXED_SHAPE_NOTE}")
