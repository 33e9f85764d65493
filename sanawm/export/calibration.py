"""Which FP8 calibration set an export uses, and the streaming run that calibrates the generator over it.

``calibration_set(options, cfg)`` picks the set (see :mod:`sanawm.export.calibration_data` for what each holds):
``--calib-*`` flags first, then the default for the weights (random weights: ``random``; the shipped world
model: ``world``; any other checkpoint: presets + rendered scenes, with ``--calib-prompts`` required).
``streaming_calibration`` runs each clip of the set through the real streaming sampler (the release schedule's
four Euler steps and the t = 0 cache pass per chunk, state and the softmax window carried) for ``chunks``
chunks, so every layer sees what it sees when serving: clean context, noisy latents, carried state.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from .calibration_data import (DEFAULT_SCENES, WORLD_CLIPS, CalibrationSet, encode_frames, random_set, read_cameras,
                               read_images, read_prompts, render_frames)
from .job import ExportInputError

log = logging.getLogger("sanawm.export")
DEFAULT_VAE_COMPRESSION = 32  # LTX-2: model frame = 32 x latent grid (used for camera intrinsics without a VAE)
WORLD_CHECKPOINT_NAME = "world"


def calib_frames(cfg, chunks: int) -> tuple[int, int]:
    """(latent frames, raw video frames) of a calibration clip of ``chunks`` chunks."""
    T = cfg.first_chunk_size + (max(1, chunks) - 1) * cfg.chunk_size
    return T, (T - 1) * 8 + 1


def _image_hw(cfg, vae) -> tuple[int, int]:
    s = DEFAULT_VAE_COMPRESSION
    if vae is not None:
        from ..models.vae import vae_compression

        s = vae_compression(vae.config)[0]
    return cfg.latent_height * s, cfg.latent_width * s


def _load_vae(path, cfg=None):
    if path is None:
        return None
    from ..models.vae import load_vae

    try:
        vae = load_vae(path)
        if cfg is not None:
            from .families.vae import check_vae_matches

            check_vae_matches(vae, cfg, f"--vae {path}")
    except (OSError, ValueError) as e:
        raise ExportInputError(str(e)) from None
    return vae


def world_set(cfg, chunks: int) -> CalibrationSet:
    """The shipped world model's default set: its training prompts and training-scene clips."""
    from ..worlds.data import training_clip
    from ..worlds.models import shipped_paths
    from ..worlds.trainer import PROMPTS, text_bank

    _, vae_path = shipped_paths()
    _, F = calib_frames(cfg, chunks)
    feats, mask = text_bank()
    keep = [i for i, p in enumerate(PROMPTS) if p][:WORLD_CLIPS]  # one prompt per clip keeps the run short
    clips = [training_clip(i, F) for i in range(WORLD_CLIPS)]
    vae = _load_vae(vae_path)
    lat = encode_frames(vae, [c.frames[0] for c in clips], _image_hw(cfg, vae))
    return CalibrationSet(
        "world",
        texts=[(feats[i:i + 1].numpy(), mask[i:i + 1].numpy()) for i in keep],
        first_latents=lat, cameras=[(c.camera, c.plucker) for c in clips],
        sources={"prompts": [PROMPTS[i] for i in keep], "scenes": [f"training_clip({i}): scene {c.seed}, {c.action}"
                                                      for i, c in enumerate(clips)]})


def wants_real_set(a) -> bool:
    """Whether ``a`` names calibration data (--calib-* flags) or has a default real set (the world model)."""
    return bool(getattr(a, "calib_prompts", None) or getattr(a, "calib_images", None)
                or getattr(a, "calib_cameras", None) or getattr(a, "config", None) == "world")


def calibration_set(a, cfg) -> CalibrationSet:
    """The set for parsed export options ``a`` (``calib_prompts`` / ``calib_images`` / ``calib_cameras``: lists)."""
    prompts, images, cameras = (list(getattr(a, k, None) or ()) for k in ("calib_prompts", "calib_images", "calib_cameras"))
    user = bool(prompts or images or cameras)
    if a.random and not user:
        return random_set()
    if getattr(a, "config", None) == "world" and not user:
        return world_set(cfg, a.calib_chunks)
    if a.random:
        raise ExportInputError("--calib-prompts/--calib-images/--calib-cameras calibrate a real checkpoint; random "
                               "weights calibrate on random inputs (drop the --calib-* flags or pass --checkpoint)")
    _, F = calib_frames(cfg, a.calib_chunks)
    vae = _load_vae(a.vae, cfg)
    hw = _image_hw(cfg, vae)
    s = CalibrationSet("user" if user else "default")
    if prompts:
        s.texts, s.sources["prompts"] = read_prompts(prompts, cfg)
    elif getattr(a, "config", None) == "world":
        s.texts, s.sources["prompts"] = world_set(cfg, a.calib_chunks).texts, ["world training prompts"]
    else:
        raise ExportInputError(
            "FP8 calibration of a real checkpoint needs real prompt features (N(0,1) text has none of the outlier "
            "channels real Gemma features have, and scales fitted to it clip): write some with `sanawm encode-prompt "
            "--prompt \"...\" --stage1-encoder <Gemma-2 folder> --out p.safetensors` and pass --calib-prompts p.safetensors")
    if images or vae is not None:
        if vae is None:
            raise ExportInputError("--calib-images need the VAE to encode them: pass --vae (the checkpoint's vae/ folder)")
        frames, names = read_images(images, hw) if images else (render_frames(DEFAULT_SCENES, hw), [
            f"rendered scene {x}" for x in DEFAULT_SCENES])
        s.first_latents, s.sources["images"] = encode_frames(vae, frames, hw), names
    else:
        raise ExportInputError("FP8 calibration of a real checkpoint needs first frames encoded by its VAE: pass --vae "
                               "(the checkpoint's vae/ folder), optionally with --calib-images")
    from ..camera import PRESETS

    cams = cameras or list(PRESETS)
    s.cameras, s.sources["cameras"] = read_cameras(cams, cfg, hw, F), [str(c) for c in cams]
    return s


def streaming_calibration(cfg, cset: CalibrationSet, chunks: int, seed: int = 1234) -> Callable:
    """Calibration loop ``loop(qmodule)``: every clip of ``cset`` through the streaming sampler for ``chunks``
    chunks (fresh seeded noise per clip); every layer calibrates on every call."""
    import torch

    T, _ = calib_frames(cfg, chunks)

    def run(qstep) -> None:
        from ..models.generator_step import GeneratorStep
        from ..models.sampler import StreamingSampler

        model = qstep.model if hasattr(qstep, "model") else qstep.step.model  # GeneratorStep or GeneratorEngine
        sampler = StreamingSampler(GeneratorStep(model, True), GeneratorStep(model, False))
        shape = (1, cfg.in_channels, T, cfg.latent_height, cfg.latent_width)
        for k in range(cset.clips):
            text, mask, lat, cam, pl = cset.clip(k)
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + k))
            sampler.sample(torch.from_numpy(np.asarray(lat)), noise, torch.from_numpy(text), torch.from_numpy(mask),
                           torch.from_numpy(cam[None, :T]), torch.from_numpy(pl[None, :, :T]))

    return run
