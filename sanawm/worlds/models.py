"""The tiny world model's two networks (build side): the ``world`` generator config and its causal VAE.

The VAE is the LTX-2 ``AutoencoderKLLTX2Video`` structure (causal 3-D convs, residual depth-to-space up blocks,
reflect padding) shrunk to 32x48 frames: patch 2, one spatial and three temporal down blocks give 4x spatial and
8x temporal compression (the full VAE's 32x would leave a 1x1 latent), so latents are 16 x 8 x 12 per 8 frames.
The decoder mirrors it with two temporal then one spatio-temporal up block. Why 4x and 32x48, not 8x and 64x96:
on one CPU thread the 8x VAE reached only ~18 dB in the training budget (the first frame alone, 12x compressed,
no better), while 4x at 32x48 trains ~3x faster per step and reconstructs better at equal steps.
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
        downsample_type=("spatial", "temporal", "temporal", "temporal"),
        upsample_type=("temporal", "temporal", "spatiotemporal"),
        spatial_compression_ratio=4,
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
