"""Frame-count snapping: the LTX-2 VAE needs F = 8k + 1 raw frames (T = k + 1 latent frames); the
streaming runtime needs F = 24k + 1 so that T = 3k + 1 splits into chunks [0, 4, 7, 10, ...]."""

from __future__ import annotations

from ..constants import TEMPORAL_STRIDE
from .trajectory import CameraPath

STREAMING_BLOCK = 3  # latent frames per streaming chunk after the first
MIN_STREAMING_LATENT_FRAMES = 4  # the chunk-causal sampler rejects T <= 3


def snap_num_frames(n: int, stride: int = TEMPORAL_STRIDE, *, upper_bound: int | None = None) -> int:
    """Nearest ``stride*k + 1`` to ``n`` (ties go up); the lower one if the upper would pass ``upper_bound``.

    Same rule as diffusers' ``snap_num_frames`` (except n < 1 raises here instead of returning 1).
    """
    n, stride = int(n), int(stride)
    if stride < 1:
        raise ValueError(f"stride must be a positive int; got {stride}.")
    if n < 1:
        raise ValueError(f"num_frames must be >= 1; got {n}; fix: ask for at least 1 frame.")
    below = n - (n - 1) % stride  # largest stride*k + 1 <= n
    if below == n:
        return n
    above = below + stride
    snapped = below if n - below < above - n else above
    if upper_bound is not None and snapped > upper_bound:
        snapped = below
    return max(snapped, 1)


def snap_streaming_num_frames(
    n: int, *, upper_bound: int | None = None, block_size: int = STREAMING_BLOCK, stride: int = TEMPORAL_STRIDE
) -> int:
    """Snap to ``(stride*block_size)*k + 1`` (24k + 1 by default: 241 -> T = 31, 961 -> T = 121).

    Raises if the result has fewer than 4 latent frames (25 raw frames), which the streaming sampler rejects.
    """
    snapped = snap_num_frames(n, stride * block_size, upper_bound=upper_bound)
    if num_latent_frames(snapped, stride) < MIN_STREAMING_LATENT_FRAMES:
        raise ValueError(
            f"streaming needs at least {(MIN_STREAMING_LATENT_FRAMES - 1) * stride + 1} frames "
            f"(T >= {MIN_STREAMING_LATENT_FRAMES} latent frames); {n} frames"
            + (f" (trajectory of {upper_bound})" if upper_bound is not None else "")
            + f" snap to {snapped}; fix: use a longer trajectory / num_frames >= "
            f"{(MIN_STREAMING_LATENT_FRAMES - 1) * stride + 1}."
        )
    return snapped


def num_latent_frames(num_frames: int, stride: int = TEMPORAL_STRIDE) -> int:
    """T = (F − 1) / stride + 1 for an aligned F; raises if F is not stride*k + 1."""
    if num_frames < 1 or (num_frames - 1) % stride:
        raise ValueError(
            f"num_frames = {num_frames} is not {stride}k + 1; fix: snap it first, "
            f"e.g. snap_num_frames({num_frames}, {stride}) = {snap_num_frames(max(num_frames, 1), stride)}."
        )
    return (num_frames - 1) // stride + 1


def fit_num_frames(path: CameraPath, num_frames: int | None = None, *, stride: int = TEMPORAL_STRIDE) -> CameraPath:
    """Trim ``path`` to a model-valid length, as diffusers' pipeline does before ``prepare_camera``:
    min(num_frames, len(path)), snapped to stride*k + 1 without exceeding the trajectory.

    Use ``stride=24`` for the streaming chunk layout (or ``snap_streaming_num_frames`` + ``path.trim``).
    """
    n = len(path) if num_frames is None else min(int(num_frames), len(path))
    return path.trim(snap_num_frames(n, stride, upper_bound=len(path)))
