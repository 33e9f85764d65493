"""Synthetic 3-D worlds with ground truth: seeded scenes, a numpy ray caster, camera paths in the project's
action language, and (build side, torch) the tiny world model's training and evaluation.

Run side modules (``scene``, ``render``, ``paths``, ``data``, ``metrics``) never import torch.
"""

from .data import Clip, eval_pairs, render_clip, training_clip
from .paths import EVAL_ACTIONS, FRAME_HW, INTRINSICS, LATENT_HW, mirror_yaw, still, world_path
from .render import render
from .scene import EVAL_SEEDS, Scene, make_scene

__all__ = ["Clip", "EVAL_ACTIONS", "EVAL_SEEDS", "FRAME_HW", "INTRINSICS", "LATENT_HW", "Scene", "eval_pairs",
           "make_scene", "mirror_yaw", "render", "render_clip", "still", "training_clip", "world_path"]
