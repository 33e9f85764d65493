"""Frame metrics against ground truth (numpy only): PSNR and SSIM per frame, and per second of video."""

from __future__ import annotations

import numpy as np

FPS = 16  # SANA-WM output frame rate
SSIM_WINDOW = 7
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def psnr_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(F,) PSNR in dB of uint8 frames (F, H, W, 3) a vs b (capped at 100 dB for identical frames)."""
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = (d * d).reshape(len(a), -1).mean(axis=1)
    return np.minimum(10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows ('valid'), per frame: x (F, H, W)."""
    c = np.cumsum(np.cumsum(np.pad(x, ((0, 0), (1, 0), (1, 0))), axis=1), axis=2)
    s = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
    return s / (k * k)


def ssim_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(F,) SSIM of the luma of uint8 frames a vs b (uniform 7x7 window, standard constants)."""
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    w = np.array([0.299, 0.587, 0.114])
    x, y = a.astype(np.float64) @ w, b.astype(np.float64) @ w
    k = SSIM_WINDOW
    mx, my = _box(x, k), _box(y, k)
    vx, vy, cxy = _box(x * x, k) - mx * mx, _box(y * y, k) - my * my, _box(x * y, k) - mx * my
    s = ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    return s.reshape(len(a), -1).mean(axis=1)


def per_second(values: np.ndarray, fps: int = FPS) -> list[float]:
    """Mean of per-frame values over each second of video (the last second may be partial)."""
    v = np.asarray(values, dtype=np.float64)
    return [float(v[i:i + fps].mean()) for i in range(0, len(v), fps)]
