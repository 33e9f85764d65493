"""``Runtime``: a loaded bundle (config + executors) that starts generation sessions (torch-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import GeneratorConfig, StreamingSchedule
from ..constants import GENERATOR, GENERATOR_FIRST, GENERATOR_NEXT, VAE_ENCODER
from .frames import from_uint8
from .scheduler import Executor, GeneratorRunner
from .stages import DECODER_ENGINES, REFINER_ENGINES, FirstFrameEncoder, Stage, build_stages

ENCODER_ENGINE = VAE_ENCODER
OPTIONAL_ENGINES = (ENCODER_ENGINE,) + REFINER_ENGINES + DECODER_ENGINES


def engine_options(bundle, name: str, backend: str, options: dict, weight_streaming_budget=None) -> dict:
    """Executor options for one engine: ``options`` plus the weight-streaming budget when the engine's plan for
    ``backend`` was built with weight streaming (manifest ``files.<backend>.build.weight_streaming``)."""
    opts = dict(options)
    if weight_streaming_budget is None:
        return opts
    if backend == "onnxruntime":
        raise ValueError("weight_streaming_budget applies to TensorRT plans only (backends tensorrt / tensorrt_rtx); "
                         "drop it for onnxruntime")
    if bundle.build_info(name, backend).get("weight_streaming"):
        opts["weight_streaming_budget"] = weight_streaming_budget
    return opts


class Runtime:
    """Executors for one bundle on one backend.

    Args:
        cfg: the bundle's generator config.
        executors: engine name -> executor (``sanawm.engines`` or any object with ``inputs/outputs/run``):
            ``generator`` (or, for the torch reference and test fakes, ``generator_first`` and ``generator_next``)
            is required, the rest optional.
        memory: where the sessions' pools live (``Runtime.load`` passes the device memory of TensorRT engines;
            default host memory).
        schedule: stage-1 timesteps (inject another for experiments / parity tests).
        refiner: False skips the refiner even when the bundle has one.
        refiner_layout: the manifest's ``refiner`` section (block size, history, sigmas, timestep scale); the
            refiner stage checks the engines against it.
        refiner_seed: seed of the refiner's per-block noise (numpy PCG64, default 42 like the release's
            ``--refiner_seed``; not bit-identical to the release's torch CUDA RNG).
        image_hw: pixel size of the model frame (the manifest's ``vae.image_hw``); default: read off the VAE
            engines, else 32x the latent grid. Must agree with the VAE engines' shapes.
    """

    def __init__(
        self,
        cfg: GeneratorConfig,
        executors: dict[str, Executor],
        schedule: StreamingSchedule = StreamingSchedule(),
        refiner: bool = True,
        source: str | None = None,
        image_hw: tuple[int, int] | None = None,
        refiner_layout: dict | None = None,
        refiner_seed: int = 42,
        memory=None,
    ):
        missing = [] if GENERATOR in executors else [n for n in (GENERATOR_FIRST, GENERATOR_NEXT) if n not in executors]
        if missing:
            raise ValueError(
                f"bundle{' ' + source if source else ''} has no {missing} engine(s); the generator is required: "
                f"rebuild it with `sanawm-export ... --engines {GENERATOR}`"
            )
        self.cfg, self.executors, self.schedule, self.refiner, self.source = cfg, dict(executors), schedule, refiner, source
        if GENERATOR in executors:
            self.generator = GeneratorRunner(cfg, executors[GENERATOR], schedule=schedule, memory=memory)
        else:  # the torch reference / test fakes as two fixed-shape step functions
            self.generator = GeneratorRunner(cfg, executors[GENERATOR_FIRST], executors[GENERATOR_NEXT], schedule,
                                             memory=memory)
        self.bundle_id: str | None = None  # sha256 of the manifest when loaded from a bundle
        self.encoder = FirstFrameEncoder(executors[ENCODER_ENGINE]) if ENCODER_ENGINE in executors else None
        self.refiner_layout, self.refiner_seed = refiner_layout, int(refiner_seed)
        self._image_hw = self._resolve_image_hw(image_hw)

    def _resolve_image_hw(self, given) -> tuple[int, int]:
        """The model frame size: the manifest's ``vae.image_hw`` and the encoder's input (which must agree),
        else 32x the latent grid (LTX-2 VAE). The decoder's frame size is the video's; it is not the
        first frame's, so it is not consulted."""
        seen: dict[str, tuple[int, int]] = {}
        if given is not None:
            seen["the manifest (vae.image_hw)"] = (int(given[0]), int(given[1]))
        if self.encoder is not None:
            seen[f"engine {ENCODER_ENGINE}'s input"] = self.encoder.image_hw
        if len(set(seen.values())) > 1:
            what = ", ".join(f"{k} {w}x{h}" for k, (h, w) in seen.items())
            raise ValueError(
                f"bundle{' ' + self.source if self.source else ''}: the first-frame size disagrees ({what}); "
                f"rebuild the VAE engines with `sanawm-export ... --engines {ENCODER_ENGINE},{','.join(DECODER_ENGINES)}`"
            )
        if seen:
            return next(iter(seen.values()))
        return self.cfg.latent_height * 32, self.cfg.latent_width * 32

    @classmethod
    def load(cls, bundle_dir, backend: str = "onnxruntime", *, refiner: bool = True, refiner_seed: int = 42,
             weight_streaming_budget=None, verify: bool = False, **options) -> "Runtime":
        """Open a bundle folder and load every engine it has for ``backend`` (options go to the executors).

        Everything that can fail does so here, before any output exists: bundle validation (for TensorRT
        backends against this machine's library version and GPU), plan deserialization, device memory for the
        weights and the shared activation arena (``sanawm.runtime.loading``).
        ``refiner=False`` skips the refiner engines; ``refiner_seed`` seeds its per-block noise.
        ``weight_streaming_budget`` (TensorRT backends): bytes, a fraction in (0, 1] or ``"auto"`` of streamable
        weights kept on the device, for every engine whose plan was built with ``--weight-streaming``.
        TensorRT options: ``use_cuda_graph`` (default True), ``runtime_cache_dir`` (TensorRT-RTX JIT cache).
        ``verify=True`` re-hashes every file against the manifest's sha256 (slow for a full-size bundle); by default
        the bundle is checked for existence, sizes and path safety only.
        """
        from ..engines import load_executor
        from .loading import activate_on_device, bundle_id, onnxruntime_memory, open_bundle, plan_options

        bundle, env = open_bundle(bundle_dir, backend, verify)
        ident = bundle_id(bundle_dir)
        cfg = bundle.generator_config
        if cfg is None:
            raise ValueError(f"bundle {bundle_dir} has no generator_config in its manifest; rebuild it with sanawm-export")
        names = [n for n in (GENERATOR,) + OPTIONAL_ENGINES if n in bundle.engines]
        if not refiner:
            names = [n for n in names if n not in REFINER_ENGINES]
        per = plan_options(names, backend, env, ident, options)
        executors = {n: load_executor(bundle, n, backend, **per[n],
                                      **engine_options(bundle, n, backend, options, weight_streaming_budget))
                     for n in names}
        if weight_streaming_budget is not None and not any(
            getattr(ex, "weight_streaming_budget", None) is not None for ex in executors.values()
        ):
            raise ValueError(
                f"weight_streaming_budget={weight_streaming_budget!r}: no engine of bundle {bundle_dir} loaded for "
                f"{backend} was built with weight streaming; rebuild the large engines with `sanawm-export ... "
                "--backends tensorrt_rtx --weight-streaming` or drop the budget"
            )
        memory = activate_on_device(executors, str(bundle_dir)) if env is not None else onnxruntime_memory(executors)
        vae = bundle.manifest.get("vae") or {}
        image_hw = tuple(vae["image_hw"]) if vae.get("image_hw") else None
        try:
            rt = cls(cfg, executors, refiner=refiner, source=str(Path(bundle_dir)), image_hw=image_hw,
                     refiner_layout=bundle.manifest.get("refiner"), refiner_seed=refiner_seed, memory=memory)
        except BaseException:
            if memory is not None:
                memory.release()
            raise
        rt.bundle_id = ident
        return rt

    def close(self) -> None:
        """Release every engine and the device memory (pools, arena, staging); the runtime is unusable after."""
        for ex in self.executors.values():
            close = getattr(ex, "close", None)
            if close is not None:
                close()
        memory = getattr(self.generator, "memory", None)
        if memory is not None:
            memory.release()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ what the bundle offers
    @property
    def has_decoder(self) -> bool:
        from ..constants import VAE_DECODER_PAIR

        return any(n in self.executors for n in DECODER_ENGINES) or all(n in self.executors for n in VAE_DECODER_PAIR)

    @property
    def has_encoder(self) -> bool:
        return ENCODER_ENGINE in self.executors

    @property
    def image_hw(self) -> tuple[int, int]:
        """Pixel size (H, W) of the model frame: the VAE engines' (manifest ``vae.image_hw``), else 32x the
        latent grid (LTX-2 VAE)."""
        return self._image_hw

    def new_stages(self) -> list[Stage]:
        return build_stages(self.executors, refiner=self.refiner,
                            refiner_options={"layout": self.refiner_layout, "seed": self.refiner_seed},
                            memory=self.generator.memory)

    def encode_first_frame(self, first_frame: np.ndarray) -> np.ndarray:
        """First frame -> condition latent [1, C, 1, H, W].

        Accepts a latent ([1, C, 1, H, W] or [C, H, W] float) or an RGB image [H, W, 3] uint8, which the
        ``vae_encoder`` engine encodes; an image of another size than ``image_hw`` is resized and
        centre-cropped to it first (as ``sanawm.camera.prepare_first_frame`` does; move the camera
        intrinsics with that function when they are in the original image's pixels).
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
        if self.encoder is None:
            raise ValueError(
                f"bundle has no {ENCODER_ENGINE} engine, so an image cannot be encoded (this bundle takes {iw}x{ih} "
                f"images); pass the first-frame latent [1, {C}, 1, {H}, {W}] instead or add the VAE engines: "
                f"`sanawm-export ... --engines {ENCODER_ENGINE},{','.join(DECODER_ENGINES)}`"
            )
        lat = self.encoder.encode(a)
        if lat.shape != (1, C, 1, H, W):
            raise ValueError(
                f"engine {ENCODER_ENGINE} returned a latent {list(lat.shape)}, the generator takes [1, {C}, 1, {H}, {W}]; "
                "the VAE engines were built for another generator config: rebuild them with the generator's --config"
            )
        return np.ascontiguousarray(lat)

    def start(self, first_frame_or_latent, prompt_embeddings, camera, seed: int = 0, num_frames: int | None = None, *,
              noise=None, keep_latents: bool = False):
        """Start a session; see ``Session.start``."""
        from .session import Session

        return Session.start(self, first_frame_or_latent, prompt_embeddings, camera, seed=seed, num_frames=num_frames,
                             noise=noise, keep_latents=keep_latents)
