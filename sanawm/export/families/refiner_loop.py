"""The refiner's FP8 calibration loop over the exported module itself: the runtime's ``RefinerStage`` driving the
``RefinerEngine`` in torch (sink pass, the denoising steps and the sigma-0 commit of every block).

Why not ``refine_stream`` (the step-module oracle, ``refiner.refiner_calibration``): its sink capture reads the
layers' weights outside their ``forward`` (``layer.self_kv``), so a block-streamed calibration, which loads a
layer's weights in a forward pre-hook, would run it on ghost weights. The engine calls every layer as a module, and
its calls are exactly the exported graph's (``tests/models/test_refiner_engine.py``: stage over engine = oracle).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...engines.base import Executor

CALIB_SEED = 4321  # as refiner.refiner_calibration


class TorchEngineExecutor(Executor):
    """A torch ``RefinerEngine`` as the stage's ``refiner`` executor (host arrays in and out)."""

    backend = "torch"

    def __init__(self, module, layout):
        from ...spec_refiner import refiner_profiles

        io = module.io
        super().__init__("refiner", io.inputs, io.outputs, io.state_map, refiner_profiles(layout))
        self.module = module

    def _run(self, feeds, profile=None):
        import torch

        with torch.no_grad():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs]
            return {t.name: y.detach().cpu().numpy() for t, y in zip(self.outputs, self.module(*args))}


def calibration_text(core, layout, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """N(0,1) prompt features [1, L, Ct] with the last quarter of the tokens masked (the random calibration set)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    L = layout.caption_length
    text = rng.standard_normal((1, L, int(core.caption_channels)), dtype=np.float32)
    mask = np.ones((1, L), np.float32)
    mask[:, -max(1, L // 4):] = 0
    return text, mask


def engine_calibration(layout, blocks: int, seed: int = CALIB_SEED,
                       texts: list[tuple[np.ndarray, np.ndarray]] | None = None) -> Callable:
    """Calibration loop ``loop(engine)``: per prompt (``texts``; None: one random prompt), one clip of ``blocks``
    blocks of N(0,1) stage-1 latents through the stage, so the history fills and, past ``kv_max_frames``, slides."""
    from ...runtime.chunk import Chunk
    from ...runtime.refiner_stage import RefinerStage

    def loop(engine) -> None:
        core = engine.core
        prompts = texts or [calibration_text(core, layout, seed)]
        sk, n = layout.sink_frames, layout.block_size
        for p, (text, mask) in enumerate(prompts):
            rng = np.random.Generator(np.random.PCG64(seed + 1 + p))
            lat = rng.standard_normal((1, int(core.in_channels), sk + n * blocks, layout.latent_height,
                                       layout.latent_width), dtype=np.float32)
            st = RefinerStage(TorchEngineExecutor(engine, layout), layout, seed=seed + 101 + p)
            st.set_text((text, mask))
            st.process(Chunk(0, 0, sk + n, lat[:, :, : sk + n]))
            for b in range(1, blocks):
                s = sk + b * n
                st.process(Chunk(b, s, s + n, lat[:, :, s: s + n]))

    return loop
