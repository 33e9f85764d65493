"""Stages after the generator: refiner and decoder, behind one small protocol (numpy only).

A ``Stage`` turns a ``Chunk`` into a ``Chunk`` and owns whatever state it carries between chunks, so a
session can save and resume it. A stage whose engines are missing from the bundle is skipped: the refiner
becomes a pass-through, and without a decoder a chunk has latents only (``frames`` is None).

The refiner stage over the one ``refiner`` engine lives in
``sanawm.runtime.refiner_stage`` (registered in ``REFINER_FACTORIES``). ``DecoderStage`` and
``FirstFrameEncoder`` follow the exported LTX-2 VAE contract (``sanawm.models.vae``).
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Protocol

import numpy as np

from ..constants import REFINER_ENGINES, REFINER_RETIRED, VAE_DECODER, VAE_DECODER_FIRST, VAE_DECODER_NEXT
from ..constants import VAE_DECODER_ENGINES as DECODER_ENGINES
from .chunk import Chunk, state_pairs


class Stage(Protocol):
    name: str

    def process(self, chunk: Chunk) -> Chunk: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


class PassThroughRefiner:
    """No refiner in the bundle (or ``--no-refiner``): refined latents = stage-1 latents."""

    name = "refiner"

    def process(self, chunk: Chunk) -> Chunk:
        if chunk.latents_buffer is not None:  # stays where it is: no host round trip
            chunk.pass_through()
        else:
            chunk.refined = chunk.latents
        return chunk

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"pass-through refiner carries no state; the saved session has {sorted(state)}")


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


def build_stages(executors: dict, refiner: bool = True, refiner_options: dict | None = None, memory=None) -> list[Stage]:
    """Fresh refiner + decoder stages for one session from the executors the bundle has.

    ``refiner_options`` go to the refiner factory (``layout``: the manifest's ``refiner`` section, ``seed``).
    """
    stages: list[Stage] = []
    retired = [n for n in REFINER_RETIRED if n in executors]
    if refiner and retired:
        raise ValueError(f"the refiner comes as three engines {retired} (an older bundle, each with the full weights); "
                         f"this sanawm runs it as one engine: rebuild it with `sanawm-export ... --engines "
                         f"{','.join(REFINER_ENGINES)}`, or pass --no-refiner")
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
            stages.append(factory(executors, memory=memory, **(refiner_options or {})))
    else:
        stages.append(PassThroughRefiner())
    from .decoder import DecoderStage  # decoder.py builds on this module's helpers: imported here, no cycle

    if VAE_DECODER in executors:
        stages.append(DecoderStage(executors[VAE_DECODER], memory=memory))
    elif VAE_DECODER_FIRST in executors and VAE_DECODER_NEXT in executors:  # torch reference / test fakes
        stages.append(DecoderStage(executors[VAE_DECODER_FIRST], executors[VAE_DECODER_NEXT], memory=memory))
    elif VAE_DECODER_FIRST in executors or VAE_DECODER_NEXT in executors:
        raise ValueError(f"a decoder step pair needs both {VAE_DECODER_FIRST} and {VAE_DECODER_NEXT}; a bundle has one "
                         f"{VAE_DECODER} engine: rebuild it with `sanawm-export ... --engines {VAE_DECODER}`")
    return stages
