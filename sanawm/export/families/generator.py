"""Export spec of the stage-1 generator: its two step engines, sample feeds, calibration loop and model loading."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ...constants import GENERATOR
from ..job import EngineJob

log = logging.getLogger("sanawm.export")


def generator_feeds(cfg, first: bool, seed: int, t: float = 960.0, chunk: int | None = None) -> dict[str, np.ndarray]:
    """Plausible numpy feeds for one generator_step call (noise latents, identity cameras, zero state,
    a random half-filled window)."""
    from ...spec import generator_step_io

    io = generator_step_io(cfg, first)
    rng = np.random.default_rng(seed)
    n = cfg.first_chunk_size if first else cfg.chunk_size
    c = 0 if first else (chunk or 1)
    start = 0 if first else cfg.first_chunk_size + (c - 1) * cfg.chunk_size
    cam = np.zeros((1, n, 20), np.float32)
    cam[..., :16] = np.eye(4, dtype=np.float32).reshape(16)
    cam[..., 16:] = [cfg.latent_width, cfg.latent_width, cfg.latent_width / 2, cfg.latent_height / 2]
    feeds = {}
    for tsp in io.inputs:
        nm = tsp.name
        if nm == "timestep":
            a = np.full(tsp.shape, t, np.float32)
            if first:
                a[0, 0] = 0.0  # condition frame stays clean
        elif nm == "frame_index":
            a = np.arange(start, start + n, dtype=np.int64)
        elif nm == "camera":
            a = cam
        elif nm == "text_mask":
            a = np.ones(tsp.shape, np.float32)
            a[:, -max(1, tsp.shape[1] // 4):] = 0
        elif nm == "window_valid":
            a = np.zeros(tsp.shape, np.float32)
            a[: tsp.shape[0] // 2] = 1
        elif nm in io.state_map.values():
            a = np.zeros(tsp.shape, np.float32)
        elif nm == "plucker":
            a = (0.3 * rng.standard_normal(tsp.shape)).astype(np.float32)
        else:
            a = rng.standard_normal(tsp.shape).astype(np.float32)
        feeds[nm] = a
    return feeds


def generator_calibration(cfg, first: bool | None, chunks: int, seed: int = 1234) -> Callable:
    """Calibration loop for a quantized generator step: ``chunks`` chunks of a streaming run, every
    denoising timestep and the t = 0 cache pass, state chained through the cache passes. ``first=True``:
    chunk 0 of ``chunks`` clips; ``first=False``: chunks 1..chunks, chunk 0 run with calibration paused;
    ``first=None`` (the one ``generator`` engine, both profiles): chunks 0..chunks of one clip, all calibrated."""
    import torch

    from ...config import StreamingSchedule
    from ...models.generator_step import GeneratorStep, window_inputs
    from ..quantize import quantizers

    def loop(qstep) -> None:
        model = qstep.model if hasattr(qstep, "model") else qstep.step.model  # GeneratorStep or GeneratorEngine
        steps = {True: GeneratorStep(model, True), False: GeneratorStep(model, False)}
        qs = quantizers(qstep).values()
        state: dict = {}
        chunk_kv: dict = {}
        # first graph: chunk 0 of `chunks` different clips; next graph: chunks 1..chunks of one clip
        runs = [(0, k) for k in range(max(1, chunks))] if first else [(c, c) for c in range(max(1, chunks) + 1)]
        for c, k in runs:
            is_first = c == 0
            for m in qs:
                m.mode = "float" if (is_first and first is False) else "calib"
            if is_first:
                state, chunk_kv = {}, {}
            step = steps[is_first]
            io = step.io
            base = {nm_: torch.from_numpy(arr) for nm_, arr in generator_feeds(model.cfg, is_first, seed + k, chunk=c).items()}
            noise = base["latents"].clone()
            # seeded, so FP8 scales (and the stage's up-to-date check) are reproducible run to run
            x0 = torch.randn(noise.shape, generator=torch.Generator().manual_seed(seed + 7919 * k + c)) * 0.7
            if not is_first:
                base.update(window_inputs(model.cfg, chunk_kv, c))
            base.update(state)
            for t in list(StreamingSchedule().timesteps) + [0.0]:
                f = dict(base)
                f["latents"] = x0 + (t / 1000.0) * (noise - x0)
                f["timestep"] = torch.full_like(base["timestep"], t)
                if is_first:
                    f["timestep"][0, 0] = 0.0
                outs = dict(zip(step.output_names, step(*[f[tn.name] for tn in io.inputs])))
            state = {io.state_map[o]: outs[o] for o in io.state_map}
            chunk_kv[c] = [
                {nm: outs[f"b{i}.{nm}_chunk"] for nm in ("k", "v", "cam_k", "cam_v")} if model.cfg.is_softmax_block(i) else None
                for i in range(model.cfg.num_layers)
            ]
        for m in qs:
            m.mode = "calib"

    return loop


def generator_engine_feeds(cfg, profile: str, seed: int, kv_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Feeds of the one generator engine at ``profile``: chunk 0 with an all-masked window ("first"), or a
    later chunk with a half-filled window ("next"); ``dt`` of the first denoising step."""
    from ...runtime.scheduler import euler_dt
    from ...spec_dynamic import masked_window_feeds

    first = profile == "first"
    f = generator_feeds(cfg, first, seed=seed)
    if first:
        f.update(masked_window_feeds(cfg))
    f["dt"] = euler_dt(f["timestep"][0], (960.0 / 1000.0, 0.0))[None].astype(np.float32)
    return {k: (v.astype(kv_dtype) if k.endswith("_win") else v) for k, v in f.items()}


