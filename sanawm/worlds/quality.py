"""Quality of a world-model bundle against ray-traced ground truth (run side: numpy + the runtime).

Per held-out (scene, path) pair: PSNR / SSIM of the generated frames vs the truth, per frame and per second;
the repeat-the-first-frame baseline; and the camera-following score: PSNR with the true path minus PSNR of
the same scene generated along a wrong path (yaw mirrored; no motion), both against the true path's truth.
A model that ignores the camera scores ~0; one that follows it scores clearly above.
"""

from __future__ import annotations

import numpy as np

from ..camera import prepare_camera
from .data import render_clip
from .metrics import FPS, per_second, psnr_frames, ssim_frames
from .paths import FRAME_HW, LATENT_HW, mirror_yaw, still, world_path

WRONG_PATHS = {"mirrored_yaw": mirror_yaw, "no_motion": still}


def camera_inputs(action: str, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(camera_conditions, chunk_plucker) of an action path at the world model's sizes."""
    cam = prepare_camera(world_path(action, num_frames), num_frames, latent_hw=LATENT_HW, image_hw=FRAME_HW)
    return cam.camera_conditions, cam.chunk_plucker


def run_session(runtime, first_frame: np.ndarray, prompt, camera, num_frames: int, noise_seed: int = 0) -> np.ndarray:
    """All generated frames (F - 1, H, W, 3) uint8 of one session (public runtime entry points only)."""
    session = runtime.start(first_frame, prompt, camera, seed=noise_seed, num_frames=num_frames)
    return np.concatenate([c.frames for c in session], axis=0)


def evaluate_pair(generate, seed: int, action: str, num_frames: int, wrong: bool = True) -> dict:
    """Metrics of one (scene, path) pair. ``generate(first_frame, camera) -> frames`` runs the model (a bundle
    through ``run_session`` or the torch reference)."""
    clip = render_clip(seed, action, num_frames)
    truth = clip.frames[1:]
    gen = generate(clip.frames[0], (clip.camera, clip.plucker))
    p, s = psnr_frames(gen, truth), ssim_frames(gen, truth)
    base = psnr_frames(np.broadcast_to(clip.frames[0], truth.shape), truth)
    out = {
        "scene_seed": int(seed), "action": action, "frames": int(len(truth)),
        "psnr_per_second": per_second(p), "ssim_per_second": per_second(s),
        "repeat_first_psnr_per_second": per_second(base),
        "psnr_frames": [round(float(v), 3) for v in p],
    }
    if wrong:
        for name, fn in WRONG_PATHS.items():
            act = fn(action)
            if act == action:  # e.g. a path without yaw has no mirrored-yaw variant
                continue
            g2 = generate(clip.frames[0], camera_inputs(act, num_frames))
            out[f"{name}_psnr_per_second"] = per_second(psnr_frames(g2, truth))
    out["_gen"] = gen
    return out


def first_seconds(values: list[float], seconds: float) -> float:
    """Mean of per-second values over the first ``seconds`` (whole seconds)."""
    n = max(1, int(round(seconds)))
    return float(np.mean(values[:n]))


def summarize(pairs: list[dict], seconds: float = 3.0) -> dict:
    """Means over pairs of the first ``seconds``: PSNR, SSIM, baseline, gain over baseline, camera-following."""
    g = [first_seconds(r["psnr_per_second"], seconds) for r in pairs]
    b = [first_seconds(r["repeat_first_psnr_per_second"], seconds) for r in pairs]
    out = {
        "pairs": len(pairs), "seconds": seconds,
        "psnr_db": float(np.mean(g)),
        "ssim": float(np.mean([first_seconds(r["ssim_per_second"], seconds) for r in pairs])),
        "repeat_first_psnr_db": float(np.mean(b)),
        "gain_over_repeat_first_db": float(np.mean(np.array(g) - np.array(b))),
    }
    scores = []
    for name in WRONG_PATHS:
        d = [first_seconds(r["psnr_per_second"], seconds) - first_seconds(r[f"{name}_psnr_per_second"], seconds)
             for r in pairs if f"{name}_psnr_per_second" in r]
        if d:
            out[f"camera_following_{name}_db"] = float(np.mean(d))
            out[f"camera_following_{name}_pairs"] = len(d)
            scores.append(float(np.mean(d)))
    if scores:  # the headline score: the mean over both kinds of wrong path
        out["camera_following_db"] = float(np.mean(scores))
    return out


def per_second_mean(pairs: list[dict], key: str = "psnr_per_second") -> list[float]:
    """Mean over pairs of a per-second series (pairs of equal length)."""
    n = min(len(r[key]) for r in pairs)
    return [float(np.mean([r[key][i] for r in pairs])) for i in range(n)]


__all__ = ["FPS", "WRONG_PATHS", "camera_inputs", "evaluate_pair", "first_seconds", "per_second_mean", "run_session",
           "summarize"]
