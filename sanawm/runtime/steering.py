"""Live steering: a key / velocity camera rig integrated frame by frame, and the camera inputs of one chunk.

The rig speaks the action language of ``sanawm.camera.actions`` (same keys, styles, speeds and per-frame
integration: translation on the ground plane, yaw about world y, pitch about camera x). On top it adds
easing: each motion axis is a velocity in [-1, 1] that follows the held keys through an exponential
low-pass, 0.45 s while a key drives it and 1.0 s while it coasts back to rest (the time constants of
upstream's streaming demo, serving-notes.md section 1). With ``easing=False`` a held key is a constant
per-frame step and the rig reproduces ``action_to_c2w`` bit for bit, which the tests check.

``chunk_camera`` turns the rig's poses into the two generator inputs of latent frames [start, end) with
the parts of ``sanawm.camera.prepare_camera`` (relative c2w, latent intrinsics, Plücker maps), computing
only the raw frames that chunk reads, so a long live session never rebuilds the whole path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..camera.actions import ACTION_KEYS, ACTION_STYLES, DEFAULT_ACTION_STYLE, _flat_unit, _rx, _ry
from ..camera.conditioning import latent_intrinsics, plucker_maps
from ..camera.trajectory import as_c2w, relative_poses

TEMPORAL_STRIDE = 8  # raw frames per latent frame (LTX-2 VAE)
FPS = 16  # SANA-WM video frame rate: one rig step per video frame
EASE_PRESSED_S = 0.45  # velocity time constant while a key drives the axis
EASE_COAST_S = 1.0  # ... and while the axis coasts back to rest
PITCH_LIMIT_DEG = 60.0  # upstream's streaming demo clamps pitch here (the offline action language allows 85)
AXES = ("forward", "strafe", "yaw", "pitch")


def parse_keys(keys) -> frozenset[str]:
    """Held keys from a string ("wd") or a list (["w", "d"]); raises ValueError naming unknown keys."""
    if isinstance(keys, str):
        items = list(keys.lower())
    elif isinstance(keys, (list, tuple, set, frozenset)) and all(isinstance(k, str) for k in keys):
        items = [k.lower() for k in keys]
    else:
        raise ValueError(f"keys must be a string like 'wd' or a list of key names; got {type(keys).__name__}")
    unknown = sorted(set(items) - set(ACTION_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: {', '.join(ACTION_KEYS)} (the action language's keys)")
    return frozenset(items)


def key_targets(held: frozenset[str], style: str) -> np.ndarray:
    """Target velocity per axis (forward, strafe, yaw, pitch) in [-1, 1] for the held keys of ``style``."""
    _, _, (strafe_r, strafe_l), (yaw_r, yaw_l) = ACTION_STYLES[style]
    return np.array([("w" in held) - ("s" in held), (strafe_r in held) - (strafe_l in held),
                     (yaw_r in held) - (yaw_l in held), ("i" in held) - ("k" in held)], dtype=np.float64)


@dataclass
class CameraRig:
    """A camera driven by held keys, one ``step`` per video frame. Pose frame 0 is the identity.

    ``state_dict`` / ``from_state_dict`` carry everything (floats survive JSON exactly), so a snapshot
    or a fork continues the same path.
    """

    style: str = DEFAULT_ACTION_STYLE
    easing: bool = True
    fps: float = FPS
    pitch_limit_deg: float = PITCH_LIMIT_DEG

    def __post_init__(self):
        if self.style not in ACTION_STYLES:
            raise ValueError(f"unknown action style {self.style!r}; allowed: {sorted(ACTION_STYLES)}")
        self.R, self.t, self.pitch = np.eye(3), np.zeros(3), 0.0
        self.velocity = np.zeros(len(AXES))
        self.trace: list[np.ndarray] = []

    def place(self, pose: np.ndarray, velocity=None) -> "CameraRig":
        """Put the rig at ``pose`` (4, 4) with ``velocity`` (default: at rest); returns self."""
        self.R, self.t = np.array(pose[:3, :3], np.float64), np.array(pose[:3, 3], np.float64)
        self.pitch = math.asin(max(-1.0, min(1.0, -self.R[1, 2])))  # pitch of the forward axis (for the limit)
        self.velocity = np.zeros(len(AXES)) if velocity is None else np.array(velocity, np.float64)
        return self

    @property
    def pose(self) -> np.ndarray:
        """Current camera-to-world pose (4, 4) float64."""
        p = np.eye(4)
        p[:3, :3], p[:3, 3] = self.R, self.t
        return p

    def _alphas(self, target: np.ndarray) -> np.ndarray:
        tau = np.where(target != 0, EASE_PRESSED_S, EASE_COAST_S)
        return 1.0 - np.exp(-1.0 / (self.fps * tau))

    def step(self, held: frozenset[str], extra_yaw_deg: float = 0.0, extra_pitch_deg: float = 0.0) -> np.ndarray:
        """Advance one frame with ``held`` keys (plus a mouse-look turn); returns the new pose (4, 4)."""
        speed_t, speed_r = ACTION_STYLES[self.style][:2]
        target = key_targets(held, self.style)
        if self.easing:
            self.velocity = self.velocity + self._alphas(target) * (target - self.velocity)
        else:
            self.velocity = target
        vf, vs, vy, vp = (float(v) for v in self.velocity)
        step = math.radians(speed_r)
        # the same operations, in the same order, as action_to_c2w (bit-identical without easing)
        dp = step * vp + math.radians(extra_pitch_deg)
        limit = math.radians(self.pitch_limit_deg)
        if -limit <= self.pitch + dp <= limit:
            self.pitch += dp
        else:
            dp = 0.0  # would pass the limit: no pitch this frame
        dyaw = step * vy + math.radians(extra_yaw_deg)
        self.R = _ry(dyaw) @ self.R @ _rx(dp)
        fwd, right = _flat_unit(self.R[:, 2]), _flat_unit(self.R[:, 0])
        move = np.zeros(3)
        move += fwd * (speed_t * vf)
        move += right * (speed_t * vs)
        self.t = self.t + move
        return self.pose

    def roll(self, held: frozenset[str], frames: int, mouse_deg=(0.0, 0.0)) -> np.ndarray:
        """``frames`` steps with ``held`` keys; a mouse turn (yaw, pitch degrees) is spread evenly over them."""
        yaw, pitch = (float(m) / frames for m in mouse_deg)
        poses, self.trace = [], []  # trace: the velocity after each frame (the server's preview starts from it)
        for _ in range(frames):
            poses.append(self.step(held, yaw, pitch))
            self.trace.append(self.velocity.copy())
        return np.stack(poses)

    def follow(self, segment) -> np.ndarray:
        """Append an explicit path: ``segment`` (k, 4, 4) c2w relative to the current pose; returns the poses."""
        seg = as_c2w(segment)
        out = self.pose @ seg
        self.place(out[-1], self.velocity)
        self.trace = [self.velocity.copy()] * len(out)
        return out

    def state_dict(self) -> dict:
        return {"style": self.style, "easing": self.easing, "fps": self.fps, "pitch_limit_deg": self.pitch_limit_deg,
                "R": self.R.tolist(), "t": self.t.tolist(), "pitch": self.pitch, "velocity": self.velocity.tolist()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "CameraRig":
        rig = cls(d["style"], bool(d["easing"]), float(d["fps"]), float(d["pitch_limit_deg"]))
        rig.R, rig.t = np.array(d["R"], np.float64), np.array(d["t"], np.float64)
        rig.pitch, rig.velocity = float(d["pitch"]), np.array(d["velocity"], np.float64)
        return rig


def chunk_frames(start: int, end: int) -> int:
    """Raw video frames a chunk of latent frames [start, end) adds: 8 per latent frame (chunk 0: one fewer latent,
    its frame 0 is the conditioning frame)."""
    return TEMPORAL_STRIDE * (end - start - (1 if start == 0 else 0))


def chunk_camera(c2w: np.ndarray, intrinsics, start: int, end: int, latent_hw, image_hw,
                 stride: int = TEMPORAL_STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """Camera inputs of latent frames [start, end): (conditions [n, 20], plücker [6 stride, n, h, w]) float32.

    Equal to ``prepare_camera(CameraPath(c2w[:8 (end - 1) + 1], intrinsics, image_hw))`` sliced to [start, end)
    (the tests check it bit for bit). ``intrinsics`` [fx, fy, cx, cy] in pixels of ``image_hw``, shared by
    all frames.
    """
    last = stride * (end - 1)
    if c2w.shape[0] <= last:
        raise ValueError(f"latent frames [{start}, {end}) need {last + 1} poses; the path has {c2w.shape[0]}")
    h, w = (int(v) for v in latent_hw)
    poses = relative_poses(np.asarray(c2w[: last + 1], np.float64))
    idx = np.arange(start, end) * stride
    lo = max(stride * start - (stride - 1), 0)  # first raw frame the chunk's Plücker windows read
    k = np.broadcast_to(np.asarray(intrinsics, np.float64), (last + 1 - lo, 4))
    k_lat = latent_intrinsics(k, (h, w), image_hw)
    n = end - start
    conditions = np.concatenate([poses[idx].reshape(n, 16), k_lat[idx - lo]], axis=-1)
    window = np.minimum(np.maximum(idx - (stride - 1), 0)[:, None] + np.arange(stride), last) - lo  # (n, stride)
    maps = plucker_maps(poses[lo:], k_lat, (h, w))
    chunk = maps[window].reshape(n, 6 * stride, h, w).transpose(1, 0, 2, 3)
    return conditions.astype(np.float32), np.ascontiguousarray(chunk, dtype=np.float32)
