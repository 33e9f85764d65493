"""Resize-then-centre-crop geometry and the matching intrinsics update (numpy only, no Pillow).

The first frame is scaled (aspect kept) until it covers the target, then the centre is cut out. The
same scale and offset are applied to (fx, fy, cx, cy) so rays keep pointing at the same pixels. Rounding
follows diffusers' ``resize_and_center_crop``: Python ``round`` (half to even) on the scaled size, each
side at least the target, offsets floored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropGeometry:
    """How a ``src_hw`` image becomes ``target_hw``: resize to ``resized_hw``, then cut at ``offset_yx``."""

    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset_yx: tuple[int, int]  # (top, left) of the crop window inside the resized image
    target_hw: tuple[int, int]

    @property
    def scale(self) -> float:
        """The aspect-preserving scale factor (>1 means upsampling)."""
        (sh, sw), (th, tw) = self.src_hw, self.target_hw
        return max(th / sh, tw / sw)


def _check_hw(name: str, hw) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (height, width) pair of ints; got {hw!r}.") from None
    if (h, w) != tuple(hw) or h <= 0 or w <= 0:
        raise ValueError(f"{name} must be two positive ints (height, width); got {hw!r}.")
    return h, w


def crop_geometry(src_hw, target_hw=(704, 1280)) -> CropGeometry:
    """Size after the cover-resize and the centre-crop offset for an image of ``src_hw`` pixels."""
    sh, sw = _check_hw("src_hw", src_hw)
    th, tw = _check_hw("target_hw", target_hw)
    scale = max(th / sh, tw / sw)
    # max(...) guards against round() landing one pixel short of the target.
    rw = max(tw, int(round(sw * scale)))
    rh = max(th, int(round(sh * scale)))
    return CropGeometry((sh, sw), (rh, rw), ((rh - th) // 2, (rw - tw) // 2), (th, tw))


def crop_intrinsics(intrinsics: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Map ``(..., 4)`` [fx, fy, cx, cy] from source pixels to pixels of the cropped image.

    fx, cx scale with the width ratio and fy, cy with the height ratio (the two differ slightly after
    rounding); the principal point then shifts by the crop offset.
    """
    k = np.array(intrinsics, dtype=np.float64, copy=True)
    if k.shape[-1:] != (4,):
        raise ValueError(f"intrinsics must end in 4 values [fx, fy, cx, cy]; got shape {k.shape}.")
    (sh, sw), (rh, rw) = geometry.src_hw, geometry.resized_hw
    top, left = geometry.offset_yx
    sx, sy = rw / sw, rh / sh
    k[..., 0] *= sx
    k[..., 1] *= sy
    k[..., 2] = k[..., 2] * sx - left
    k[..., 3] = k[..., 3] * sy - top
    return k
