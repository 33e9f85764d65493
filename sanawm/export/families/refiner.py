"""Export spec of the stage-2 refiner: its ONE engine (profiles sink / block), feeds, calibration over the AR loop,
manifest section."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ...constants import REFINER, STAGE_2_SIGMAS
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


def refiner_feeds(core, layout, profile: str, seed: int = 8, kv_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Plausible feeds of the one engine at ``profile``: the sink pass (every prefix key masked, pre-RoPE K out), or
    block 1 (frames 4..6) at sigma 0.725 after one block of history in the ring."""
    from ...models.refiner import sink_rope_offset
    from ...spec_refiner import BLOCK, refiner_engine_io, refiner_profiles
    from ..onnx import random_inputs

    io = refiner_engine_io(core, layout, kv_dtype).concrete(refiner_profiles(layout)[profile])
    f = random_inputs(io, seed)
    n, sk, S = layout.block_size, layout.sink_frames, layout.tokens_per_frame
    valid = np.zeros(sk * S + layout.history_tokens, np.float32)
    if profile == BLOCK:
        start, sigma, nxt = sk + n, 0.725, 0.421875
        hist = min(n, layout.history_frames)
        off = sink_rope_offset(start, hist, sk)
        valid[: (sk + hist) * S] = 1
        f["frame_pos"] = np.arange(start, start + n, dtype=np.int64)
        f["sink_pos"] = np.arange(off, off + sk, dtype=np.int64)
    else:
        sigma = nxt = 0.0
        f["frame_pos"] = f["sink_pos"] = np.arange(sk, dtype=np.int64)
    f["kv_valid"] = valid
    f["timestep"] = np.array([sigma * core.timestep_scale_multiplier], np.float32)
    f["sigma"] = np.array([sigma], np.float32)
    f["dt"] = np.array([nxt - sigma], np.float32)
    f["kv_rotate"] = np.array([1.0 if profile == BLOCK else 0.0], np.float32)
    return f


def refiner_jobs(core, layout, sigmas, names, calib_blocks: int, key: dict, kv_dtype: str = "float32") -> list[EngineJob]:
    """The one ``refiner`` engine: sink capture, denoising steps (Euler inside) and the history commit."""
    from ...models.refiner.engine import RefinerEngine
    from ...spec_refiner import BLOCK, FRAME_DIM, refiner_profiles

    if list(names) != [REFINER]:
        raise ExportInputError(f"the refiner is one engine, {REFINER!r}; got {list(names)}")
    module = RefinerEngine(core, layout, kv_dtype).eval()
    profiles = refiner_profiles(layout)
    n = sorted(p[FRAME_DIM] for p in profiles.values())
    note = ("one engine, one weight set: profile sink (raw sink frame(s), every prefix key masked, pre-RoPE K/V out) "
            "and block (one block under [sink ; history ring ; block]: Euler step inside, sigma in, latents.out out; "
            "the sigma-0 commit pass returns the block's post-RoPE K/V, copied into the runtime's history ring)")
    return [EngineJob(REFINER, REFINER, module, module.io, refiner_calibration(layout, sigmas, calib_blocks),
                      lambda: refiner_feeds(core, layout, BLOCK, kv_dtype=kv_dtype), note, None, key,
                      profiles=profiles, dims={FRAME_DIM: (n[0], n[-1])},
                      profile_samples=lambda prof: refiner_feeds(core, layout, prof, seed=11, kv_dtype=kv_dtype))]


def prepare_refiner(refiner_path, seed: int, cfg, precision: str, names, caption_length: int | None,
                    kv_max_frames: int, fps: float, calib_chunks: int,
                    calibrated: bool, kv_dtype: str = "float32", build=None) -> tuple[list[EngineJob], dict]:
    """Load (``refiner_path``) or build (seeded tiny random) the refiner; its jobs and the manifest's section.
    ``build(path)``: how the transformer is made from ``refiner_path`` (default ``load_refiner``; the streamed
    export passes a ghost builder)."""
    from ...models.refiner import RefinerCore, RefinerLayout, make_tiny_refiner_transformer

    if refiner_path is not None:
        if not refiner_path.exists():
            raise ExportInputError(f"--refiner {refiner_path} does not exist")
        log.info("hashing refiner %s ...", refiner_path)
        rsrc = {"refiner": str(refiner_path), "refiner_sha256": sha256_path(refiner_path), "random_seed": None}
        try:
            transformer = (build or load_refiner)(refiner_path)
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
    info["kv_dtype"] = kv_dtype
    calib_blocks = max(1, calib_chunks) + 1
    key = {"refiner_source": rsrc, "refiner_config": info["config"], "refiner_layout": info["layout"],
           "fps": fps, "calib_blocks": calib_blocks if calibrated else None, "kv_dtype": kv_dtype}
    return refiner_jobs(core, layout, sigmas, names, calib_blocks, key, kv_dtype), info
