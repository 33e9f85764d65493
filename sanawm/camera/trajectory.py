"""``CameraPath``: a validated camera trajectory (OpenCV camera-to-world poses + pinhole intrinsics).

Convention (as SANA-WM was trained): OpenCV camera axes, +x right, +y down, +z forward; ``c2w`` maps
camera coordinates to world coordinates. Intrinsics are (fx, fy, cx, cy) in pixels of ``image_hw``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crop import _check_hw, crop_geometry, crop_intrinsics

ROTATION_ATOL = 1e-4  # max |RᵀR − I| and |det R − 1|; float32 poses and 6-decimal text files sit far below
_LAST_ROW = np.array([0.0, 0.0, 0.0, 1.0])


def _first_bad(mask: np.ndarray) -> int:
    """Index of the first True along axis 0 of a boolean (F, ...) mask."""
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def normalize_intrinsics(intrinsics, num_frames: int) -> np.ndarray:
    """Any accepted intrinsics layout -> (F, 4) float64 [fx, fy, cx, cy].

    Accepted: (4,) / list (fx, fy, cx, cy) shared by all frames; (3, 3) K shared by all frames;
    (F, 4) per frame; (F, 3, 3) per-frame K. Skew must be zero (the model's ray maps have none).
    """
    raw = np.asarray(intrinsics, dtype=np.float64)
    if raw.shape == (3, 3) or (raw.ndim == 3 and raw.shape[1:] == (3, 3)):
        K = raw.reshape(-1, 3, 3)
        if not np.all(np.isfinite(K)):
            raise ValueError("intrinsics K contains NaN or inf; fix: pass finite calibration values.")
        if np.any(np.abs(K[:, 2] - [0.0, 0.0, 1.0]) > 1e-6):
            raise ValueError(
                f"intrinsics K last row must be [0, 0, 1]; got {K[0, 2].tolist()} (first bad frame "
                f"{_first_bad(np.abs(K[:, 2] - [0.0, 0.0, 1.0]) > 1e-6)}); fix: pass a pinhole matrix "
                "[[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (divide by K[2, 2] if it was scaled)."
            )
        if np.any(np.abs(K[:, 0, 1]) > 1e-3 * np.abs(K[:, 0, 0])) or np.any(np.abs(K[:, 1, 0]) > 1e-9):
            raise ValueError(
                "intrinsics K has a non-zero skew / off-diagonal term, which the model cannot represent; "
                "fix: pass an undistorted, skew-free pinhole K."
            )
        raw = np.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], axis=-1)
        if intrinsics is not None and np.asarray(intrinsics).ndim == 2:
            raw = raw[0]  # a single (3, 3) K: broadcast below like (4,)
    if raw.shape == (4,):
        raw = np.broadcast_to(raw, (num_frames, 4))
    if raw.ndim != 2 or raw.shape[1] != 4:
        raise ValueError(
            f"intrinsics must be (4,) [fx, fy, cx, cy], (3, 3) K, (F, 4) or (F, 3, 3); got shape "
            f"{np.asarray(intrinsics).shape}; fix: reshape to one of these."
        )
    if raw.shape[0] != num_frames:
        raise ValueError(
            f"intrinsics has {raw.shape[0]} frames but c2w has {num_frames}; fix: pass one intrinsics "
            f"row per pose (e.g. intrinsics[:{num_frames}]) or a single shared (4,) / (3, 3)."
        )
    k = np.array(raw, dtype=np.float64)  # own, writable copy
    if not np.all(np.isfinite(k)):
        raise ValueError(
            f"intrinsics contain NaN or inf (first bad frame {_first_bad(~np.isfinite(k))}); "
            "fix: pass finite fx, fy, cx, cy."
        )
    if np.any(k[:, :2] <= 0):
        f = _first_bad(k[:, :2] <= 0)
        raise ValueError(
            f"non-positive focal length at frame {f}: fx, fy = {k[f, 0]}, {k[f, 1]}; fix: focal lengths "
            "are in pixels and must be > 0 (a 60° horizontal FOV at width W is fx = W / (2 tan 30°))."
        )
    return k


def as_c2w(c2w, rotation_atol: float = ROTATION_ATOL) -> np.ndarray:
    """Validate camera-to-world poses; returns an (F, 4, 4) float64 copy. (F, 3, 4) gets [0, 0, 0, 1] appended."""
    p = np.array(c2w, dtype=np.float64, copy=True)
    if p.ndim == 3 and p.shape[1:] == (3, 4):
        p = np.concatenate([p, np.broadcast_to(_LAST_ROW, (p.shape[0], 1, 4))], axis=1)
    if p.ndim != 3 or p.shape[1:] != (4, 4):
        hint = " (a single pose: add a leading axis, c2w[None])" if p.shape == (4, 4) else ""
        raise ValueError(
            f"c2w must have shape (F, 4, 4) (or (F, 3, 4)); got {p.shape}; fix: stack one 4x4 "
            f"camera-to-world matrix per frame{hint}."
        )
    if p.shape[0] < 1:
        raise ValueError("too few frames: c2w has 0 poses; fix: pass at least 1 pose (frame 0 is the input image).")
    if not np.all(np.isfinite(p)):
        raise ValueError(
            f"c2w contains NaN or inf (first bad frame {_first_bad(~np.isfinite(p))}); fix: drop or "
            "interpolate the broken poses before building the path."
        )
    bad_row = np.abs(p[:, 3] - _LAST_ROW) > 1e-6
    if bad_row.any():
        f = _first_bad(bad_row)
        raise ValueError(
            f"c2w last row must be [0, 0, 0, 1]; frame {f} has {p[f, 3].tolist()}; fix: pass homogeneous "
            "rigid transforms (a projection or scaled matrix is not a pose)."
        )
    R = p[:, :3, :3]
    ortho = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))  # (F,)
    if np.any(ortho > rotation_atol):
        f = int(np.argmax(ortho > rotation_atol))
        raise ValueError(
            f"c2w rotation block is not orthonormal at frame {f} (max |RᵀR − I| = {ortho[f]:.3g} > "
            f"{rotation_atol:g}); fix: remove scale/shear from the poses or re-orthonormalise them with "
            "sanawm.camera.orthonormalize(c2w)."
        )
    det = np.linalg.det(R)
    if np.any(np.abs(det - 1.0) > rotation_atol):
        f = int(np.argmax(np.abs(det - 1.0) > rotation_atol))
        raise ValueError(
            f"c2w rotation block is not a rotation at frame {f} (det = {det[f]:.6g}, need +1: it is a "
            "reflection, i.e. a left-handed convention); fix: convert to right-handed OpenCV c2w "
            "(+x right, +y down, +z forward), e.g. OpenGL -> OpenCV is c2w @ diag(1, -1, -1, 1)."
        )
    return p


def orthonormalize(c2w) -> np.ndarray:
    """Project each rotation block to the nearest rotation (SVD); for poses with small numerical drift."""
    p = np.array(c2w, dtype=np.float64, copy=True)
    U, _, Vt = np.linalg.svd(p[..., :3, :3])
    D = np.ones(U.shape[:-1])
    D[..., -1] = np.sign(np.linalg.det(U @ Vt))  # keep det +1 (never turn a pose into a reflection)
    p[..., :3, :3] = (U * D[..., None, :]) @ Vt
    return p


def invert_c2w(c2w: np.ndarray) -> np.ndarray:
    """Closed-form rigid inverse (Rᵀ, −Rᵀt) of (..., 4, 4) poses, as the reference does (not np.linalg.inv)."""
    R = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    out = np.zeros_like(c2w)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


@dataclass(frozen=True, eq=False)
class CameraPath:
    """A validated trajectory of F frames.

    Attributes:
        c2w: (F, 4, 4) float64 OpenCV camera-to-world poses (read-only).
        intrinsics: (F, 4) float64 [fx, fy, cx, cy] in pixels of ``image_hw`` (read-only). The constructor
            also accepts (4,), (3, 3) or (F, 3, 3).
        image_hw: (height, width) of the image the intrinsics refer to, or None if not known yet.
        fps: frames per second of the trajectory, or None.
    """

    c2w: np.ndarray
    intrinsics: np.ndarray
    image_hw: tuple[int, int] | None = None
    fps: float | None = None
    rotation_atol: float = ROTATION_ATOL

    def __post_init__(self):
        c2w = as_c2w(self.c2w, self.rotation_atol)
        k = normalize_intrinsics(self.intrinsics, c2w.shape[0])
        c2w.setflags(write=False)
        k.setflags(write=False)
        object.__setattr__(self, "c2w", c2w)
        object.__setattr__(self, "intrinsics", k)
        if self.image_hw is not None:
            object.__setattr__(self, "image_hw", _check_hw("image_hw", self.image_hw))
        if self.fps is not None:
            fps = float(self.fps)
            if not np.isfinite(fps) or fps <= 0:
                raise ValueError(f"fps must be a positive finite number or None; got {self.fps!r}.")
            object.__setattr__(self, "fps", fps)

    @property
    def num_frames(self) -> int:
        return self.c2w.shape[0]

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def _replace(self, **kw) -> "CameraPath":
        args = dict(c2w=self.c2w, intrinsics=self.intrinsics, image_hw=self.image_hw, fps=self.fps,
                    rotation_atol=self.rotation_atol)
        args.update(kw)
        return CameraPath(**args)

    def trim(self, num_frames: int) -> "CameraPath":
        """The first ``num_frames`` frames."""
        if not 1 <= num_frames <= len(self):
            raise ValueError(
                f"too few frames: cannot take {num_frames} frames from a {len(self)}-frame path; fix: ask for "
                f"1..{len(self)} frames or supply a longer trajectory."
            )
        return self._replace(c2w=self.c2w[:num_frames], intrinsics=self.intrinsics[:num_frames])

    def with_image_hw(self, image_hw) -> "CameraPath":
        """Declare which image size the intrinsics are in (values unchanged)."""
        return self._replace(image_hw=image_hw)

    def relative_to_first(self) -> "CameraPath":
        """Poses re-expressed in frame 0's camera: P'_0 = I, P'_i = P_0⁻¹ P_i (metric scale kept)."""
        return self._replace(c2w=relative_poses(self.c2w))

    def cropped_to(self, target_hw=(704, 1280)) -> "CameraPath":
        """Intrinsics for the resize + centre-crop of the ``image_hw`` frame to ``target_hw``."""
        if self.image_hw is None:
            raise ValueError(
                "image_hw is unknown, so the intrinsics cannot be mapped through the crop; fix: "
                "path.with_image_hw((H, W)) with the source image size, or use prepare_first_frame(image, path)."
            )
        g = crop_geometry(self.image_hw, target_hw)
        return self._replace(intrinsics=crop_intrinsics(self.intrinsics, g), image_hw=g.target_hw)


def relative_poses(c2w: np.ndarray) -> np.ndarray:
    """(F, 4, 4) -> poses relative to frame 0; frame 0 is exactly the identity."""
    rel = invert_c2w(c2w[0]) @ c2w  # (F, 4, 4)
    rel[0] = np.eye(4)
    return rel
