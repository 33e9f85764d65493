"""The tiny world model's two networks (build side): the ``world`` generator config and its causal VAE.

The VAE is the LTX-2 ``AutoencoderKLLTX2Video`` structure (causal 3-D convs, residual depth-to-space
up blocks, reflect padding) shrunk to 64x96 frames: patch 2 and one spatial, one temporal, one
spatio-temporal and one more temporal down block give 8x spatial and 8x temporal compression (the full
VAE's 32x would leave a 2x3 latent), so latents are 16 x 8 x 12 per 8 frames. The decoder mirrors it with a
temporal then two spatio-temporal up blocks.
"""

from __future__ import annotations

from pathlib import Path

from ..config import world
from .paths import FRAME_HW, LATENT_HW

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_world"
GENERATOR_FILE = "generator.safetensors"
VAE_DIR = "vae"  # diffusers folder: config.json + diffusion_pytorch_model.safetensors
TRAINING_JSON = "training.json"


def shipped_paths(asset_dir: Path = ASSET_DIR) -> tuple[Path, Path]:
    """(generator safetensors, VAE folder) of the shipped weights; a clear error when they are missing."""
    gen, vae = asset_dir / GENERATOR_FILE, asset_dir / VAE_DIR
    if not gen.is_file() or not (vae / "config.json").is_file():
        raise ValueError(
            f"the trained world model is not in {asset_dir} (need {GENERATOR_FILE} and {VAE_DIR}/config.json); "
            "reinstall sanawm, or train it: python -m sanawm.worlds.train --work DIR --ship " + str(asset_dir)
        )
    return gen, vae


def world_vae_config() -> dict:
    """diffusers ``AutoencoderKLLTX2Video`` kwargs of the world VAE (latent channels = world().in_channels)."""
    from ..models.vae import tiny_vae_config

    return tiny_vae_config(
        latent_channels=world().in_channels,
        patch_size=2,
        block_out_channels=(16, 32, 64, 64),
        decoder_block_out_channels=(24, 48, 96),
        downsample_type=("spatial", "temporal", "spatiotemporal", "temporal"),
        upsample_type=("temporal", "spatiotemporal", "spatiotemporal"),
        spatial_compression_ratio=8,
        temporal_compression_ratio=8,
        scaling_factor=1.0,
    )


def check_sizes() -> None:
    """The VAE's compression maps FRAME_HW onto the generator's latent grid (fails loudly if edited apart)."""
    from ..models.vae import vae_compression

    s, t = vae_compression(world_vae_config())
    cfg = world()
    if (FRAME_HW[0] // s, FRAME_HW[1] // s) != LATENT_HW or LATENT_HW != (cfg.latent_height, cfg.latent_width) or t != 8:
        raise ValueError(f"world VAE ({s}x spatial, {t}x temporal) does not map {FRAME_HW} frames to {LATENT_HW} latents")
