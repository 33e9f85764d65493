"""Bytes of one live session's snapshot, computed from the tensor contracts (``sanawm.spec``, the VAE
decoder's ``vae_decoder_io``): what ``Session.save`` writes, by part. ``bench/fleet.py`` checks the formula
against a measured snapshot at the tiny config, then evaluates it at the full config.

Parts: the conditioning (first-frame latent, prompt, and the camera + Plücker maps of every latent frame so
far: the one part that grows with the clip), the generator's carried state (GDN / conv / FFN tails and the
softmax window K/V), the VAE decoder's causal-conv caches. Not counted: the refiner stage's history (its
layout is being reworked, issue 11) and the JSON sidecar (poses and action log, kilobytes).
"""

from __future__ import annotations

from sanawm.config import GeneratorConfig
from sanawm.models.vae.decoder_layout import vae_decoder_io
from sanawm.spec import generator_step_io


def latent_frames_after(cfg: GeneratorConfig, chunks: int) -> int:
    return cfg.first_chunk_size + max(0, chunks - 1) * cfg.chunk_size


def snapshot_parts(cfg: GeneratorConfig, vae_config: dict, chunks: int) -> dict[str, int]:
    """Bytes per part of a session snapshot after ``chunks`` chunks (float32 throughout, as saved)."""
    T, C, H, W = latent_frames_after(cfg, chunks), cfg.in_channels, cfg.latent_height, cfg.latent_width
    f32 = 4
    cond = f32 * (C * H * W  # condition latent
                  + cfg.caption_length * (cfg.caption_channels + 1)  # text + mask
                  + T * 20 + cfg.plucker_channels * T * H * W)  # camera + Plücker of every latent frame so far
    io = generator_step_io(cfg, first=False)
    carried = set(io.state_map.values()) | {t.name for t in io.inputs if t.name.endswith("_win")}
    generator = sum(t.nbytes for t in io.inputs if t.name in carried)
    dec = vae_decoder_io(vae_config, first=False, latent_hw=(H, W))
    decoder = sum(t.nbytes for t in dec.inputs if t.name.startswith("cache."))
    return {"cond": cond, "generator": generator, "decoder": decoder}
