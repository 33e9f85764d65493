"""Pixel conversions of the run side (numpy only)."""

from __future__ import annotations

import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8 as the release does: (x + 1) * 127.5, clip to [0, 255], truncate.

    Args:
        frames: [1, 3, F, H, W] or [3, F, H, W] float (channel-first, the decoder layout).
    Returns:
        [F, H, W, 3] uint8 (no rounding: the release casts with a truncating ``.to(torch.uint8)``).
    """
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise ValueError(f"expected batch 1 frames [1, 3, F, H, W]; got shape {x.shape}")
        x = x[0]
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"expected frames [3, F, H, W] (RGB first); got shape {x.shape}")
    y = np.clip((x + np.float32(1.0)) * np.float32(127.5), 0.0, 255.0).astype(np.uint8)  # truncating cast
    return np.ascontiguousarray(y.transpose(1, 2, 3, 0))  # [F, H, W, 3]


def from_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [1, 3, 1, H, W] float32 in [-1, 1] (the VAE encoder's input layout)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB image [H, W, 3] uint8; got {img.dtype} {img.shape}")
    x = img.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None, :, None])


def latent_preview(latents: np.ndarray, scale: int = 8, drop_first: bool = False, repeat: int = 8) -> np.ndarray:
    """A rough RGB view of latents when the bundle has no decoder: channels 0-2, tanh, nearest upscale.

    Args:
        latents: [1, C, n, H, W]; each latent frame becomes ``repeat`` identical video frames.
        drop_first: drop latent frame 0 (the conditioning frame of chunk 0), as decoding does.
    Returns:
        [n' * repeat, H * scale, W * scale, 3] uint8.
    """
    x = np.asarray(latents, dtype=np.float32)[0]  # [C, n, H, W]
    if drop_first:
        x = x[:, 1:]
    rgb = np.tanh(x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, axis=0))  # [3, n, H, W] in (-1, 1)
    rgb = np.repeat(np.repeat(np.repeat(rgb, repeat, axis=1), scale, axis=2), scale, axis=3)
    return to_uint8(rgb)
