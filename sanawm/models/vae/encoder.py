"""The first-frame VAE encoder as an export-ready step, and its I/O spec."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ...spec import StepIO, TensorSpec
from .config import F32, config_dict, normalize_latents, vae_compression


def vae_encoder_io(vae_config: Any, height: int, width: int) -> StepIO:
    """Contract of ``vae_encoder``: image [1, 3, 1, H, W] in [-1, 1] -> latent [1, C, 1, H/s, W/s]
    (normalised, posterior mode)."""
    c = config_dict(vae_config)
    s, _ = vae_compression(c)
    _check_image_size(c, height, width)
    C = c["latent_channels"]
    return StepIO(
        inputs=(TensorSpec("image", F32, (1, c.get("in_channels", 3), 1, height, width), "first frame, RGB in [-1, 1]"),),
        outputs=(TensorSpec("latent", F32, (1, C, 1, height // s, width // s), "normalised latent of the frame"),),
        state_map={},
    )


def _check_image_size(c: Mapping, height: int, width: int) -> None:
    s, _ = vae_compression(c)
    if height % s or width % s or height <= 0 or width <= 0:
        h2, w2 = max(s, height // s * s), max(s, width // s * s)
        raise ValueError(
            f"VAE encoder input is {height}x{width} (HxW); this VAE needs H and W to be multiples of {s} "
            f"(e.g. {h2}x{w2}, or 704x1280 for SANA-WM). Resize / centre-crop the frame first (the runtime "
            "does this in sanawm.camera.crop before encoding)."
        )


class VAEEncoderStep(nn.Module):
    """First-frame encoder: ``forward(image [1, 3, 1, H, W]) -> (latent [1, C, 1, h, w],)``.

    Runs the diffusers encoder causally (one frame: frame 0 maps to its own latent frame), takes the
    posterior mode (the first C of the 2C output channels) and normalises it. Holds the diffusers encoder
    module itself (shared parameters)."""

    def __init__(self, vae, height: int, width: int):
        super().__init__()
        c = config_dict(vae)
        _check_image_size(c, height, width)
        self.height, self.width = height, width
        self.in_channels = c.get("in_channels", 3)
        self.latent_channels = c["latent_channels"]
        self.scaling_factor = float(c.get("scaling_factor", 1.0))
        self.encoder = vae.encoder
        self.register_buffer("latents_mean", vae.latents_mean.detach().clone().float(), persistent=False)
        self.register_buffer("latents_std", vae.latents_std.detach().clone().float(), persistent=False)

    def forward(self, image: torch.Tensor):
        if image.dim() != 5 or tuple(image.shape[:3]) != (1, self.in_channels, 1):
            raise ValueError(
                f"VAE encoder expects image [1, {self.in_channels}, 1, H, W] (batch 1, RGB, one frame), got "
                f"{tuple(image.shape)}; add the batch/frame axes with image[None, :, None] and drop alpha"
            )
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"VAE encoder step was built for {self.height}x{self.width} frames, got "
                f"{image.shape[-2]}x{image.shape[-1]}; resize / centre-crop the frame to "
                f"{self.height}x{self.width} (the runtime does this before encoding)"
            )
        h = self.encoder(image, causal=True)  # [1, 2C, 1, h, w]: mean, then the (repeated) log-variance
        mode = h[:, : self.latent_channels]
        return (normalize_latents(mode, self.latents_mean, self.latents_std, self.scaling_factor),)
