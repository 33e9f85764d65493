"""prepare_camera vs diffusers' prepare_camera (the oracle), plus geometric properties."""

import numpy as np
import pytest

from sanawm.camera import CameraPath, num_latent_frames, plucker_maps, prepare_camera, relative_poses

from camera_testutils import random_c2w, random_intrinsics

cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")

REL_TOL = 1e-5


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours − ref| / max |ref| (element-wise ratios blow up where the reference is ~0).

    An all-zero reference (e.g. the moments of a single-frame path) demands an exact zero."""
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    return float(err / scale) if scale > 0 else (0.0 if err == 0 else float("inf"))


def oracle(c2w, intr, latent_hw, image_hw=None):
    h, w = latent_hw
    image_hw = image_hw or (h * 32, w * 32)
    assert (image_hw[0] // 32, image_hw[1] // 32) == (h, w)  # diffusers derives the latent grid this way
    out = cam_utils.prepare_camera(
        c2w.astype(np.float32), intr.astype(np.float32), target_size=image_hw, vae_stride=(8, 32, 32)
    )
    return out["raymap"].numpy(), out["chunk_plucker"].numpy()


CASES = [
    # (num_frames, latent_hw, per-frame intrinsics)
    (1, (3, 5), False),  # a single frame: the Plücker window is frame 0 repeated 8 times
    (9, (3, 5), True),
    (17, (4, 7), False),
    (33, (2, 3), True),
    (17, (22, 40), True),  # the model's latent grid
    (25, (22, 40), False),
]


@pytest.mark.parametrize("num_frames,latent_hw,per_frame", CASES)
@pytest.mark.parametrize("trial", range(2))
def test_matches_diffusers(rng, num_frames, latent_hw, per_frame, trial):
    image_hw = (latent_hw[0] * 32, latent_hw[1] * 32)
    c2w = random_c2w(rng, num_frames)
    intr = random_intrinsics(rng, num_frames, image_hw, per_frame=per_frame)
    cond, pl = prepare_camera(CameraPath(c2w, intr, image_hw=image_hw), num_frames, latent_hw, image_hw)
    ref_cond, ref_pl = oracle(c2w, intr, latent_hw)
    T = (num_frames - 1) // 8 + 1
    assert cond.shape == ref_cond.shape == (T, 20) and cond.dtype == np.float32
    assert pl.shape == ref_pl.shape == (48, T) + tuple(latent_hw) and pl.dtype == np.float32
    assert rel_err(cond, ref_cond) <= REL_TOL
    assert rel_err(pl, ref_pl) <= REL_TOL
    # The moments carry the translation; check them on their own so a tiny error cannot hide behind |d| = 1.
    moments = np.concatenate([pl[6 * j + 3: 6 * j + 6] for j in range(8)])
    ref_moments = np.concatenate([ref_pl[6 * j + 3: 6 * j + 6] for j in range(8)])
    assert rel_err(moments, ref_moments) <= REL_TOL


def test_uses_a_prefix_of_a_longer_path(rng):
    """num_frames < len(path) must equal the oracle on the truncated trajectory."""
    c2w = random_c2w(rng, 30)
    intr = random_intrinsics(rng, 30, (96, 160), per_frame=True)
    cond, pl = prepare_camera(CameraPath(c2w, intr, image_hw=(96, 160)), 17, (3, 5), (96, 160))
    ref_cond, ref_pl = oracle(c2w[:17], intr[:17], (3, 5))
    assert rel_err(cond, ref_cond) <= REL_TOL and rel_err(pl, ref_pl) <= REL_TOL


def test_image_size_not_a_multiple_of_32(rng):
    """x and y intrinsics scale by different ratios (3/100 vs 5/170): catches a swapped axis."""
    c2w = random_c2w(rng, 9)
    intr = random_intrinsics(rng, 9, (100, 170), per_frame=True)
    cond, pl = prepare_camera(CameraPath(c2w, intr, image_hw=(100, 170)), 9, (3, 5), (100, 170))
    ref_cond, ref_pl = oracle(c2w, intr, (3, 5), (100, 170))
    assert rel_err(cond, ref_cond) <= REL_TOL and rel_err(pl, ref_pl) <= REL_TOL


def test_geometry_properties(rng):
    """Independent of the oracle: frame 0 is the identity, rays are unit, moments ⟂ rays, world-frame invariance."""
    c2w = random_c2w(rng, 17)
    path = CameraPath(c2w, random_intrinsics(rng, 17, (128, 224), per_frame=False), image_hw=(128, 224))
    cond, pl = prepare_camera(path, latent_hw=(4, 7), image_hw=(128, 224))
    np.testing.assert_allclose(cond[0, :16], np.eye(4).ravel(), atol=1e-7)
    d = pl.reshape(8, 6, *pl.shape[1:])[:, :3]
    m = pl.reshape(8, 6, *pl.shape[1:])[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(d * m, axis=1), 0.0, atol=1e-5)
    # Moving the whole trajectory by a rigid transform must not change relative inputs.
    G = random_c2w(rng, 1)[0]
    cond2, pl2 = prepare_camera(CameraPath(G @ c2w, path.intrinsics, image_hw=(128, 224)), None, (4, 7), (128, 224))
    assert rel_err(cond2, cond) <= 1e-5 and rel_err(pl2, pl) <= 1e-5


def test_plucker_center_ray_is_optical_axis():
    """A pixel at the principal point looks along the camera's +z (third rotation column)."""
    R = random_c2w(np.random.default_rng(0), 1)
    k = np.array([[10.0, 12.0, 2.0, 1.0]])  # principal point at pixel (u=2, v=1)
    maps = plucker_maps(R, k, (3, 5))
    np.testing.assert_allclose(maps[0, :3, 1, 2], R[0, :3, 2], atol=1e-12)
    np.testing.assert_allclose(maps[0, 3:, 1, 2], np.cross(R[0, :3, 3], R[0, :3, 2]), atol=1e-12)


def test_relative_poses_frame0_identity(rng):
    c2w = random_c2w(rng, 5)
    rel = relative_poses(c2w)
    np.testing.assert_array_equal(rel[0], np.eye(4))
    np.testing.assert_allclose(c2w[0] @ rel, c2w, atol=1e-12)


@pytest.mark.parametrize("n", [2, 8, 10, 16])
def test_rejects_unaligned_num_frames(n):
    path = CameraPath(np.tile(np.eye(4), (20, 1, 1)), [100, 100, 80, 48], image_hw=(96, 160))
    with pytest.raises(ValueError, match=r"not 8k \+ 1.*snap"):
        prepare_camera(path, n, (3, 5), (96, 160))


def test_rejects_too_many_frames_and_wrong_image_size():
    path = CameraPath(np.tile(np.eye(4), (9, 1, 1)), [100, 100, 80, 48], image_hw=(96, 160))
    with pytest.raises(ValueError, match="too few frames"):
        prepare_camera(path, 17, (3, 5), (96, 160))
    with pytest.raises(ValueError, match="cropped_to"):
        prepare_camera(path, 9)  # intrinsics are for 96x160, model frame is 704x1280
    with pytest.raises(ValueError, match="image_hw is unknown"):
        prepare_camera(path.with_image_hw(None), 9, (3, 5), (96, 160))


def test_num_latent_frames():
    assert [num_latent_frames(f) for f in (1, 9, 241, 961)] == [1, 2, 31, 121]
