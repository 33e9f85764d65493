"""Export spec of the stage-2 refiner: its three engines, feeds, calibration over the AR loop, manifest section."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ...constants import REFINER_CAPTURE, REFINER_SINK, REFINER_STEP, STAGE_2_SIGMAS
from ..job import EngineJob, ExportInputError, json_config, sha256_path

log = logging.getLogger("sanawm.export")
TINY_REFINER_CAPTION_LENGTH = 16  # `sanawm encode-prompt --refiner-encoder tiny` default
FULL_REFINER_CAPTION_LENGTH = 1024  # LTX-2 connector tokens


def load_refiner(path: Path):
    """The refiner transformer (float32) from a diffusers folder: its ``transformer/`` or the repo root."""
    import torch

    from ...models.refiner import load_refiner_transformer

    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        return load_refiner_transformer(str(path), dtype=torch.float32, subfolder="transformer").float().eval()
    return load_refiner_transformer(str(path), dtype=torch.float32).float().eval()


def check_refiner_matches(transformer, cfg, where: str) -> None:
    c = transformer.config
    if int(c.in_channels) != cfg.in_channels or int(c.out_channels or c.in_channels) != cfg.in_channels:
        raise ValueError(
            f"{where} takes {c.in_channels} latent channels (out {c.out_channels}), the generator config takes "
            f"{cfg.in_channels}; use the refiner that belongs to this generator (LTX-2: 128 channels with --config full)"
        )
    if int(getattr(c, "patch_size", 1)) != 1 or int(getattr(c, "patch_size_t", 1)) != 1:
        raise ValueError(f"{where} has patch_size {c.patch_size}/{c.patch_size_t}; the refiner graphs support 1/1 (LTX-2)")


def refiner_section(core, layout, transformer, sigmas, source: dict, precision: str) -> dict:
    """The manifest's ``refiner`` entry: the layout the runtime's refiner stage checks and uses."""
    return {
        "layout": {
            "block_size": layout.block_size,
            "kv_max_frames": layout.kv_max_frames,
            "sink_frames": layout.sink_frames,
            "history_frames": layout.history_frames,
            "latent_hw": [layout.latent_height, layout.latent_width],
            "caption_length": layout.caption_length,
            "caption_channels": int(core.caption_channels),
        },
        "sigmas": [float(x) for x in sigmas],
        "timestep_scale_multiplier": float(core.timestep_scale_multiplier),
        "fps": float(core.fps),
        "latent_channels": int(core.in_channels),
        "num_layers": int(core.num_layers),
        "heads": int(core.heads),
        "head_dim": int(core.head_dim),
        "default_seed": 42,
        "config": json_config(transformer.config),
        "precision": precision,
        "source": source,
    }


def _refiner_data(core, layout, blocks: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, core.in_channels, layout.sink_frames + layout.block_size * blocks, layout.latent_height,
                      layout.latent_width, generator=g)
    text = torch.randn(1, layout.caption_length, core.caption_channels, generator=g)
    mask = torch.ones(1, layout.caption_length)
    mask[:, -max(1, layout.caption_length // 4):] = 0
    return lat, text, mask


def refiner_calibration(layout, sigmas, blocks: int, seed: int = 4321) -> Callable:
    """FP8 calibration: the whole AR loop (sink pass, every sigma, sigma-0 capture) over ``blocks`` blocks, so
    the history fills and, past ``kv_max_frames``, slides (as tests/models/test_refiner_export.py does)."""
    import torch

    from ...models.refiner import refine_stream

    def loop(qmodule) -> None:
        core = qmodule.core
        lat, text, mask = _refiner_data(core, layout, blocks, seed)
        refine_stream(core, lat, text, mask, generator=torch.Generator().manual_seed(seed + 1),
                      block_size=layout.block_size, kv_max_frames=layout.kv_max_frames,
                      sink_frames=layout.sink_frames, sigmas=sigmas)

    return loop


def refiner_feeds(core, layout, kind: str, seed: int = 8) -> dict[str, np.ndarray]:
    """Plausible feeds for tracing and the ORT check: block 1 (frames 4..6) after one block of history."""
    from ...models.refiner import refiner_io, sink_rope_offset
    from ..onnx import random_inputs

    io = refiner_io(core, layout, kind)
    f = random_inputs(io, seed)
    n, sk, S = layout.block_size, layout.sink_frames, layout.tokens_per_frame
    start = sk + n
    if "frame_pos" in f:
        f["frame_pos"] = np.arange(start, start + n, dtype=np.int64)
    if kind == "sink":
        f["sink_pos"] = np.arange(sk, dtype=np.int64)
    elif "sink_pos" in f:
        off = sink_rope_offset(start, min(n, layout.history_frames), sk)
        f["sink_pos"] = np.arange(off, off + sk, dtype=np.int64)
    if "hist_valid" in f:
        v = np.zeros(layout.history_tokens, np.float32)
        v[-min(n, layout.history_frames) * S:] = 1
        f["hist_valid"] = v
    if "timestep" in f:
        f["timestep"] = np.array([0.725 * core.timestep_scale_multiplier], np.float32)
    return f


def refiner_jobs(core, layout, sigmas, names, calib_blocks: int, key: dict) -> list[EngineJob]:
    from ...models.refiner import RefinerSinkCapture, RefinerStep, refiner_io
    from ..onnx import FIXED_SHAPE_NOTE

    mods = {REFINER_SINK: ("sink", lambda: RefinerSinkCapture(core)), REFINER_STEP: ("step", lambda: RefinerStep(core)),
            REFINER_CAPTURE: ("capture", lambda: RefinerStep(core, capture=True))}
    notes = {
        "sink": "raw stage-1 frame(s) [0, sink) -> per-layer pre-RoPE sink K/V (once per clip)",
        "step": "one block at one sigma under [sink ; history ; block] attention -> velocity",
        "capture": "refined block at sigma 0 -> history window shifted by one block (hist_*.out -> hist_*)",
    }
    calib = refiner_calibration(layout, sigmas, calib_blocks)
    jobs = []
    for name in names:
        kind, make = mods[name]
        io = refiner_io(core, layout, kind)
        jobs.append(EngineJob(name, name, make().eval(), io, calib, (lambda kind=kind: refiner_feeds(core, layout, kind)),
                              f"{notes[kind]}; {FIXED_SHAPE_NOTE}", None, key))
    return jobs


def prepare_refiner(refiner_path, seed: int, cfg, precision: str, names, caption_length: int | None,
                    kv_max_frames: int, fps: float, calib_chunks: int,
                    calibrated: bool) -> tuple[list[EngineJob], dict]:
    """Load (``refiner_path``) or build (seeded tiny random) the refiner; its jobs and the manifest's section."""
    from ...models.refiner import RefinerCore, RefinerLayout, make_tiny_refiner_transformer

    if refiner_path is not None:
        if not refiner_path.exists():
            raise ExportInputError(f"--refiner {refiner_path} does not exist")
        log.info("hashing refiner %s ...", refiner_path)
        rsrc = {"refiner": str(refiner_path), "refiner_sha256": sha256_path(refiner_path), "random_seed": None}
        try:
            transformer = load_refiner(refiner_path)
        except (OSError, ValueError) as e:
            raise ExportInputError(str(e)) from e
        default_len = FULL_REFINER_CAPTION_LENGTH
    else:
        rsrc = {"refiner": None, "refiner_sha256": None, "random_seed": seed}
        transformer = make_tiny_refiner_transformer(seed, in_channels=cfg.in_channels, out_channels=cfg.in_channels)
        default_len = TINY_REFINER_CAPTION_LENGTH
    try:
        check_refiner_matches(transformer, cfg, f"--refiner {refiner_path}" if refiner_path else "the random refiner")
        layout = RefinerLayout(cfg.latent_height, cfg.latent_width, caption_length or default_len,
                               kv_max_frames=kv_max_frames)
        core = RefinerCore(transformer, fps=fps).eval()
    except (ValueError, NotImplementedError) as e:
        raise ExportInputError(str(e)) from e
    sigmas = STAGE_2_SIGMAS
    info = refiner_section(core, layout, transformer, sigmas, rsrc, precision)
    calib_blocks = max(1, calib_chunks) + 1
    key = {"refiner_source": rsrc, "refiner_config": info["config"], "refiner_layout": info["layout"],
           "fps": fps, "calib_blocks": calib_blocks if calibrated else None}
    return refiner_jobs(core, layout, sigmas, names, calib_blocks, key), info
