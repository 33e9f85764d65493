"""The WASD/IJKL action language -> camera-to-world trajectory (same numbers as diffusers'
``action_string_to_c2w``).

Syntax: comma-separated ``<keys>-<frames>`` segments, e.g. ``"w-80,dw-40,none-10"``; keys held together
in one segment are combined; ``none`` holds nothing. Whitespace is ignored, case too, and a full-width
comma (，) counts as a comma. Each frame appends one pose, so N frames give N + 1 poses.

Key mapping (OpenCV axes, +y down): w/s move forward/back and d/a right/left on the world XZ plane
(heading only, pitch ignored); l/j yaw right/left about the world y axis; i/k pitch up/down about the
camera x axis, refused (that frame) once |pitch| would pass ``pitch_limit_deg``. Motion is a constant
per-frame step (no velocity smoothing).
"""

from __future__ import annotations

import math
import re

import numpy as np

from .trajectory import CameraPath

DEFAULT_TRANSLATION_SPEED = 0.05  # metres per frame
DEFAULT_ROTATION_SPEED_DEG = 1.2  # degrees per frame
DEFAULT_PITCH_LIMIT_DEG = 85.0
ACTION_KEYS = "adijklsw"
_SEGMENT = re.compile(r"^(?P<keys>.*)-(?P<n>[0-9]+)$")


def parse_actions(action: str) -> list[frozenset[str]]:
    """One set of held keys per frame. Raises ValueError naming the bad segment."""
    if not isinstance(action, str):
        raise ValueError(f"action must be a string like 'w-80,dw-40'; got {type(action).__name__}.")
    text = "".join(action.replace("，", ",").split())
    if not text:
        raise ValueError("action string is empty; fix: pass segments like 'w-80,dw-40' (<keys>-<frames>).")
    frames: list[frozenset[str]] = []
    for seg in text.split(","):
        m = _SEGMENT.match(seg)
        if m is None:
            raise ValueError(
                f"invalid action segment {seg!r}: expected '<keys>-<frames>' with a whole number of frames, "
                "e.g. 'w-30' or 'none-10'."
            )
        n = int(m["n"])
        if n <= 0:
            raise ValueError(f"action segment {seg!r} has a non-positive duration {n}; fix: use >= 1 frames.")
        keys = m["keys"].lower()
        if keys == "none":
            held = frozenset()
        else:
            unknown = sorted(set(keys) - set(ACTION_KEYS))
            if unknown:
                raise ValueError(
                    f"action segment {seg!r} has unknown keys {unknown}; allowed: {ACTION_KEYS} or 'none'."
                )
            held = frozenset(keys)
        frames.extend([held] * n)
    return frames


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _flat_unit(v: np.ndarray) -> np.ndarray:
    """v with its y (down) component dropped, normalised if non-zero: a heading on the ground plane."""
    g = np.array([v[0], 0.0, v[2]])
    n = float(np.linalg.norm(g))
    return g / n if n > 0 else g


def action_to_c2w(
    action: str,
    *,
    translation_speed: float = DEFAULT_TRANSLATION_SPEED,
    rotation_speed_deg: float = DEFAULT_ROTATION_SPEED_DEG,
    pitch_limit_deg: float = DEFAULT_PITCH_LIMIT_DEG,
) -> np.ndarray:
    """Roll out the action string: (N + 1, 4, 4) float64 c2w, frame 0 = identity.

    (diffusers returns the same values rounded to float32.)
    """
    step = math.radians(rotation_speed_deg)
    limit = math.radians(pitch_limit_deg)
    frames = parse_actions(action)
    out = np.zeros((len(frames) + 1, 4, 4))
    out[:, 3, 3] = 1.0
    R, t, pitch = np.eye(3), np.zeros(3), 0.0
    out[0, :3, :3] = R
    for i, held in enumerate(frames, start=1):
        dp = step * (("i" in held) - ("k" in held))
        if -limit <= pitch + dp <= limit:
            pitch += dp
        else:
            dp = 0.0  # would pass the limit: no pitch this frame
        dyaw = step * (("l" in held) - ("j" in held))
        R = _ry(dyaw) @ R @ _rx(dp)  # yaw about world y (left-multiply), pitch about camera x (right)
        fwd, right = _flat_unit(R[:, 2]), _flat_unit(R[:, 0])
        move = np.zeros(3)
        # Added one by one in w, s, d, a order so the float sums match the reference bit for bit.
        if "w" in held:
            move += fwd * translation_speed
        if "s" in held:
            move -= fwd * translation_speed
        if "d" in held:
            move += right * translation_speed
        if "a" in held:
            move -= right * translation_speed
        t = t + move
        out[i, :3, :3] = R
        out[i, :3, 3] = t
    return out


def action_path(action: str, intrinsics, image_hw=None, fps: float | None = None, **speeds) -> CameraPath:
    """``CameraPath`` from an action string; ``intrinsics`` in any form ``CameraPath`` accepts."""
    return CameraPath(action_to_c2w(action, **speeds), intrinsics, image_hw=image_hw, fps=fps)
