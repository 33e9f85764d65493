"""Vectorised numpy ray caster for ``Scene``: any c2w (OpenCV, +y down) and pinhole intrinsics.

Every pixel of every frame is one batch of rays (``SUPERSAMPLE``^2 rays per pixel, box-filtered), so a clip
renders in a fraction of a second at the tiny model's 32x48 frame. Shading is flat colour x procedural
pattern x a fixed directional light, with a little distance fog for depth cues.
"""

from __future__ import annotations

import numpy as np

from .scene import Scene

SUPERSAMPLE = 3  # rays per pixel side (anti-aliasing, so frames are not harder than the scene)
LIGHT = np.array([0.35, -0.8, 0.45]) / np.linalg.norm([0.35, -0.8, 0.45])  # towards the light (y is down)
FOG_COLOR = np.array([0.75, 0.78, 0.82])
FOG_DISTANCE = 18.0  # metres for a 1/e fog blend
_BIG = 1e9


def _room(scene: Scene, o: np.ndarray, d: np.ndarray):
    """Exit distance through the room's faces, the face index (FACES order) and the hit point."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_hi = np.where(d > 0, (scene.hi - o) / d, _BIG)
        t_lo = np.where(d < 0, (scene.lo - o) / d, _BIG)
    t_hi = np.where(t_hi > 1e-6, t_hi, _BIG)  # a camera outside a face ignores it rather than seeing behind
    t_lo = np.where(t_lo > 1e-6, t_lo, _BIG)
    tt = np.stack([t_lo[:, 0], t_hi[:, 0], t_lo[:, 1], t_hi[:, 1], t_lo[:, 2], t_hi[:, 2]], axis=1)
    face = np.argmin(tt, axis=1)
    return tt[np.arange(len(face)), face], face


def _face_shade(scene: Scene, p: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Pattern x colour x light of room faces at hit points p."""
    axis = face // 2
    uv_axes = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # the two in-plane coordinates
    u = np.take_along_axis(p, uv_axes[:, :1], 1)[:, 0]
    v = np.take_along_axis(p, uv_axes[:, 1:], 1)[:, 0]
    per = scene.face_period[face]
    iu, iv = np.floor(u / per), np.floor(v / per)
    pat = scene.face_pattern[face]
    dark = np.select([pat == 0, pat == 1, pat == 2], [(iu + iv) % 2, iu % 2, iv % 2], 0.0)
    normal = np.zeros_like(p)
    normal[np.arange(len(face)), axis] = np.where(face % 2 == 0, 1.0, -1.0)  # pointing into the room
    light = 0.6 + 0.4 * np.clip(normal @ LIGHT, 0.0, 1.0)
    return scene.face_color[face] * (1.0 - 0.35 * dark)[:, None] * light[:, None]


def _sky(d: np.ndarray) -> np.ndarray:
    up = np.clip(-d[:, 1], 0.0, 1.0)[:, None]  # -y is up
    return (1 - up) * np.array([0.85, 0.9, 0.98]) + up * np.array([0.3, 0.5, 0.9])


def _boxes(scene: Scene, o, d, t_best, color, normal):
    # slab test per axis on 1-D columns (reductions over a length-3 axis are slow in numpy)
    with np.errstate(divide="ignore"):
        inv = [np.where(d[:, a] != 0, 1.0 / d[:, a], _BIG) for a in range(3)]
    for lo, hi, col in zip(scene.box_lo, scene.box_hi, scene.box_color):
        t1 = [(lo[a] - o[:, a]) * inv[a] for a in range(3)]
        t2 = [(hi[a] - o[:, a]) * inv[a] for a in range(3)]
        tmin = [np.minimum(t1[a], t2[a]) for a in range(3)]
        near = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
        far = np.minimum(np.minimum(np.maximum(t1[0], t2[0]), np.maximum(t1[1], t2[1])), np.maximum(t1[2], t2[2]))
        hit = (near <= far) & (near > 1e-6) & (near < t_best)
        if hit.any():
            ax = np.argmax(np.stack([tmin[a][hit] for a in range(3)], axis=1), axis=1)
            n = np.zeros((hit.sum(), 3))
            n[np.arange(len(ax)), ax] = -np.sign(d[hit][np.arange(len(ax)), ax])
            t_best[hit], color[hit], normal[hit] = near[hit], col, n