def generator_jobs(cfg, model, names, calib_chunks: int, kv_dtype: str = "float32",
                   calibrate: Callable | None = None) -> list[EngineJob]:
    """The one ``generator`` engine: both chunk lengths (profiles ``first`` / ``next``), Euler step inside, the
    softmax K/V window stored as ``kv_dtype``; ``calibrate``: the loop over a calibration set
    (``sanawm.export.calibration``), default the random-input loop."""
    from ...models.generator_engine import GeneratorEngine
    from ...spec import generator_profiles
    from ...spec_dynamic import frame_bounds

    if list(names) != [GENERATOR]:
        raise ValueError(f"the generator is one engine, {GENERATOR!r}; got {list(names)}")
    module = GeneratorEngine(model, kv_dtype=kv_dtype).eval()
    return [EngineJob(
        GENERATOR, "generator_step", module, module.io, calibrate or generator_calibration(cfg, None, calib_chunks),
        lambda: generator_engine_feeds(cfg, "next", seed=7, kv_dtype=kv_dtype),
        "one engine for both chunk lengths: symbolic frame axis n with one optimization profile per length "
        "(first: condition frame + 3 with an all-masked window; next: 3); Euler step inside (dt in, latents.out out)",
        profiles=generator_profiles(cfg), dims=frame_bounds(cfg),
        profile_samples=lambda prof: generator_engine_feeds(cfg, prof, seed=11, kv_dtype=kv_dtype),
    )]


def generator_config(checkpoint, config_name: str | None):
    """``(GeneratorConfig, name for the manifest)``: detected from ``checkpoint`` (``config_name``, when given, must
    fit it; a structure no built-in config has is named ``"detected"``), or the named config for random weights."""
    from ...config import get_config

    if checkpoint is None:
        return get_config(config_name), config_name
    from ...models.loading import CheckpointError
    from ...models.pretrained import detect_checkpoint_config
    from ..job import ExportInputError

    try:
        cfg, name, _, _ = detect_checkpoint_config(checkpoint, config_name, shapes_only=True)
    except CheckpointError as e:
        raise ExportInputError(str(e)) from None
    log.info("generator config of %s: %s", checkpoint, name or "detected (no built-in config has this structure)")
    return cfg, name or "detected"


def load_generator_model(checkpoint, cfg, seed: int):
    """The generator from ``checkpoint`` into ``cfg`` (from :func:`generator_config`), or seeded random weights."""
    import torch

    if checkpoint is not None:
        from ...models.loading import CheckpointError
        from ...models.pretrained import from_pretrained
        from ..job import ExportInputError

        log.info("loading %s ...", checkpoint)
        try:
            return from_pretrained(checkpoint, cfg)
        except CheckpointError as e:
            raise ExportInputError(str(e)) from None
    from ...models.transformer import SanaWMGenerator

    torch.manual_seed(seed)
    return SanaWMGenerator(cfg).eval()
