"""Rendered clips with their camera inputs: what training and evaluation consume (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..camera import prepare_camera
from .paths import FRAME_HW, LATENT_HW, random_action, world_path
from .render import render
from .scene import EVAL_SEEDS, make_scene


@dataclass(frozen=True)
class Clip:
    seed: int
    action: str
    frames: np.ndarray  # (F, H, W, 3) uint8, frame 0 = the condition frame
    camera: np.ndarray  # (T, 20) float32 camera_conditions
    plucker: np.ndarray  # (48, T, h, w) float32


def render_clip(seed: int, action: str, num_frames: int, *, allow_eval: bool = True) -> Clip:
    """Scene ``seed`` seen along ``action`` for ``num_frames`` (24 k + 1) frames, plus its camera inputs."""
    path = world_path(action, num_frames)
    scene = make_scene(seed, allow_eval=allow_eval)
    frames = render(scene, path.c2w, path.intrinsics, FRAME_HW)
    cam = prepare_camera(path, num_frames, latent_hw=LATENT_HW, image_hw=FRAME_HW)
    return Clip(seed, action, frames, cam.camera_conditions, cam.chunk_plucker)


def training_clip(index: int, num_frames: int, data_seed: int = 0) -> Clip:
    """Training clip ``index``: a scene seed and a random action drawn from (data_seed, index); held-out
    seeds are skipped by construction (scene seeds come from below ``EVAL_SEEDS.start``)."""
    rng = np.random.default_rng([data_seed, index, 0xC11])
    seed = int(rng.integers(0, EVAL_SEEDS.start))
    return render_clip(seed, random_action(rng, num_frames), num_frames, allow_eval=False)


def eval_pairs(n: int) -> list[tuple[int, str]]:
    """The first ``n`` held-out (scene seed, action) pairs: seeds from ``EVAL_SEEDS`` in order, actions
    cycling through ``EVAL_ACTIONS``."""
    from .paths import EVAL_ACTIONS

    if n > len(EVAL_SEEDS):
        raise ValueError(f"only {len(EVAL_SEEDS)} held-out scenes exist; ask for n <= {len(EVAL_SEEDS)}")
    return [(EVAL_SEEDS[i], EVAL_ACTIONS[i % len(EVAL_ACTIONS)]) for i in range(n)]


def to_video_tensor(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float32 in [-1, 1] (the VAE's input range)."""
    return np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32) / 127.5 - 1.0
