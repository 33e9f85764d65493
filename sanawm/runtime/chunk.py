"""The unit the run-side stages pass along (``Chunk``) and how an engine's state outputs feed its inputs (numpy only).

Its own module so ``stages`` and ``refiner_stage`` both build on it without importing each other.
"""

from __future__ import annotations

import numpy as np


class Chunk:
    """One streamed chunk. Latent frames [start, end) of the clip; chunk 0 includes the condition frame.

    ``latents`` / ``refined`` are host arrays read out of the session pool on first access only: stages that
    run where the engines run pass ``latents_buffer`` / ``refined_buffer`` on without a host round trip.
    """

    def __init__(self, index: int, start: int, end: int, latents=None, *, buffer=None, refined=None, frames=None,
                 timings: dict | None = None):
        self.index, self.start, self.end = index, start, end
        self._latents = None if latents is None else np.asarray(latents)
        self.latents_buffer = buffer  # sanawm.engines.memory.Buffer of the stage-1 clean latents, if any
        self._refined = refined
        self.refined_buffer = None  # set when the refined latents live in a pool buffer
        self.frames: np.ndarray | None = frames  # [F, H, W, 3] uint8 (chunk 0 without the condition frame)
        self.timings: dict = dict(timings or {})  # stage name -> seconds

    @property
    def latents(self) -> np.ndarray:
        """[1, C, n, H, W] stage-1 clean latents (host)."""
        if self._latents is None and self.latents_buffer is not None:
            self._latents = self.latents_buffer.memory.download(self.latents_buffer)
        return self._latents

    @property
    def refined(self) -> np.ndarray | None:
        """[1, C, n, H, W] latents after the refiner (host); the stage-1 latents when it was skipped."""
        if self._refined is None and self.refined_buffer is not None:
            if self.refined_buffer is self.latents_buffer:  # refiner skipped: the same tensor, read once
                return self.latents
            self._refined = self.refined_buffer.memory.download(self.refined_buffer)
        return self._refined

    @refined.setter
    def refined(self, value) -> None:
        self._refined = value
        self.refined_buffer = None

    def pass_through(self) -> None:
        """No refiner: the refined latents are the stage-1 latents, left where they are."""
        self._refined, self.refined_buffer = None, self.latents_buffer

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
