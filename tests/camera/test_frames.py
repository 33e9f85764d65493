"""Frame-count snapping vs diffusers' snap_num_frames and the pipeline's trimming."""

import numpy as np
import pytest

from sanawm.camera import CameraPath, fit_num_frames, num_latent_frames, snap_num_frames, snap_streaming_num_frames

cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")


@pytest.mark.parametrize("stride", [8, 24])
def test_snap_matches_diffusers(stride):
    for n in range(1, 400):
        for ub in (None, n, n + 1, n + stride // 2, 1000):
            assert snap_num_frames(n, stride, upper_bound=ub) == cam_utils.snap_num_frames(n, stride, upper_bound=ub)


def test_streaming_layout():
    assert snap_streaming_num_frames(241) == 241 and num_latent_frames(241) == 31
    assert snap_streaming_num_frames(961) == 961 and num_latent_frames(961) == 121
    for n in range(25, 500):
        f = snap_streaming_num_frames(n, upper_bound=n)
        assert (f - 1) % 24 == 0 and f <= n and num_latent_frames(f) % 3 == 1
    with pytest.raises(ValueError, match="streaming needs at least 25 frames"):
        snap_streaming_num_frames(12)


def test_bad_counts_raise():
    with pytest.raises(ValueError, match=">= 1"):
        snap_num_frames(0)
    with pytest.raises(ValueError, match="not 8k \\+ 1"):
        num_latent_frames(10)


@pytest.mark.parametrize("F,asked", [(100, 100), (100, 97), (100, 200), (20, 15), (7, 7), (9, 4)])
def test_fit_matches_pipeline_trim(F, asked):
    sana = pytest.importorskip("diffusers.pipelines.sana_wm.pipeline_sana_wm")

    class Stub:
        vae_temporal_compression_ratio = 8

    c2w = np.tile(np.eye(4), (F, 1, 1))
    c2w[:, 0, 3] = np.arange(F)  # frame index in x so the trimmed prefix is checkable
    ref_c2w, _ = sana.SanaWMPipeline.prepare_camera_trajectory(Stub(), c2w, None, [1.0, 1.0, 0.5, 0.5], asked)
    fitted = fit_num_frames(CameraPath(c2w, [1.0, 1.0, 0.5, 0.5]), asked)
    np.testing.assert_array_equal(fitted.c2w, ref_c2w)
