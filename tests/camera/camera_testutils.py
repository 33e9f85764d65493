"""Random smooth, valid camera trajectories for the camera tests (numpy only)."""

import numpy as np


def _rodrigues(w: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) -> rotation (3, 3)."""
    a = np.linalg.norm(w)
    if a < 1e-12:
        return np.eye(3)
    k = w / a
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def random_c2w(rng: np.random.Generator, num_frames: int, *, max_deg_per_frame=2.0, speed=0.1) -> np.ndarray:
    """Smooth random walk: a random start pose, then slowly varying angular and linear velocities."""
    # Velocities: random endpoints linearly blended over time -> smooth but not trivial motion.
    a, b = rng.normal(size=(2, 3))
    omega = np.radians(max_deg_per_frame) * np.linspace(a, b, num_frames) / np.sqrt(3)
    va, vb = rng.normal(size=(2, 3))
    vel = speed * np.linspace(va, vb, num_frames)
    R = _rodrigues(rng.normal(size=3))  # arbitrary world orientation of frame 0
    t = rng.normal(size=3) * 3.0  # arbitrary world position of frame 0
    out = np.zeros((num_frames, 4, 4))
    out[:, 3, 3] = 1.0
    for i in range(num_frames):
        out[i, :3, :3], out[i, :3, 3] = R, t
        R = R @ _rodrigues(omega[i])
        t = t + R @ vel[i]
    return out


def random_intrinsics(rng: np.random.Generator, num_frames: int, image_hw, *, per_frame: bool) -> np.ndarray:
    """(F, 4) [fx, fy, cx, cy] in pixels of image_hw; per_frame=True adds a slow zoom and principal-point drift."""
    H, W = image_hw
    f = W * rng.uniform(0.5, 1.5)
    base = np.array([f, f * rng.uniform(0.95, 1.05), W / 2 + rng.uniform(-0.05, 0.05) * W,
                     H / 2 + rng.uniform(-0.05, 0.05) * H])
    k = np.tile(base, (num_frames, 1))
    if per_frame:
        k *= 1 + np.linspace(0, rng.uniform(-0.2, 0.2), num_frames)[:, None]
    return k
