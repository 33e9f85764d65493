"""Named camera motions as c2w paths (OpenCV axes: +x right, +y down, +z forward; frame 0 = identity).

Each preset is a closed-form function of the frame index, so rotations are exact and nothing drifts.
"""

from __future__ import annotations

import math

import numpy as np

from .trajectory import CameraPath

DEFAULT_STEP = 0.05  # metres per frame (same as the action DSL)
DEFAULT_DEGREES = 0.5  # degrees per frame for pans, tilts and orbits (0.5° · 120 frames = 60°)
DEFAULT_ORBIT_RADIUS = 2.0  # metres from the camera to the point it orbits (straight ahead of frame 0)


def _rot_y(a: np.ndarray) -> np.ndarray:
    """(F,) angles -> (F, 3, 3) rotations about +y; positive turns +z towards +x (look right)."""
    c, s = np.cos(a), np.sin(a)
    R = np.zeros(a.shape + (3, 3))
    R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = c, s, 1.0, -s, c
    return R


def _rot_x(a: np.ndarray) -> np.ndarray:
    """(F,) angles -> (F, 3, 3) rotations about +x; positive turns +z towards −y (look up, y is down)."""
    c, s = np.cos(a), np.sin(a)
    R = np.zeros(a.shape + (3, 3))
    R[:, 0, 0], R[:, 1, 1], R[:, 1, 2], R[:, 2, 1], R[:, 2, 2] = 1.0, c, -s, s, c
    return R


def _poses(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.zeros((R.shape[0], 4, 4))
    out[:, :3, :3], out[:, :3, 3], out[:, 3, 3] = R, t, 1.0
    return out


def _translate(k: np.ndarray, direction) -> np.ndarray:
    return _poses(np.broadcast_to(np.eye(3), (k.size, 3, 3)), k[:, None] * np.asarray(direction, float))


def _orbit(k, sign, degrees, radius):
    # The camera circles the point (0, 0, radius) on the horizontal plane and keeps looking at it:
    # heading φ gives R = R_y(φ) and centre = target − radius · forward. sign +1 moves the camera left.
    phi = sign * np.radians(degrees) * k
    R = _rot_y(phi)
    return _poses(R, np.array([0.0, 0.0, radius]) - radius * R[:, :, 2])


_BUILDERS = {
    "static": lambda k, step, deg, r: _translate(k, (0.0, 0.0, 0.0)),
    "dolly_in": lambda k, step, deg, r: _translate(k, (0.0, 0.0, step)),
    "dolly_out": lambda k, step, deg, r: _translate(k, (0.0, 0.0, -step)),
    "truck_left": lambda k, step, deg, r: _translate(k, (-step, 0.0, 0.0)),
    "truck_right": lambda k, step, deg, r: _translate(k, (step, 0.0, 0.0)),
    "crane_up": lambda k, step, deg, r: _translate(k, (0.0, -step, 0.0)),  # −y is up
    "crane_down": lambda k, step, deg, r: _translate(k, (0.0, step, 0.0)),
    "pan_left": lambda k, step, deg, r: _poses(_rot_y(-np.radians(deg) * k), np.zeros((k.size, 3))),
    "pan_right": lambda k, step, deg, r: _poses(_rot_y(np.radians(deg) * k), np.zeros((k.size, 3))),
    "tilt_up": lambda k, step, deg, r: _poses(_rot_x(np.radians(deg) * k), np.zeros((k.size, 3))),
    "tilt_down": lambda k, step, deg, r: _poses(_rot_x(-np.radians(deg) * k), np.zeros((k.size, 3))),
    "orbit_left": lambda k, step, deg, r: _orbit(k, 1.0, deg, r),
    "orbit_right": lambda k, step, deg, r: _orbit(k, -1.0, deg, r),
}
_BUILDERS["orbit"] = _BUILDERS["orbit_left"]
PRESETS: tuple[str, ...] = tuple(_BUILDERS)


def preset_c2w(
    name: str,
    num_frames: int,
    *,
    step: float = DEFAULT_STEP,
    degrees_per_frame: float = DEFAULT_DEGREES,
    radius: float = DEFAULT_ORBIT_RADIUS,
) -> np.ndarray:
    """(num_frames, 4, 4) float64 c2w for preset ``name`` (one of ``PRESETS``)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown camera preset {name!r}; choose one of {', '.join(PRESETS)}.")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int; got {num_frames!r}.")
    for label, v in (("step", step), ("degrees_per_frame", degrees_per_frame), ("radius", radius)):
        if not math.isfinite(v):
            raise ValueError(f"{label} must be finite; got {v!r}.")
    if radius <= 0:
        raise ValueError(f"radius must be > 0 metres; got {radius!r}.")
    k = np.arange(int(num_frames), dtype=np.float64)
    return _BUILDERS[name](k, float(step), float(degrees_per_frame), float(radius))


def preset_path(name: str, num_frames: int, intrinsics, image_hw=None, fps: float | None = None, **kw) -> CameraPath:
    """``CameraPath`` for a preset; ``kw`` goes to ``preset_c2w`` (step, degrees_per_frame, radius)."""
    return CameraPath(preset_c2w(name, num_frames, **kw), intrinsics, image_hw=image_hw, fps=fps)
