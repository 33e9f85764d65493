"""Stages after the generator: refiner and decoder, behind one small protocol (numpy only).

A ``Stage`` turns a ``Chunk`` into a ``Chunk`` and owns whatever state it carries between chunks, so a
session can save and resume it. A stage whose engines are missing from the bundle is skipped: the refiner
becomes a pass-through, and without a decoder a chunk has latents only (``frames`` is None).

The refiner stage over ``refiner_sink`` / ``refiner_step`` / ``refiner_capture`` lives in
``sanawm.runtime.refiner_stage`` (registered in ``REFINER_FACTORIES``). ``DecoderStage`` and
``FirstFrameEncoder`` follow the exported LTX-2 VAE contract (``sanawm.models.vae``).
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Protocol

import numpy as np

from ..constants import REFINER_ENGINES, TEMPORAL_STRIDE, VAE_DECODER_FIRST, VAE_DECODER_NEXT
from ..constants import VAE_DECODER_ENGINES as DECODER_ENGINES
from .chunk import Chunk, state_pairs
from .frames import to_uint8


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


class DecoderStage:
    """Causal VAE decode of each chunk through ``vae_decoder_first`` (chunk 0) / ``vae_decoder_next``.

    Contract (``sanawm.models.vae.vae_decoder_io``, the exported LTX-2 decoder):
        ``vae_decoder_first``: input ``latents`` [1, C, 4, h, w] (normalised; un-normalised inside the
            engine), no cache inputs (its causal convs replicate their first frame); outputs ``frames``
            [1, 3, 24, 32h, 32w] in [-1, 1] (the condition frame already dropped) and ``cache.{i}.out``.
        ``vae_decoder_next``: inputs ``latents`` [1, C, 3, h, w] and ``cache.{i}``; outputs ``frames``
            [1, 3, 24, H, W] and ``cache.{i}.out``.
        Both graphs map ``cache.{i}.out`` -> ``cache.{i}`` (the *next* graph's inputs): by ``state_map``, or for
        a first graph whose manifest entry has none (its own inputs take no state; the bundle records the
        map under ``chains_to``, which ``Runtime.load`` applies) by the ``X.out`` -> ``X`` naming rule.

    The cache a chunk leaves behind is the stage's state (``state_dict``): empty before chunk 0, the next
    graph's cache inputs after it, so a session saved anywhere resumes with identical frames. A first graph
    that keeps the condition frame (exported with ``drop_first_frame=False``: 1 + 8 (n - 1) frames) has it
    dropped here; cache inputs on a first graph (not the LTX-2 contract) start at zero.
    """

    name = "decoder"

    def __init__(self, first, next_):
        self.first, self.next = first, next_
        for ex in (first, next_):
            if not any(t.name == "latents" for t in ex.inputs):
                raise ValueError(
                    f"engine {ex.name}: no 'latents' input (it takes {[t.name for t in ex.inputs]}); "
                    "this is not a VAE decoder graph, rebuild it with `sanawm-export ... --engines "
                    "vae_decoder_first,vae_decoder_next`"
                )
        self.output_name = "frames" if any(t.name == "frames" for t in first.outputs) else first.outputs[0].name
        # what the first graph reads (zeros; empty for the LTX-2 contract) and what the next graph reads
        self._initial = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in first.inputs if t.name != "latents"}
        self._next_specs = {t.name: t for t in next_.inputs if t.name != "latents"}
        for ex in (first, next_):
            fed = set(state_pairs(ex, self._next_specs).values())
            unfed = sorted(set(self._next_specs) - fed)
            if unfed:
                raise ValueError(
                    f"engine {ex.name}: its state_map feeds none of {unfed[:4]}{' ...' if len(unfed) > 4 else ''} "
                    f"that {next_.name} reads, so the decoder caches cannot be chained; the two decoder graphs "
                    "come from different exports: rebuild both with `sanawm-export ... --engines "
                    "vae_decoder_first,vae_decoder_next`"
                )
        self.cache: dict[str, np.ndarray] = dict(self._initial)

    def process(self, chunk: Chunk) -> Chunk:
        first = chunk.index == 0
        ex = self.first if first else self.next
        lat_spec = next(t for t in ex.inputs if t.name == "latents")
        lat = np.ascontiguousarray(chunk.refined, dtype=np.float32)
        if lat.shape != tuple(lat_spec.shape):
            raise ValueError(
                f"engine {ex.name} decodes latents {list(lat_spec.shape)}, chunk {chunk.index} has {list(lat.shape)}; "
                "the VAE engines were built for another generator config: rebuild them with the generator's --config"
            )
        feeds = {"latents": lat}
        for t in ex.inputs:
            if t.name == "latents":
                continue
            if t.name not in self.cache:
                raise ValueError(
                    f"engine {ex.name}: cache input {t.name!r} has no value from the previous chunk; chunks are "
                    "decoded in order from chunk 0 (to continue mid-clip, resume a saved session)"
                )
            feeds[t.name] = self.cache[t.name]
        out = ex.run(feeds)
        self.cache = {i: out[o] for o, i in state_pairs(ex, self._next_specs).items() if i in self._next_specs}
        frames = to_uint8(out[self.output_name])
        n = lat.shape[2]
        want = TEMPORAL_STRIDE * (n - 1 if first else n)
        if first and frames.shape[0] == want + 1:
            frames = frames[1:]  # a first graph that kept the condition frame: the caller already has it
        if frames.shape[0] != want:
            raise ValueError(
                f"engine {ex.name} returned {frames.shape[0]} frames for {n} latent frames, expected {want}"
                f"{' (or ' + str(want + 1) + ' with the condition frame)' if first else ''}; rebuild the VAE engines"
            )
        chunk.frames = frames
        return chunk

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.cache)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state = {k: np.asarray(v) for k, v in state.items()}
        if not state and not self._initial:  # saved before chunk 0 was decoded
            self.cache = {}
            return
        if set(state) != set(self._next_specs):
            missing, extra = sorted(set(self._next_specs) - set(state)), sorted(set(state) - set(self._next_specs))
            raise ValueError(
                f"saved decoder cache does not match engine {self.next.name}: missing {missing[:4]}, unexpected "
                f"{extra[:4]}; resume with the bundle the session was saved with"
            )
        for k, v in state.items():
            t = self._next_specs[k]
            if v.shape != tuple(t.shape) or v.dtype != np.dtype(t.dtype):
                raise ValueError(
                    f"saved decoder cache {k!r} is {v.dtype}{list(v.shape)}, engine {self.next.name} takes "
                    f"{t.dtype}{list(t.shape)}; resume with the bundle the session was saved with"
                )
        self.cache = state


class FirstFrameEncoder:
    """First frame (RGB uint8 image) -> condition latent [1, C, 1, h, w] through ``vae_encoder``.

    Contract (``sanawm.models.vae.vae_encoder_io``): input ``image`` [1, 3, 1, H, W] in [-1, 1], output
    ``latent`` [1, C, 1, H/32, W/32] (normalised). An image of another size is resized (aspect kept,
    Lanczos) and centre-cropped to H x W exactly as ``sanawm.camera.prepare_first_frame`` does; camera
    intrinsics given in the original image's pixels must be moved with that function (the CLI does).
    """

    def __init__(self, executor):
        self.ex = executor
        self.in_spec = executor.inputs[0]
        shp = tuple(self.in_spec.shape)
        if len(executor.inputs) != 1 or len(shp) != 5 or shp[:3] != (1, 3, 1):
            raise ValueError(
                f"engine {executor.name}: expected one input image [1, 3, 1, H, W], it takes "
                f"{[(t.name, list(t.shape)) for t in executor.inputs]}; rebuild it with `sanawm-export ... "
                "--engines vae_encoder`"
            )
        self.out_name = "latent" if any(t.name == "latent" for t in executor.outputs) else executor.outputs[0].name

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.in_spec.shape[3]), int(self.in_spec.shape[4])

    def prepare(self, image) -> np.ndarray:
        """RGB uint8 [H, W, 3] at the engine's size (resized and centre-cropped when it differs)."""
        a = np.asarray(image)
        if a.dtype != np.uint8:
            raise ValueError(
                f"first frame must be an 8-bit RGB image (uint8 [H, W, 3]); got {a.dtype}; for floats in [0, 1] "
                "use np.clip(np.round(x * 255), 0, 255).astype(np.uint8)"
            )
        if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
            raise ValueError(
                f"first frame is a 1-channel (grayscale) image {a.shape}; the VAE encoder takes RGB [H, W, 3]: "
                "convert it first, e.g. np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2) or "
                "PIL's img.convert('RGB')"
            )
        if a.ndim != 3 or a.shape[2] != 3:
            fix = "drop alpha with img[..., :3]" if a.ndim == 3 and a.shape[2] == 4 else "pass one RGB frame [H, W, 3]"
            raise ValueError(f"first frame must be an RGB image [H, W, 3]; got shape {a.shape}; {fix}")
        hw = self.image_hw
        if a.shape[:2] != hw:
            from ..camera import resize_and_center_crop  # Pillow, imported only here

            a, _ = resize_and_center_crop(a, hw)
        return np.ascontiguousarray(a)

    def encode(self, image) -> np.ndarray:
        from .frames import from_uint8

        out = self.ex.run({self.in_spec.name: from_uint8(self.prepare(image))})
        return np.asarray(out[self.out_name], dtype=np.float32)


def timed(stage: Stage, chunk: Chunk) -> Chunk:
    t0 = time.perf_counter()
    chunk = stage.process(chunk)
    chunk.timings[stage.name] = chunk.timings.get(stage.name, 0.0) + time.perf_counter() - t0
    return chunk


def _refiner_stage(executors: dict, **options) -> Stage:
    from .refiner_stage import RefinerStage  # numpy only; imported here to keep this module's imports small

    return RefinerStage.from_executors(executors, **options)


# Refiner implementations by engine set: factory(executors, **refiner_options) -> Stage
REFINER_FACTORIES: dict[frozenset, Callable[..., Stage]] = {frozenset(REFINER_ENGINES): _refiner_stage}


def build_stages(executors: dict, refiner: bool = True, refiner_options: dict | None = None) -> list[Stage]:
    """Fresh refiner + decoder stages for one session from the executors the bundle has.

    ``refiner_options`` go to the refiner factory (``layout``: the manifest's ``refiner`` section, ``seed``).
    """
    stages: list[Stage] = []
    have_refiner = [n for n in REFINER_ENGINES if n in executors]
    if refiner and have_refiner:
        factory = REFINER_FACTORIES.get(frozenset(have_refiner))
        if factory is None:
            warnings.warn(
                f"bundle has refiner engines {have_refiner} but not all of {list(REFINER_ENGINES)}, so no refiner stage "
                "can run; the output is unrefined stage-1 latents (rebuild them with `sanawm-export ... --engines "
                f"{','.join(REFINER_ENGINES)}`, or pass --no-refiner to silence this)",
                stacklevel=2,
            )
            stages.append(PassThroughRefiner())
        else:
            stages.append(factory(executors, **(refiner_options or {})))
    else:
        stages.append(PassThroughRefiner())
    have_dec = [n for n in DECODER_ENGINES if n in executors]
    if len(have_dec) == 2:
        stages.append(DecoderStage(executors[VAE_DECODER_FIRST], executors[VAE_DECODER_NEXT]))
    elif have_dec:
        raise ValueError(f"bundle has {have_dec} but not both of {list(DECODER_ENGINES)}; rebuild the VAE engines")
    return stages
