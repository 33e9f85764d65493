"""Seeded procedural 3-D scenes (numpy only): a room or corridor around the start camera, textured faces,
and a few coloured boxes, spheres and pillars.

World axes are the project's OpenCV convention (+x right, +y DOWN, +z forward); the start camera sits at the
origin looking down +z (an action path's frame 0 is the identity), so every scene is built around it. Scene
seeds in ``EVAL_SEEDS`` are reserved for evaluation: the training data generator refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEEDS = range(1_000_000, 1_000_512)  # held out: never rendered for training
FACES = ("-x", "+x", "-y (ceiling)", "+y (floor)", "-z", "+z")
PATTERNS = ("checker", "stripes_u", "stripes_v", "plain")


@dataclass(frozen=True)
class Scene:
    """Everything the ray caster needs; arrays are float64 unless noted."""

    seed: int
    lo: np.ndarray  # (3,) room's min corner (x, y = ceiling, z)
    hi: np.ndarray  # (3,) room's max corner (x, y = floor, z)
    sky: bool  # open top: rays leaving through the ceiling see a sky gradient
    face_color: np.ndarray  # (6, 3) RGB in [0, 1], order of FACES
    face_pattern: np.ndarray  # (6,) int index into PATTERNS
    face_period: np.ndarray  # (6,) pattern period in metres
    box_lo: np.ndarray  # (B, 3)
    box_hi: np.ndarray  # (B, 3)
    box_color: np.ndarray  # (B, 3)
    sphere_center: np.ndarray  # (S, 3)
    sphere_radius: np.ndarray  # (S,)
    sphere_color: np.ndarray  # (S, 3)
    pillar_xz: np.ndarray  # (P, 2) axis position on the floor plane
    pillar_radius: np.ndarray  # (P,)
    pillar_color: np.ndarray  # (P, 3)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour -> RGB (distinct hues are easier to tell apart than random RGB)."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _placements(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n: int, clear: float) -> np.ndarray:
    """n floor positions (x, z) inside the room, at least ``clear`` metres from the start camera, biased
    towards the front half so the first frame sees most objects."""
    out = []
    while len(out) < n:
        x = rng.uniform(lo[0] + 0.4, hi[0] - 0.4)
        z = rng.uniform(lo[2] + 0.4, hi[2] - 0.4) if rng.random() < 0.3 else rng.uniform(0.8, hi[2] - 0.4)
        if x * x + z * z >= clear * clear:
            out.append((x, z))
    return np.array(out, dtype=np.float64).reshape(n, 2)


def make_scene(seed: int, *, allow_eval: bool = True) -> Scene:
    """The scene of ``seed`` (deterministic). ``allow_eval=False`` refuses held-out seeds (training data)."""
    seed = int(seed)
    if not allow_eval and seed in EVAL_SEEDS:
        raise ValueError(
            f"scene seed {seed} is reserved for evaluation (EVAL_SEEDS {EVAL_SEEDS.start}..{EVAL_SEEDS.stop - 1}); "
            "train on seeds outside that range"
        )
    rng = np.random.default_rng([seed, 0x5A4A])
    corridor = rng.random() < 0.3
    half_w = rng.uniform(1.4, 2.0) if corridor else rng.uniform(2.5, 4.5)
    cam_h = rng.uniform(1.2, 1.7)  # eye height above the floor
    lo = np.array([-half_w * rng.uniform(0.7, 1.3), -rng.uniform(1.0, 1.8), -rng.uniform(2.0, 4.0)])
    hi = np.array([half_w * rng.uniform(0.7, 1.3), cam_h, rng.uniform(7.0, 12.0) if corridor else rng.uniform(4.0, 7.0)])
    sky = (not corridor) and rng.random() < 0.35
    hue0 = rng.random()
    face_color = np.stack([_hsv((hue0 + 0.17 * k + rng.uniform(-0.04, 0.04)) % 1.0, rng.uniform(0.25, 0.7),
                                rng.uniform(0.45, 0.95)) for k in range(6)])
    face_pattern = rng.integers(0, len(PATTERNS), 6)
    face_pattern[3] = 0 if rng.random() < 0.7 else face_pattern[3]  # floors are mostly tiled
    face_period = rng.uniform(0.5, 1.4, 6)
    nb, ns, npl = int(rng.integers(1, 4)), int(rng.integers(0, 3)), int(rng.integers(0, 3))
    xz = _placements(rng, lo, hi, nb + ns + npl, clear=1.6)
    hues = (rng.random() + np.arange(nb + ns + npl) / max(1, nb + ns + npl)) % 1.0
    cols = np.stack([_hsv(h, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)) for h in hues]) if len(hues) else np.zeros((0, 3))
    size = rng.uniform(0.25, 0.7, (nb, 3))
    size[:, 1] = rng.uniform(0.3, 1.2, nb)  # half height
    bc = np.stack([xz[:nb, 0], cam_h - size[:, 1], xz[:nb, 1]], axis=1)  # resting on the floor
    sr = rng.uniform(0.25, 0.6, ns)
    sc = np.stack([xz[nb:nb + ns, 0], cam_h - sr - rng.uniform(0.0, 0.6, ns), xz[nb:nb + ns, 1]], axis=1)
    return Scene(
        seed=seed, lo=lo, hi=hi, sky=sky, face_color=face_color, face_pattern=face_pattern, face_period=face_period,
        box_lo=bc - size, box_hi=bc + size, box_color=cols[:nb],
        sphere_center=sc.reshape(ns, 3), sphere_radius=sr, sphere_color=cols[nb:nb + ns],
        pillar_xz=xz[nb + ns:], pillar_radius=rng.uniform(0.15, 0.35, npl), pillar_color=cols[nb + ns:],
    )
