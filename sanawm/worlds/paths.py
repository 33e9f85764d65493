"""Camera paths for the synthetic worlds, in the project's own action language (``sanawm.camera``).

Training draws random action strings; evaluation uses the fixed ``EVAL_ACTIONS``. Both go through
``action_path`` -> ``CameraPath`` so the rendered truth and the model's camera inputs use the same poses.
"""

from __future__ import annotations

import numpy as np

from ..camera import CameraPath, action_path

FRAME_HW = (32, 48)  # model frame (H, W): small enough that a CPU-trained VAE reconstructs it well
LATENT_HW = (8, 12)  # 4x spatial VAE
INTRINSICS = (32.0, 32.0, 24.0, 16.0)  # fx, fy, cx, cy in FRAME_HW pixels (~74 deg horizontal field of view)
SPEED_M = 0.04  # metres per frame (faster than the default 0.025 so a 3 s clip moves visibly)
SPEED_DEG = 1.0  # degrees per frame
STYLE = "current"  # w/s forward/back, a/d yaw, j/l strafe, i/k pitch
FPS = 16.0

# random training segments: (keys, weight); yaw and forward motion dominate, as in the demo paths
_TRAIN_KEYS = (("w", 4), ("s", 1), ("a", 3), ("d", 3), ("wa", 2), ("wd", 2), ("j", 1), ("l", 1),
               ("i", 0.5), ("k", 0.5), ("none", 1.5), ("sa", 0.5), ("sd", 0.5))

EVAL_ACTIONS = (
    "w-96", "d-96", "a-96", "wd-96", "wa-96", "w-24,d-48,w-24", "a-48,w-48", "d-32,a-32,d-32",
    "s-24,d-72", "l-48,d-48", "j-48,a-48", "wd-48,wa-48", "none-24,d-72", "a-24,wa-72", "w-48,a-48", "d-96",
)


def random_action(rng: np.random.Generator, num_frames: int) -> str:
    """A random action string of ``num_frames - 1`` steps (``num_frames`` poses)."""
    keys = [k for k, _ in _TRAIN_KEYS]
    p = np.array([w for _, w in _TRAIN_KEYS], dtype=np.float64)
    p /= p.sum()
    left, segs = num_frames - 1, []
    while left > 0:
        n = int(min(left, rng.integers(8, 49)))
        segs.append(f"{keys[rng.choice(len(keys), p=p)]}-{n}")
        left -= n
    return ",".join(segs)


def mirror_yaw(action: str) -> str:
    """The same action with left/right yaw swapped (a <-> d): a wrong path for the camera-following score."""
    return action.translate(str.maketrans({"a": "d", "d": "a"}))


def mirror_action(action: str) -> str:
    """The left-right mirror image of an action (yaw a <-> d and strafe j <-> l): rendering the mirrored
    path in the mirrored scene gives the horizontally flipped frames (training augmentation)."""
    return action.translate(str.maketrans({"a": "d", "d": "a", "j": "l", "l": "j"}))


def still(action: str) -> str:
    """No motion for as many frames as ``action`` has."""
    n = sum(int(seg.rsplit("-", 1)[1]) for seg in action.replace(" ", "").split(","))
    return f"none-{n}"


def world_path(action: str, num_frames: int | None = None) -> CameraPath:
    """``CameraPath`` of an action string at the world model's frame size, trimmed/extended to a streaming
    length (24 k + 1 frames) when ``num_frames`` is given (the last pose is held to extend)."""
    path = action_path(action, INTRINSICS, image_hw=FRAME_HW, fps=FPS, style=STYLE,
                       translation_speed=SPEED_M, rotation_speed_deg=SPEED_DEG)
    if num_frames is not None:
        if len(path) < num_frames:
            path = action_path(f"{action},none-{num_frames - len(path)}", INTRINSICS, image_hw=FRAME_HW, fps=FPS,
                               style=STYLE, translation_speed=SPEED_M, rotation_speed_deg=SPEED_DEG)
        path = path.trim(num_frames)
    return path
