"""Timewarp: show the last frame from a camera that has moved since it was generated (numpy only).

For a pure rotation the warp is exact: a pixel x of the source camera is seen by the target camera at
H x with H = K R^T K^-1, R the target camera's rotation in source-camera coordinates. A translation t
needs the depth of every pixel, which we do not have; we approximate the scene by a fronto-parallel plane
at ``PLANE_DEPTH_M`` in front of the source camera, the plane-induced homography
H = K R^T (I - t n^T / d) K^-1 with n = +z. Nearer things move more in reality, farther things less.
"""

from __future__ import annotations

import numpy as np

PLANE_DEPTH_M = 2.0  # assumed scene depth for translation; a held W moves 0.6 m per chunk, a clear but sane zoom


def intrinsics_matrix(intrinsics, image_hw, frame_hw) -> np.ndarray:
    """3x3 K for frames of ``frame_hw`` from [fx, fy, cx, cy] given in pixels of ``image_hw``."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    sy, sx = frame_hw[0] / image_hw[0], frame_hw[1] / image_hw[1]
    return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


def homography(K: np.ndarray, src_c2w: np.ndarray, dst_c2w: np.ndarray, plane_depth: float = PLANE_DEPTH_M) -> np.ndarray:
    """H mapping source pixels (homogeneous) to target pixels; exact when the cameras share a centre."""
    rel = np.linalg.inv(src_c2w) @ dst_c2w  # target camera in source-camera coordinates
    R, t = rel[:3, :3], rel[:3, 3]
    n = np.array([0.0, 0.0, 1.0])
    return K @ R.T @ (np.eye(3) - np.outer(t, n) / plane_depth) @ np.linalg.inv(K)


def warp(image: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``image`` [h, w, 3] uint8 seen through H (source -> target pixels): bilinear, edges clamped."""
    h, w = image.shape[:2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    src = np.linalg.inv(H) @ np.stack([u.ravel(), v.ravel(), np.ones(h * w)])  # target pixel -> source pixel
    z = src[2]
    z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    x = np.clip(src[0] / z, 0, w - 1)
    y = np.clip(src[1] / z, 0, h - 1)
    x0, y0 = np.minimum(x.astype(np.int64), w - 2), np.minimum(y.astype(np.int64), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.reshape(h * w, -1).astype(np.float32)
    i00 = y0 * w + x0
    top = img[i00] * (1 - fx) + img[i00 + 1] * fx
    bot = img[i00 + w] * (1 - fx) + img[i00 + w + 1] * fx
    out = top * (1 - fy) + bot * fy
    return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(image.shape)


def reproject(image: np.ndarray, K: np.ndarray, src_c2w: np.ndarray, dst_c2w: np.ndarray,
              plane_depth: float = PLANE_DEPTH_M) -> np.ndarray:
    """The frame generated at ``src_c2w`` as an approximate view from ``dst_c2w``."""
    if np.allclose(src_c2w, dst_c2w, atol=1e-12):
        return image
    return warp(image, homography(K, src_c2w, dst_c2w, plane_depth))
