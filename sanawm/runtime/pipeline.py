"""``Runtime``: a loaded bundle (config + executors) that starts generation sessions (torch-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import GeneratorConfig, StreamingSchedule
from .frames import from_uint8
from .scheduler import Executor, GeneratorRunner
from .stages import DECODER_ENGINES, REFINER_ENGINES, Stage, build_stages

GENERATOR_ENGINES = ("generator_first", "generator_next")
ENCODER_ENGINE = "vae_encoder"
OPTIONAL_ENGINES = (ENCODER_ENGINE,) + REFINER_ENGINES + DECODER_ENGINES


class Runtime:
    """Executors for one bundle on one backend.

    Args:
        cfg: the bundle's generator config.
        executors: engine name -> executor (``sanawm.engines`` or any object with ``inputs/outputs/run``);
            ``generator_first`` and ``generator_next`` are required, the rest optional.
        schedule: stage-1 timesteps (inject another for experiments / parity tests).
        refiner: False skips the refiner even when the bundle has one.
    """

    def __init__(
        self,
        cfg: GeneratorConfig,
        executors: dict[str, Executor],
        schedule: StreamingSchedule = StreamingSchedule(),
        refiner: bool = True,
        source: str | None = None,
    ):
        missing = [n for n in GENERATOR_ENGINES if n not in executors]
        if missing:
            raise ValueError(
                f"bundle{' ' + source if source else ''} has no {missing} engine(s); the generator is required: "
                "rebuild it with `sanawm-export ... --engines generator_first,generator_next`"
            )
        self.cfg, self.executors, self.schedule, self.refiner, self.source = cfg, dict(executors), schedule, refiner, source
        self.generator = GeneratorRunner(cfg, executors["generator_first"], executors["generator_next"], schedule)

    @classmethod
    def load(cls, bundle_dir, backend: str = "onnxruntime", *, refiner: bool = True, **options) -> "Runtime":
        """Open a bundle folder and load every engine it has for ``backend`` (options go to the executors)."""
        from ..bundle import Bundle
        from ..engines import load_executor

        bundle = Bundle.open(bundle_dir, backends=[backend])
        cfg = bundle.generator_config
        if cfg is None:
            raise ValueError(f"bundle {bundle_dir} has no generator_config in its manifest; rebuild it with sanawm-export")
        names = [n for n in GENERATOR_ENGINES + OPTIONAL_ENGINES if n in bundle.engines]
        if not refiner:
            names = [n for n in names if n not in REFINER_ENGINES]
        executors = {n: load_executor(bundle, n, backend, **options) for n in names}
        return cls(cfg, executors, refiner=refiner, source=str(Path(bundle_dir)))

    # ------------------------------------------------------------------ what the bundle offers
    @property
    def has_decoder(self) -> bool:
        return all(n in self.executors for n in DECODER_ENGINES)

    @property
    def has_encoder(self) -> bool:
        return ENCODER_ENGINE in self.executors

    @property
    def image_hw(self) -> tuple[int, int]:
        """Pixel size of the model frame (32x the latent grid, LTX-2 VAE)."""
        return self.cfg.latent_height * 32, self.cfg.latent_width * 32

    def new_stages(self) -> list[Stage]:
        return build_stages(self.executors, refiner=self.refiner)

    def encode_first_frame(self, first_frame: np.ndarray) -> np.ndarray:
        """First frame -> condition latent [1, C, 1, H, W].

        Accepts a latent ([1, C, 1, H, W] or [C, H, W] float) or an RGB image [H, W, 3] uint8 of the model
        frame size, which the ``vae_encoder`` engine encodes (its input [1, 3, 1, 32H, 32W] in [-1, 1]).
        """
        a = np.asarray(first_frame)
        C, H, W = self.cfg.in_channels, self.cfg.latent_height, self.cfg.latent_width
        if a.dtype != np.uint8:
            lat = a.astype(np.float32)
            if lat.shape == (C, H, W):
                lat = lat[None, :, None]
            if lat.shape != (1, C, 1, H, W):
                raise ValueError(
                    f"first frame: a latent must be [1, {C}, 1, {H}, {W}] or [{C}, {H}, {W}] float; got {a.dtype} "
                    f"{a.shape} (an image must be uint8 [H, W, 3])"
                )
            return np.ascontiguousarray(lat)
        ih, iw = self.image_hw
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"first frame must be an RGB image [H, W, 3]; got shape {a.shape} (convert to RGB first)")
        if a.shape[:2] != (ih, iw):
            raise ValueError(
                f"first frame is {a.shape[1]}x{a.shape[0]}; this bundle takes {iw}x{ih}: resize and centre-crop it "
                "first (sanawm.camera's first-frame crop, or the CLI does it for you)"
            )
        if not self.has_encoder:
            raise ValueError(
                f"bundle has no {ENCODER_ENGINE} engine, so an image cannot be encoded; pass the first-frame latent "
                f"[1, {C}, 1, {H}, {W}] instead or add the VAE engines to the bundle"
            )
        enc = self.executors[ENCODER_ENGINE]
        out = enc.run({enc.inputs[0].name: from_uint8(a)})
        return self.encode_first_frame(np.asarray(out[enc.outputs[0].name], dtype=np.float32))

    def start(self, first_frame_or_latent, prompt_embeddings, camera, seed: int = 0, num_frames: int | None = None, *, noise=None):
        """Start a session; see ``Session.start``."""
        from .session import Session

        return Session.start(self, first_frame_or_latent, prompt_embeddings, camera, seed=seed, num_frames=num_frames, noise=noise)
