"""Trajectory files -> ``CameraPath``.

* ``.npy``: (F, 4, 4) OpenCV camera-to-world, intrinsics from a second ``.npy`` or given directly
  (the LingBot-World / diffusers convention).
* SANA-WM-Bench ``.npz``: ``c2w`` (F, 4, 4), ``intrinsics`` ((F, 3, 3) in source-image pixels, other
  accepted layouts too), ``fps``, ``num_frames``.
* RealEstate10K ``.txt``: optional first line = video URL; then per frame ``timestamp_us fx fy cx cy
  k1 k2`` (intrinsics normalised by image width / height) and 12 numbers, a row-major 3x4
  world-to-camera matrix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .trajectory import CameraPath, as_c2w, invert_c2w

BENCH_KEYS = ("c2w", "intrinsics", "fps", "num_frames")


def _load_npy(file, what: str) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{what} file not found: {os.fspath(file)!r}.") from None
    except ValueError as e:  # pickled / corrupt file
        raise ValueError(f"could not read {what} file {os.fspath(file)!r} as a plain .npy array: {e}") from None


def load_c2w_npy(c2w_file, intrinsics, *, image_hw=None, fps: float | None = None) -> CameraPath:
    """(F, 4, 4) c2w ``.npy`` + intrinsics (a ``.npy`` path or an array: (4,), (3, 3), (F, 4), (F, 3, 3))."""
    c2w = _load_npy(c2w_file, "c2w")
    if isinstance(intrinsics, (str, os.PathLike)):
        intrinsics = _load_npy(intrinsics, "intrinsics")
    return CameraPath(c2w, intrinsics, image_hw=image_hw, fps=fps)


def load_bench_npz(file, *, image_hw=None) -> CameraPath:
    """SANA-WM-Bench camera file; trimmed to its ``num_frames``. ``image_hw``: size of the scene's source
    image (the intrinsics are in its pixels; the file does not store it)."""
    try:
        with np.load(file, allow_pickle=False) as z:
            missing = [k for k in BENCH_KEYS if k not in z.files]
            if missing:
                raise ValueError(
                    f"{os.fspath(file)!r} is missing keys {missing} (has {sorted(z.files)}); a SANA-WM-Bench "
                    f"camera file stores {list(BENCH_KEYS)}."
                )
            data = {k: z[k] for k in BENCH_KEYS}
    except FileNotFoundError:
        raise ValueError(f"bench camera file not found: {os.fspath(file)!r}.") from None
    n = int(np.asarray(data["num_frames"]).reshape(()))
    c2w = data["c2w"]
    if not 1 <= n <= len(c2w):
        raise ValueError(
            f"{os.fspath(file)!r}: num_frames = {n} but c2w holds {len(c2w)} poses; fix: the file is "
            "inconsistent, re-export it with num_frames <= len(c2w)."
        )
    intr = np.asarray(data["intrinsics"])
    if intr.ndim >= 2 and intr.shape[0] == len(c2w) and intr.shape != (3, 3):
        intr = intr[:n]  # per-frame intrinsics: keep them aligned with the trimmed poses
    return CameraPath(c2w[:n], intr, image_hw=image_hw, fps=float(np.asarray(data["fps"]).reshape(())))


def load_re10k_txt(file, image_hw, *, fps: float | None = None) -> CameraPath:
    """RealEstate10K pose text -> c2w path with intrinsics in pixels of ``image_hw`` (H, W).

    ``fps`` defaults to 1e6 / median timestamp step (timestamps are microseconds) when there are >= 2 frames.
    """
    H, W = image_hw
    rows: list[list[float]] = []
    lines = Path(file).read_text().splitlines()
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(p) for p in parts]
        except ValueError:
            if not rows and lineno == 1:
                continue  # the video URL header
            raise ValueError(
                f"{os.fspath(file)}:{lineno}: not a pose line (non-numeric value); RealEstate10K lines are "
                "'timestamp fx fy cx cy k1 k2' + 12 numbers of a 3x4 world-to-camera matrix."
            ) from None
        if len(values) != 19:
            raise ValueError(
                f"{os.fspath(file)}:{lineno}: {len(values)} numbers, expected 19 (timestamp, fx fy cx cy, 2 "
                "distortion zeros, 12 of a row-major 3x4 world-to-camera matrix)."
            )
        rows.append(values)
    if not rows:
        raise ValueError(f"too few frames: {os.fspath(file)!r} holds no pose lines.")
    a = np.asarray(rows)  # (F, 19)
    w2c = np.zeros((len(a), 4, 4))
    w2c[:, :3, :] = a[:, 7:].reshape(-1, 3, 4)
    w2c[:, 3, 3] = 1.0
    # Normalised intrinsics -> pixels: x terms by width, y terms by height.
    intr = a[:, 1:5] * np.array([W, H, W, H], dtype=np.float64)
    if fps is None and len(a) >= 2:
        dt = np.median(np.diff(a[:, 0]))
        fps = 1e6 / dt if dt > 0 else None
    # Validate the rotations before inverting (the closed-form inverse assumes they are rotations).
    try:
        as_c2w(w2c)
    except ValueError as e:
        raise ValueError(f"{os.fspath(file)}: bad world-to-camera matrix: {e}") from None
    return CameraPath(invert_c2w(w2c), intr, image_hw=(H, W), fps=fps)
