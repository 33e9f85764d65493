"""Presets: valid paths of the requested length that move the way their names say."""

import numpy as np
import pytest

from sanawm.camera import PRESETS, CameraPath, prepare_camera, preset_c2w, preset_path


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("n", [1, 2, 25, 121])
def test_valid_and_length(name, n):
    p = preset_path(name, n, [500.0, 500.0, 640.0, 352.0], image_hw=(704, 1280), fps=16)
    assert isinstance(p, CameraPath) and len(p) == n  # CameraPath validated rotations / last row
    np.testing.assert_allclose(p.c2w[0], np.eye(4), atol=1e-15)


def _end(name, **kw):
    return preset_c2w(name, 41, **kw)[-1]


def test_directions():
    # Translations (OpenCV: +x right, +y down, +z forward).
    np.testing.assert_allclose(_end("dolly_in")[:3, 3], [0, 0, 2.0])
    np.testing.assert_allclose(_end("dolly_out", step=0.1)[:3, 3], [0, 0, -4.0])
    np.testing.assert_allclose(_end("crane_up")[:3, 3], [0, -2.0, 0])
    np.testing.assert_allclose(_end("truck_right")[:3, 3], [2.0, 0, 0])
    # Pans and tilts rotate in place; forward (third column) turns the right way.
    assert _end("pan_left")[0, 2] < 0 < _end("pan_right")[0, 2]
    assert _end("tilt_up")[1, 2] < 0 < _end("tilt_down")[1, 2]
    assert np.allclose(_end("pan_left")[:3, 3], 0) and np.allclose(_end("tilt_up")[:3, 3], 0)
    np.testing.assert_allclose(np.degrees(np.arctan2(-_end("pan_left")[0, 2], _end("pan_left")[2, 2])), 20.0)


@pytest.mark.parametrize("name", ["orbit_left", "orbit_right"])
def test_orbit_keeps_looking_at_target(name):
    c2w = preset_c2w(name, 60, radius=3.0, degrees_per_frame=2.0)
    target = np.array([0.0, 0.0, 3.0])
    to_target = target - c2w[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(to_target, axis=1), 3.0)
    np.testing.assert_allclose(to_target / 3.0, c2w[:, :3, 2], atol=1e-12)  # optical axis through the target
    np.testing.assert_allclose(c2w[:, 1, 3], 0.0)  # stays level
    assert np.sign(c2w[10, 0, 3]) == (-1 if name == "orbit_left" else 1)


def test_preset_feeds_prepare_camera():
    cond, pl = prepare_camera(preset_path("orbit", 25, [500.0, 500.0, 640.0, 352.0], image_hw=(704, 1280)))
    assert cond.shape == (4, 20) and pl.shape == (48, 4, 22, 40) and np.all(np.isfinite(pl))


@pytest.mark.parametrize("args,problem", [
    (("zoom", 10), "unknown camera preset"),
    (("orbit", 0), "positive int"),
    (("orbit", 2.5), "positive int"),
])
def test_bad_preset_args(args, problem):
    with pytest.raises(ValueError, match=problem):
        preset_c2w(*args)
    with pytest.raises(ValueError, match="radius"):
        preset_c2w("orbit", 5, radius=0)
