"""Synthetic worlds: deterministic scenes, held-out seeds refused for training, a ray caster that agrees with
the camera convention, the action-language paths and the frame metrics."""

import numpy as np
import pytest

from sanawm.camera import action_to_c2w
from sanawm.worlds import EVAL_SEEDS, FRAME_HW, INTRINSICS, make_scene, mirror_yaw, render, still, world_path
from sanawm.worlds.data import eval_pairs, render_clip, training_clip
from sanawm.worlds.metrics import per_second, psnr_frames, ssim_frames
from sanawm.worlds.paths import mirror_action


def test_scenes_are_deterministic_and_differ_by_seed():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    np.testing.assert_array_equal(a.face_color, b.face_color)
    np.testing.assert_array_equal(a.box_lo, b.box_lo)
    assert not np.array_equal(a.face_color, c.face_color)
    f1 = render(a, np.eye(4)[None], INTRINSICS, FRAME_HW)
    np.testing.assert_array_equal(f1, render(b, np.eye(4)[None], INTRINSICS, FRAME_HW))
    assert f1.shape == (1, *FRAME_HW, 3) and f1.dtype == np.uint8
    assert len(np.unique(f1.reshape(-1, 3), axis=0)) > 20  # textured, not a flat fill


def test_heldout_seeds_are_refused_for_training():
    with pytest.raises(ValueError, match="reserved for evaluation"):
        make_scene(EVAL_SEEDS.start, allow_eval=False)
    seeds = {training_clip(i, 25).seed for i in range(3)}
    assert not seeds & set(EVAL_SEEDS)
    assert all(s in EVAL_SEEDS for s, _ in eval_pairs(4))


def test_yaw_right_moves_the_image_left():
    """OpenCV convention: yawing right (action 'd') brings what was right of centre towards the centre, so
    frame k equals frame 0 shifted left, for a pure rotation about the camera centre."""
    scene = make_scene(3)
    c2w = action_to_c2w("d-6", rotation_speed_deg=2.0)
    f = render(scene, c2w[[0, -1]], INTRINSICS, FRAME_HW).astype(np.float64)
    shift = round(INTRINSICS[0] * np.tan(np.radians(12.0)))  # ~7 px at the image centre (fx 32)
    H, W = FRAME_HW
    row, c0, c1, m = slice(H * 5 // 16, H * 11 // 16), W * 5 // 16, W * 10 // 16, W * 5 // 24  # centre band, margin
    err = {s: np.abs(f[1, row, c0:c1] - f[0, row, c0 + s:c1 + s]).mean() for s in range(-m, m + 1)}
    assert min(err, key=err.get) in range(shift - 2, shift + 3)


def test_mirrored_path_renders_the_mirror_image_of_a_mirrored_scene():
    a = "wd-10,l-6,a-8"
    p, q = world_path(a, 25), world_path(mirror_action(a), 25)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(q.c2w, flip @ p.c2w @ flip, atol=1e-12)


def test_wrong_paths():
    assert mirror_yaw("w-10,d-20,a-5") == "w-10,a-20,d-5"
    assert still("w-10,d-20") == "none-30"


def test_clip_camera_inputs_match_the_path():
    clip = render_clip(EVAL_SEEDS.start, "d-48", 49)
    assert clip.frames.shape == (49, *FRAME_HW, 3)
    assert clip.camera.shape == (7, 20) and clip.plucker.shape == (48, 7, 8, 12)
    np.testing.assert_allclose(clip.camera[0, :16].reshape(4, 4), np.eye(4), atol=1e-6)  # relative to frame 0


def test_metrics():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-10, 11, a.shape), 0, 255).astype(np.uint8)
    p = psnr_frames(a, b)
    assert np.all((p > 25) & (p < 35))
    assert np.all(psnr_frames(a, a) == 100.0)
    assert np.allclose(ssim_frames(a, a), 1.0) and np.all(ssim_frames(a, b) < 1.0)
    assert per_second(np.arange(20.0)) == [7.5, 17.5]
    with pytest.raises(ValueError, match="shape"):
        psnr_frames(a, b[:3])
