"""The WASD/IJKL action language -> camera-to-world trajectory.

Syntax: comma-separated ``<keys>-<frames>`` segments, e.g. ``"w-80,dw-40,none-10"``; keys held together
in one segment are combined; ``none`` holds nothing. Whitespace is ignored, case too, and a full-width
comma (，) counts as a comma. Each frame appends one pose, so N frames give N + 1 poses.

Two key mappings (``style``), OpenCV axes (+y down) in both:

- ``"current"`` (the default): upstream SANA-WM's current mapping. w/s move forward/back, d/a yaw
  right/left, i/k pitch up/down, l/j strafe right/left; default speeds 0.025 m and 0.6 deg per frame.
- ``"diffusers"``: the first-release mapping that diffusers 0.42.1
  (``pipelines/sana_wm/cam_utils.py::action_string_to_c2w``) implements, bit for bit (after rounding to
  float32): w/s forward/back, d/a strafe right/left, l/j yaw right/left, i/k pitch; 0.05 m and 1.2 deg per
  frame.

The two styles differ ONLY in which keys strafe vs. yaw and in the default speeds. Both use the same
per-frame integration: translation on the world XZ plane (heading only, pitch ignored), yaw about the world
y axis, pitch about the camera x axis, refused (that frame) once |pitch| would pass ``pitch_limit_deg``;
motion is a constant per-frame step (no velocity smoothing).

Not reproduced: upstream's current code moves the camera with "eased inertia" (a smoothed velocity
model). Its formula is not available to us, so the ``"current"`` style does NOT imitate it; a ``"current"``
trajectory has upstream's key mapping and speeds but constant-step motion, and will differ from upstream's
own rollout wherever the easing would have ramped the speed up or down.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .trajectory import CameraPath

# style -> (translation m/frame, rotation deg/frame, (strafe right, strafe left), (yaw right, yaw left))
ACTION_STYLES = {
    "current": (0.025, 0.6, ("l", "j"), ("d", "a")),
    "diffusers": (0.05, 1.2, ("d", "a"), ("l", "j")),
}
DEFAULT_ACTION_STYLE = "current"
DEFAULT_TRANSLATION_SPEED = ACTION_STYLES[DEFAULT_ACTION_STYLE][0]  # metres per frame (default style)
DEFAULT_ROTATION_SPEED_DEG = ACTION_STYLES[DEFAULT_ACTION_STYLE][1]  # degrees per frame (default style)
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
    style: str = DEFAULT_ACTION_STYLE,
    translation_speed: float | None = None,
    rotation_speed_deg: float | None = None,
    pitch_limit_deg: float = DEFAULT_PITCH_LIMIT_DEG,
) -> np.ndarray:
    """Roll out the action string: (N + 1, 4, 4) float64 c2w, frame 0 = identity.

    ``style``: ``"current"`` (upstream's current key mapping, 0.025 m / 0.6 deg per frame, WITHOUT its
    eased inertia, whose formula we do not have) or ``"diffusers"`` (first-release mapping, 0.05 m /
    1.2 deg per frame; equals diffusers' ``action_string_to_c2w``, which returns the same values rounded
    to float32). ``translation_speed`` / ``rotation_speed_deg``, when given, override the style's
    defaults; the key mapping always follows ``style``.
    """
    if style not in ACTION_STYLES:
        raise ValueError(f"unknown action style {style!r}; allowed: {sorted(ACTION_STYLES)}.")
    default_t, default_r, (strafe_r, strafe_l), (yaw_r, yaw_l) = ACTION_STYLES[style]
    translation_speed = default_t if translation_speed is None else translation_speed
    rotation_speed_deg = default_r if rotation_speed_deg is None else rotation_speed_deg
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
        dyaw = step * ((yaw_r in held) - (yaw_l in held))
        R = _ry(dyaw) @ R @ _rx(dp)  # yaw about world y (left-multiply), pitch about camera x (right)
        fwd, right = _flat_unit(R[:, 2]), _flat_unit(R[:, 0])
        move = np.zeros(3)
        # Added one by one in forward, back, right, left order so the float sums match the reference
        # bit for bit.
        if "w" in held:
            move += fwd * translation_speed
        if "s" in held:
            move -= fwd * translation_speed
        if strafe_r in held:
            move += right * translation_speed
        if strafe_l in held:
            move -= right * translation_speed
        t = t + move
        out[i, :3, :3] = R
        out[i, :3, 3] = t
    return out


def action_path(action: str, intrinsics, image_hw=None, fps: float | None = None, **options) -> CameraPath:
    """``CameraPath`` from an action string; ``intrinsics`` in any form ``CameraPath`` accepts.

    ``options`` go to ``action_to_c2w`` (``style``, ``translation_speed``, ``rotation_speed_deg``,
    ``pitch_limit_deg``).
    """
    return CameraPath(action_to_c2w(action, **options), intrinsics, image_hw=image_hw, fps=fps)
