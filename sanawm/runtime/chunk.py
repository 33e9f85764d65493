"""The unit the run-side stages pass along (``Chunk``) and how an engine's state outputs feed its inputs (numpy only).

Its own module so ``stages`` and ``refiner_stage`` both build on it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Chunk:
    """One streamed chunk. Latent frames [start, end) of the clip; chunk 0 includes the condition frame."""

    index: int
    start: int
    end: int
    latents: np.ndarray  # [1, C, n, H, W] stage-1 clean latents
    refined: np.ndarray | None = None  # [1, C, n, H, W] after the refiner (the same array when skipped)
    frames: np.ndarray | None = None  # [F, H, W, 3] uint8 video frames (chunk 0 without the condition frame)
    timings: dict = field(default_factory=dict)  # stage name -> seconds

    @property
    def num_frames(self) -> int:
        return 0 if self.frames is None else int(self.frames.shape[0])


def state_pairs(executor, targets=None) -> dict[str, str]:
    """output -> input state chaining: the manifest's ``state_map``, else every ``X.out`` output feeding ``X``
    among ``targets`` (default: the executor's own inputs; for a first graph, the next graph's inputs)."""
    sm = dict(getattr(executor, "state_map", None) or {})
    if sm:
        return sm
    ins = set(targets) if targets is not None else {t.name for t in executor.inputs}
    return {t.name: t.name[:-4] for t in executor.outputs if t.name.endswith(".out") and t.name[:-4] in ins}
