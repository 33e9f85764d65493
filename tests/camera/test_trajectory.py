"""CameraPath validation: every malformed input raises ValueError naming the problem (and a fix)."""

import numpy as np
import pytest

from camera_testutils import random_c2w
from sanawm.camera import CameraPath, orthonormalize

K4 = np.array([500.0, 510.0, 320.0, 240.0])


def good(n=9):
    return random_c2w(np.random.default_rng(7), n)


def _set(a, idx, v):
    a = a.copy()
    a[idx] = v
    return a


def _scaled(c2w):
    out = c2w.copy()
    out[4, :3, :3] *= 1.01  # 1 % scale: not a rotation
    return out


def _sheared(c2w):
    out = c2w.copy()
    out[2, 0, 1] += 0.05
    return out


def _reflected(c2w):
    return c2w @ np.diag([1.0, 1.0, -1.0, 1.0])  # orthonormal but det −1


BAD_POSES = [
    (lambda p: _set(p, (3, 0, 3), np.nan), "NaN or inf.*frame 3"),
    (lambda p: _set(p, (5, 1, 1), np.inf), "NaN or inf.*frame 5"),
    (lambda p: p[:, :3, :3], r"shape \(F, 4, 4\)"),
    (lambda p: p[0], r"shape \(F, 4, 4\).*c2w\[None\]"),
    (lambda p: p.reshape(-1, 16), r"shape \(F, 4, 4\)"),
    (lambda p: p[:0], "too few frames"),
    (_scaled, "not orthonormal at frame 4"),
    (_sheared, "not orthonormal at frame 2"),
    (_reflected, "not a rotation at frame 0.*det"),
    (lambda p: _set(p, (6, 3, 0), 0.5), "last row must be .0, 0, 0, 1.*frame 6"),
    (lambda p: _set(p, (1, 3, 3), 2.0), "last row must be"),
]


@pytest.mark.parametrize("make,problem", BAD_POSES)
def test_bad_poses_raise(make, problem):
    with pytest.raises(ValueError, match=problem) as e:
        CameraPath(make(good()), K4)
    assert "fix" in str(e.value)


BAD_INTRINSICS = [
    ([0.0, 500.0, 320.0, 240.0], "non-positive focal length at frame 0"),
    (np.tile([500.0, -1.0, 320.0, 240.0], (9, 1)), "non-positive focal length"),
    (_set(np.tile(K4, (9, 1)), (4, 2), np.nan), "NaN or inf.*frame 4"),
    (np.tile(K4, (8, 1)), "8 frames but c2w has 9"),
    (np.tile(K4, (10, 1)), "10 frames but c2w has 9"),
    ([500.0, 500.0, 320.0], r"\(4,\) \[fx, fy, cx, cy\]"),
    (np.ones((9, 2, 2)), r"\(4,\) \[fx, fy, cx, cy\]"),
    (np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 2]]), r"last row must be \[0, 0, 1\]"),
    (np.array([[500.0, 20, 320], [0, 500, 240], [0, 0, 1]]), "skew"),
    (np.array([[-500.0, 0, 320], [0, 500, 240], [0, 0, 1]]), "non-positive focal"),
]


@pytest.mark.parametrize("intr,problem", BAD_INTRINSICS)
def test_bad_intrinsics_raise(intr, problem):
    with pytest.raises(ValueError, match=problem) as e:
        CameraPath(good(), intr)
    assert "fix" in str(e.value)


@pytest.mark.parametrize("kw,problem", [
    (dict(image_hw=(0, 640)), "image_hw"),
    (dict(image_hw=(480.5, 640)), "image_hw"),
    (dict(image_hw=480), "image_hw"),
    (dict(fps=0), "fps"),
    (dict(fps=float("nan")), "fps"),
])
def test_bad_metadata_raise(kw, problem):
    with pytest.raises(ValueError, match=problem):
        CameraPath(good(), K4, **kw)


def test_intrinsics_layouts_agree_with_diffusers():
    """(4,), (3, 3), (F, 4), (F, 3, 3) all normalise to the same (F, 4) as the diffusers pipeline does."""
    sana = pytest.importorskip("diffusers.pipelines.sana_wm.pipeline_sana_wm")

    class Stub:  # prepare_camera_trajectory only reads this attribute
        vae_temporal_compression_ratio = 8

    c2w = good(9)
    K = np.array([[K4[0], 0, K4[2]], [0, K4[1], K4[3]], [0, 0, 1]])
    per_frame = K4 * np.linspace(1, 1.2, 9)[:, None]
    Ks = np.zeros((9, 3, 3))
    Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = per_frame.T.tolist() + [1.0]
    for intr in (K4, list(K4), K, per_frame, Ks):
        _, ref = sana.SanaWMPipeline.prepare_camera_trajectory(Stub(), c2w, None, intr, 9)
        np.testing.assert_allclose(CameraPath(c2w, intr).intrinsics, ref, rtol=1e-6)


def test_accepts_3x4_and_tolerates_float32_noise():
    c2w = good()
    p = CameraPath(c2w[:, :3, :].astype(np.float32), K4)
    assert p.c2w.shape == (9, 4, 4) and p.c2w.dtype == np.float64
    np.testing.assert_array_equal(p.c2w[:, 3], np.tile([0, 0, 0, 1.0], (9, 1)))


def test_arrays_are_read_only_copies():
    c2w = good()
    p = CameraPath(c2w, K4)
    c2w[0, 0, 3] = 99.0  # caller's array changes later: the path must not
    assert p.c2w[0, 0, 3] != 99.0
    with pytest.raises(ValueError):
        p.c2w[0, 0, 0] = 1.0


def test_orthonormalize_repairs_drift():
    noisy = good() + np.random.default_rng(1).normal(0, 1e-3, (9, 4, 4)) * np.r_[1, 1, 1, 0][:, None]
    noisy[:, 3] = [0, 0, 0, 1]
    with pytest.raises(ValueError, match="orthonormalize"):
        CameraPath(noisy, K4)
    fixed = CameraPath(orthonormalize(noisy), K4)
    np.testing.assert_allclose(fixed.c2w, noisy, atol=1e-2)


def test_trim_relative_and_crop():
    p = CameraPath(good(), K4, image_hw=(480, 640), fps=16)
    assert len(p.trim(5)) == 5 and p.trim(5).fps == 16
    with pytest.raises(ValueError, match="too few frames"):
        p.trim(10)
    rel = p.relative_to_first()
    np.testing.assert_array_equal(rel.c2w[0], np.eye(4))
    np.testing.assert_allclose(p.c2w[0] @ rel.c2w, p.c2w, atol=1e-12)
    assert p.cropped_to((704, 1280)).image_hw == (704, 1280)
    with pytest.raises(ValueError, match="image_hw is unknown"):
        p.with_image_hw(None).cropped_to((704, 1280))
