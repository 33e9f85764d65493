"""Camera trajectory -> the two SANA-WM camera inputs (numbers match diffusers' ``prepare_camera``).

* ``camera_conditions`` (T, 20): for latent frame i, the relative c2w of raw frame 8i flattened
  row-major (16), then [fx, fy, cx, cy] in latent-pixel units (4).
* ``chunk_plucker`` (48, T, h, w): for latent frame i, the 8 raw frames [max(0, 8i − 7), +8) (short
  windows repeat the last pose), each a 6-channel Plücker map [d, o × d]; channel = 6·j + c.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .frames import TEMPORAL_STRIDE, num_latent_frames
from .trajectory import CameraPath, relative_poses

MODEL_IMAGE_HW = (704, 1280)
MODEL_LATENT_HW = (22, 40)  # 704 / 32, 1280 / 32


class CameraInputs(NamedTuple):
    camera_conditions: np.ndarray  # (T, 20) float32
    chunk_plucker: np.ndarray  # (6 * stride, T, h, w) float32


def latent_intrinsics(intrinsics: np.ndarray, latent_hw, image_hw) -> np.ndarray:
    """(..., 4) [fx, fy, cx, cy] from image pixels to latent pixels: x-terms · w/W, y-terms · h/H."""
    (h, w), (H, W) = latent_hw, image_hw
    k = np.array(intrinsics, dtype=np.float64, copy=True)
    k[..., [0, 2]] *= w / float(W)
    k[..., [1, 3]] *= h / float(H)
    return k


def plucker_maps(c2w: np.ndarray, intrinsics: np.ndarray, hw) -> np.ndarray:
    """Per-frame Plücker maps, (F, 6, h, w) float64.

    Pixel grid u = 0..w−1, v = 0..h−1 (no half-pixel offset, as in training); d_cam = ((u−cx)/fx,
    (v−cy)/fy, 1); d = normalise(R d_cam); moment = t × d (t = camera centre).
    """
    h, w = hw
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")  # (h, w)
    fx, fy, cx, cy = (intrinsics[:, i, None, None] for i in range(4))  # (F, 1, 1) each
    d_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u - cx)], axis=-1)  # (F, h, w, 3)
    d = np.einsum("fij,fhwj->fhwi", c2w[:, :3, :3], d_cam)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    t = np.broadcast_to(c2w[:, None, None, :3, 3], d.shape)  # (F, h, w, 3)
    m = np.cross(t, d)
    return np.concatenate([d, m], axis=-1).transpose(0, 3, 1, 2)  # (F, 6, h, w)


def prepare_camera(
    path: CameraPath,
    num_frames: int | None = None,
    latent_hw=MODEL_LATENT_HW,
    image_hw=MODEL_IMAGE_HW,
    *,
    stride: int = TEMPORAL_STRIDE,
) -> CameraInputs:
    """Build ``(camera_conditions (T, 20), chunk_plucker (6·stride, T, h, w))``, both float32.

    Args:
        path: trajectory whose intrinsics are in pixels of ``image_hw`` (the cropped model frame; use
            ``path.cropped_to(image_hw)`` or ``prepare_first_frame`` to get there).
        num_frames: raw frames to use (default: all); must be stride*k + 1 and <= len(path)
            (``fit_num_frames`` / ``snap_num_frames`` produce such a count).
        latent_hw: latent grid (h, w); image_hw: model frame (H, W).

    Poses are taken relative to frame 0 in float64; results are cast to float32 at the end.
    """
    n = len(path) if num_frames is None else int(num_frames)
    if n > len(path):
        raise ValueError(
            f"too few frames: num_frames = {n} but the path has {len(path)}; fix: pass a longer trajectory or "
            f"num_frames <= {len(path)} (fit_num_frames(path, n) trims and snaps)."
        )
    T = num_latent_frames(n, stride)
    if path.image_hw is None:
        raise ValueError(
            f"path.image_hw is unknown, so it is unclear whether the intrinsics are in {tuple(image_hw)} pixels; "
            "fix: path.with_image_hw(source_hw).cropped_to(image_hw), or prepare_first_frame(image, path)."
        )
    if tuple(path.image_hw) != tuple(image_hw):
        raise ValueError(
            f"the intrinsics are in pixels of a {path.image_hw} image but the model frame is {tuple(image_hw)}; "
            f"fix: path.cropped_to({tuple(image_hw)}) (the same resize + centre crop as the first frame)."
        )
    h, w = (int(v) for v in latent_hw)

    poses = relative_poses(path.c2w[:n])  # (n, 4, 4), frame 0 = I
    k_lat = latent_intrinsics(path.intrinsics[:n], (h, w), image_hw)  # (n, 4)

    # Coarse branch: one pose per latent frame, raw frame stride*i.
    idx = np.arange(T) * stride  # (T,)
    conditions = np.concatenate([poses[idx].reshape(T, 16), k_lat[idx]], axis=-1)  # (T, 20)

    # Fine branch: raw frames [max(0, stride*i − stride + 1), +stride), clipped to n−1 = repeat the last pose.
    start = np.maximum(idx - (stride - 1), 0)  # (T,)
    window = np.minimum(start[:, None] + np.arange(stride), n - 1)  # (T, stride)
    maps = plucker_maps(poses, k_lat, (h, w))  # (n, 6, h, w), every raw frame once
    chunk = maps[window].reshape(T, 6 * stride, h, w).transpose(1, 0, 2, 3)  # (6·stride, T, h, w)
    return CameraInputs(conditions.astype(np.float32), np.ascontiguousarray(chunk, dtype=np.float32))
