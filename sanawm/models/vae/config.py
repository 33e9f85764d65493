"""VAE configs, building/loading a diffusers ``AutoencoderKLLTX2Video``, its compression and latent normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch


F32 = "float32"  # the dtype of every VAE graph input/output


def full_vae_config() -> dict:
    """LTX-2 video VAE (diffusers ``AutoencoderKLLTX2Video`` defaults; 128 latent channels, 32x spatial, 8x
    temporal). The compression ratios are set explicitly because diffusers' fallback formula counts the
    encoder's temporal-only block as spatial."""
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=128,
        block_out_channels=(256, 512, 1024, 2048),
        decoder_block_out_channels=(256, 512, 1024),
        layers_per_block=(4, 6, 6, 2, 2),
        decoder_layers_per_block=(5, 5, 5, 5),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        scaling_factor=1.0,
        encoder_spatial_padding_mode="zeros",
        decoder_spatial_padding_mode="reflect",
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    )


def tiny_vae_config(**overrides: Any) -> dict:
    """Same structure as ``full_vae_config`` (4 down blocks incl. the temporal-only one, 3 residual
    depth-to-space up blocks, reflect padding) with 8 latent channels and 1 resnet per block: 64x96
    images -> 2x3 latents, runs in well under a second on a CPU. ``scaling_factor`` != 1 so tests see
    the normalisation."""
    cfg = full_vae_config()
    cfg.update(
        latent_channels=8,
        block_out_channels=(8, 16, 16, 16),
        # decoder channels must halve block to block (upsample_factor 2), as in the full (256, 512, 1024)
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        scaling_factor=0.7,
    )
    cfg.update(overrides)
    return cfg


def build_vae(config: Mapping[str, Any], seed: int | None = 0, random_latent_stats: bool = False):
    """A randomly initialised diffusers ``AutoencoderKLLTX2Video`` in float32 eval mode (tests, benchmarks).

    ``random_latent_stats`` fills ``latents_mean`` / ``latents_std`` with non-trivial values (the
    diffusers defaults 0 / 1 would hide a normalisation bug)."""
    from diffusers import AutoencoderKLLTX2Video

    if seed is not None:
        torch.manual_seed(seed)
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    vae = AutoencoderKLLTX2Video(**cfg).float().eval()
    if random_latent_stats:
        with torch.no_grad():
            vae.latents_mean.copy_(torch.randn_like(vae.latents_mean) * 0.5)
            vae.latents_std.copy_(torch.rand_like(vae.latents_std) + 0.5)
    return vae


def load_vae(source: Any, dtype: torch.dtype = torch.float32):
    """The VAE from a diffusers folder (``config.json`` + safetensors; local files only, never the hub)
    or an in-memory ``AutoencoderKLLTX2Video`` (returned cast to ``dtype``, eval mode, no grad)."""
    from diffusers import AutoencoderKLLTX2Video

    if isinstance(source, AutoencoderKLLTX2Video):
        vae = source
    else:
        path = Path(source)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a diffusers AutoencoderKLLTX2Video folder (no config.json); point at the "
                "checkpoint's vae/ (or ltx2_causal_vae/) folder holding config.json and the safetensors"
            )
        vae = AutoencoderKLLTX2Video.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    vae = vae.to(dtype).eval()
    vae.requires_grad_(False)
    return vae


def config_dict(vae_or_config: Any) -> dict:
    """Config dict of a model or a config mapping (diffusers FrozenDict or plain dict)."""
    c = getattr(vae_or_config, "config", vae_or_config)
    return dict(c)


def as_tuple(v: Any, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def vae_compression(vae_config: Any) -> tuple[int, int]:
    """(spatial, temporal) compression of the encoder, counted from its structure: patch_size times 2 for
    every down block that downsamples in space (resp. patch_size_t times 2 per temporal downsample)."""
    c = config_dict(vae_config)
    n = len(c["layers_per_block"]) - 1
    scaling = as_tuple(c.get("spatio_temporal_scaling", True), n)
    s, t = c.get("patch_size", 4), c.get("patch_size_t", 1)
    for on, kind in zip(scaling, c["downsample_type"]):
        if not on:
            continue
        if kind in ("spatial", "spatiotemporal", "conv"):
            s *= 2
        if kind in ("temporal", "spatiotemporal", "conv"):
            t *= 2
    return s, t


# ------------------------------------------------------------------------------------------ normalisation


def normalize_latents(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """z [B, C, T, h, w] raw VAE latent -> normalised (the DiT's latent space); mean/std [C]."""
    return (z - mean.view(1, -1, 1, 1, 1)) * scaling_factor / std.view(1, -1, 1, 1, 1)


def denormalize_latents(z_n: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Inverse of ``normalize_latents``: z = z_n * std / scaling_factor + mean."""
    return z_n * std.view(1, -1, 1, 1, 1) / scaling_factor + mean.view(1, -1, 1, 1, 1)
