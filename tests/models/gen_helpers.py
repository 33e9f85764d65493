"""Shared fixtures for the generator tests: seeded random weights (no zero-initialised paths) and realistic
inputs (valid rotations, positive focal lengths, padded text)."""

from __future__ import annotations

import dataclasses
import math

import torch

from sanawm.config import GeneratorConfig, tiny
from sanawm.models.random_init import randomize_  # noqa: F401  (used by the model tests)


def parity_cfg() -> GeneratorConfig:
    """tiny() with head_dim 48: not a FlashAttention size, so the camera softmax's padded scale (1/sqrt(128))
    differs from 1/sqrt(head_dim) and the test can tell them apart."""
    return dataclasses.replace(tiny(), hidden_size=96, head_dim=48).validate()


def _rotation(axis_angle: torch.Tensor) -> torch.Tensor:
    theta = axis_angle.norm()
    k = axis_angle / theta
    Kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx


def make_camera(B: int, T: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """``[B, T, 20]``: relative c2w (frame 0 = identity, then a smooth random walk) + fx, fy, cx, cy."""
    g = torch.Generator().manual_seed(seed)
    cams = []
    for _ in range(B):
        rows = []
        for f in range(T):
            c2w = torch.eye(4, dtype=torch.float64)
            if f:
                aa = (torch.randn(3, generator=g, dtype=torch.float64) * 0.05 + 0.02) * f
                c2w[:3, :3] = _rotation(aa)
                c2w[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64) * 0.3 * f
            fx, fy = 0.8 * W + 0.3 * torch.rand(1, generator=g).item(), 0.8 * W + 0.3 * torch.rand(1, generator=g).item()
            intr = torch.tensor([fx, fy, (W - 1) / 2 + 0.2, (H - 1) / 2 - 0.1], dtype=torch.float64)
            rows.append(torch.cat([c2w.reshape(-1), intr]))
        cams.append(torch.stack(rows))
    return torch.stack(cams).float()


def make_inputs(cfg: GeneratorConfig, B: int, T: int, seed: int = 0, t_value: float = 937.6) -> dict:
    """Whole-sequence inputs; frame 0 is the clean condition frame (t = 0); fractional t exercises truncation."""
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.latent_height, cfg.latent_width
    timestep = torch.full((B, 1, T), t_value)
    timestep[:, :, 0] = 0.0
    if B > 1:
        timestep[1, :, 1:] = 421.3
    mask = torch.ones(B, cfg.caption_length)
    if B > 1:
        mask[1, cfg.caption_length // 2 :] = 0.0
    return dict(
        latents=torch.randn(B, cfg.in_channels, T, H, W, generator=g),
        timestep=timestep,
        text=torch.randn(B, 1, cfg.caption_length, cfg.caption_channels, generator=g),
        text_mask=mask,
        camera=make_camera(B, T, H, W, seed),
        plucker=torch.randn(B, cfg.plucker_channels, T, H, W, generator=g),
    )