def _spheres(scene: Scene, o, d, t_best, color, normal):
    for c, r, col in zip(scene.sphere_center, scene.sphere_radius, scene.sphere_color):
        oc = o - c
        b = np.einsum("ij,ij->i", oc, d)
        disc = b * b - (np.einsum("ij,ij->i", oc, oc) - r * r)
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        hit = (disc > 0) & (t > 1e-6) & (t < t_best)
        if hit.any():
            p = o[hit] + t[hit, None] * d[hit]
            t_best[hit], color[hit], normal[hit] = t[hit], col, (p - c) / r


def _pillars(scene: Scene, o, d, t_best, color, normal):
    for (x, z), r, col in zip(scene.pillar_xz, scene.pillar_radius, scene.pillar_color):
        ox, oz = o[:, 0] - x, o[:, 2] - z
        a = d[:, 0] ** 2 + d[:, 2] ** 2
        b = ox * d[:, 0] + oz * d[:, 2]
        disc = b * b - a * (ox * ox + oz * oz - r * r)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        hit = (disc > 0) & (a > 1e-12) & (t > 1e-6) & (t < t_best)
        if hit.any():
            p = o[hit] + t[hit, None] * d[hit]
            n = np.stack([p[:, 0] - x, np.zeros(len(p)), p[:, 2] - z], axis=1) / r
            band = (np.floor(p[:, 1] / 0.5) % 2)[:, None]  # horizontal bands show vertical motion
            t_best[hit], color[hit], normal[hit] = t[hit], col * (1 - 0.25 * band), n


def render_rays(scene: Scene, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] for rays (N, 3) origins / unit directions."""
    t_room, face = _room(scene, o, d)
    p = o + t_room[:, None] * d
    rgb = _face_shade(scene, p, face)
    if scene.sky:
        up = face == 2
        rgb[up] = _sky(d[up])
        t_room = np.where(up, _BIG, t_room)
    t_best = t_room.copy()
    color = np.zeros_like(rgb)
    normal = np.zeros_like(rgb)
    _boxes(scene, o, d, t_best, color, normal)
    _spheres(scene, o, d, t_best, color, normal)
    _pillars(scene, o, d, t_best, color, normal)
    obj = t_best < t_room
    rgb[obj] = color[obj] * (0.45 + 0.55 * np.clip(normal[obj] @ LIGHT, 0.0, 1.0))[:, None]
    fog = np.exp(-np.minimum(t_best, 1e3) / FOG_DISTANCE)[:, None]
    return np.clip(rgb * fog + FOG_COLOR * (1 - fog), 0.0, 1.0)


def render(scene: Scene, c2w: np.ndarray, intrinsics, hw: tuple[int, int]) -> np.ndarray:
    """Frames (F, H, W, 3) uint8 for c2w (F, 4, 4) and intrinsics (4,) or (F, 4) [fx, fy, cx, cy] in pixels
    of an H x W image (pixel centres at +0.5)."""
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    H, W = hw
    k = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64).reshape(-1, 4), (len(c2w), 4))
    s = SUPERSAMPLE
    off = (np.arange(s) + 0.5) / s
    ys = (np.arange(H)[:, None] + off[None]).reshape(-1)  # (H*s,)
    xs = (np.arange(W)[:, None] + off[None]).reshape(-1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    out = np.empty((len(c2w), H, W, 3), dtype=np.uint8)
    for f in range(len(c2w)):
        fx, fy, cx, cy = k[f]
        dc = np.stack([(xx - cx) / fx, (yy - cy) / fy, np.ones_like(xx)], axis=-1).reshape(-1, 3)
        d = dc @ c2w[f, :3, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.broadcast_to(c2w[f, :3, 3], d.shape)
        rgb = render_rays(scene, o, d).reshape(H, s, W, s, 3).mean(axis=(1, 3))
        out[f] = np.round(rgb * 255.0).astype(np.uint8)
    return out
