"""Stages after the generator: refiner and decoder, behind one small protocol (numpy only).

A ``Stage`` turns a ``Chunk`` into a ``Chunk`` and owns whatever state it carries between chunks, so a
session can save and resume it. A stage whose engines are missing from the bundle is skipped: the refiner
becomes a pass-through, and without a decoder a chunk has latents only (``frames`` is None).

Hook points for the stage-2 and VAE engineers: replace ``PassThroughRefiner`` by a refiner stage over
``refiner_sink`` / ``refiner_step`` (register it in ``REFINER_FACTORIES``), and adjust ``DecoderStage`` if
the ``vae_decoder_first`` / ``vae_decoder_next`` contract differs from the one documented on it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .frames import to_uint8


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


class Stage(Protocol):
    name: str

    def process(self, chunk: Chunk) -> Chunk: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


class PassThroughRefiner:
    """No refiner in the bundle (or ``--no-refiner``): refined latents = stage-1 latents."""

    name = "refiner"

    def process(self, chunk: Chunk) -> Chunk:
        chunk.refined = chunk.latents
        return chunk

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"pass-through refiner carries no state; the saved session has {sorted(state)}")


def _state_pairs(executor) -> dict[str, str]:
    """output -> input state chaining: the manifest's ``state_map``, else every ``X.out`` output feeding ``X``."""
    sm = dict(getattr(executor, "state_map", None) or {})
    if sm:
        return sm
    ins = {t.name for t in executor.inputs}
    return {t.name: t.name[:-4] for t in executor.outputs if t.name.endswith(".out") and t.name[:-4] in ins}


class DecoderStage:
    """Causal VAE decode of each chunk through ``vae_decoder_first`` (chunk 0) / ``vae_decoder_next``.

    Assumed contract (provisional until the VAE engines land; sana-wm-streaming.md 5.3):
        inputs:  ``latents`` [1, C, n, H, W] (normalised latents, un-normalised inside the engine) plus
                 cache inputs; outputs: ``frames`` [1, 3, F, 32H, 32W] in [-1, 1] plus ``<cache>.out``.
        Chunk 0 decodes [condition frame ; 3 refined frames] into 1 + 24 frames; the first (the input image)
        is dropped. Caches start at zero and chain by ``state_map`` (or the ``.out`` suffix).
    """

    name = "decoder"

    def __init__(self, first, next_):
        self.first, self.next = first, next_
        self.cache: dict[str, np.ndarray] = {
            t.name: np.zeros(t.shape, dtype=t.dtype) for t in first.inputs if t.name != "latents"
        }
        self.output_name = "frames" if any(t.name == "frames" for t in first.outputs) else first.outputs[0].name

    def process(self, chunk: Chunk) -> Chunk:
        ex = self.first if chunk.index == 0 else self.next
        feeds = {"latents": np.ascontiguousarray(chunk.refined, dtype=np.float32)}
        for t in ex.inputs:
            if t.name == "latents":
                continue
            if t.name not in self.cache:
                raise ValueError(f"engine {ex.name}: cache input {t.name!r} has no value from the previous chunk")
            feeds[t.name] = self.cache[t.name]
        out = ex.run(feeds)
        for o, i in _state_pairs(ex).items():
            self.cache[i] = out[o]
        frames = to_uint8(out[self.output_name])
        chunk.frames = frames[1:] if chunk.index == 0 else frames  # drop the conditioning frame
        return chunk

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.cache)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if set(state) != set(self.cache):
            raise ValueError(f"saved decoder cache {sorted(state)} does not match the engine's {sorted(self.cache)}")
        self.cache = {k: np.asarray(v) for k, v in state.items()}


def timed(stage: Stage, chunk: Chunk) -> Chunk:
    t0 = time.perf_counter()
    chunk = stage.process(chunk)
    chunk.timings[stage.name] = chunk.timings.get(stage.name, 0.0) + time.perf_counter() - t0
    return chunk


# Refiner implementations by engine set; the stage-2 engineer adds {"refiner_sink", "refiner_step"} here.
REFINER_FACTORIES: dict[frozenset, Callable[[dict], Stage]] = {}
REFINER_ENGINES = ("refiner_sink", "refiner_step")
DECODER_ENGINES = ("vae_decoder_first", "vae_decoder_next")


def build_stages(executors: dict, refiner: bool = True) -> list[Stage]:
    """Fresh refiner + decoder stages for one session from the executors the bundle has."""
    stages: list[Stage] = []
    have_refiner = [n for n in REFINER_ENGINES if n in executors]
    if refiner and have_refiner:
        factory = REFINER_FACTORIES.get(frozenset(have_refiner))
        if factory is None:
            warnings.warn(
                f"bundle has refiner engines {have_refiner} but this runtime has no refiner stage for them yet; "
                "the output is unrefined stage-1 latents (pass --no-refiner to silence this)",
                stacklevel=2,
            )
            stages.append(PassThroughRefiner())
        else:
            stages.append(factory(executors))
    else:
        stages.append(PassThroughRefiner())
    have_dec = [n for n in DECODER_ENGINES if n in executors]
    if len(have_dec) == 2:
        stages.append(DecoderStage(executors["vae_decoder_first"], executors["vae_decoder_next"]))
    elif have_dec:
        raise ValueError(f"bundle has {have_dec} but not both of {list(DECODER_ENGINES)}; rebuild the VAE engines")
    return stages
