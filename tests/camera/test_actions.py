"""Action DSL vs diffusers' action_string_to_c2w."""

import numpy as np
import pytest

from sanawm.camera import CameraPath, action_path, action_to_c2w, parse_actions

cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")

STRINGS = [
    "w-80,dw-40,w-40",
    "w-20,jw-30,lw-30",  # yaw both ways while moving
    "i-30,k-10,ik-5,aw-10",  # pitch, then both pitch keys at once (cancel)
    "s-5, d-7 ,A-3,none-4",  # spaces, upper case, 'none'
    "wasd-6,jl-3",  # opposing keys cancel
    "i-100,w-10",  # 120° of pitch requested: frames past the 85° limit must be refused
    "k-90,l-20,w-20",  # look down past the limit, then turn and walk (heading ignores pitch)
    "w-3，d-3",  # full-width comma
    "wwd-4",  # repeated key = held once
]


@pytest.mark.parametrize("action", STRINGS)
def test_matches_diffusers(action):
    ours = action_to_c2w(action)
    ref = cam_utils.action_string_to_c2w(action)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    # diffusers rolls out in float64 and rounds to float32; ours keeps float64. Same values after rounding.
    np.testing.assert_array_equal(ours.astype(np.float32), ref)


@pytest.mark.parametrize("speeds", [
    dict(translation_speed=0.025, rotation_speed_deg=0.6),
    dict(translation_speed=0.3, rotation_speed_deg=5.0, pitch_limit_deg=30.0),
])
def test_matches_diffusers_custom_speeds(speeds):
    action = "w-10,il-20,dk-15,i-40"
    ref = cam_utils.action_string_to_c2w(action, **speeds)
    np.testing.assert_array_equal(action_to_c2w(action, **speeds).astype(np.float32), ref)


def test_pitch_limit_is_enforced():
    # 1.2°/frame for 100 frames would be 120°; only 70 frames fit under 85°.
    c2w = action_to_c2w("i-100")
    fwd = c2w[-1, :3, 2]
    pitch = np.degrees(np.arcsin(-fwd[1]))  # looking up = forward gets a −y (up) component
    assert 83.0 < pitch <= 85.0 + 1e-9


def test_rollout_length_and_validity():
    path = action_path("w-8,d-8", [500, 500, 640, 352], image_hw=(704, 1280))
    assert isinstance(path, CameraPath) and len(path) == 17  # one pose per frame + the start pose


@pytest.mark.parametrize("bad,problem", [
    ("", "empty"),
    ("   ", "empty"),
    ("w80", "expected '<keys>-<frames>'"),
    ("w-0", "non-positive duration"),
    ("w-x", "expected '<keys>-<frames>'"),
    ("w-10,,d-3", "expected '<keys>-<frames>'"),
    ("q-10", "unknown keys"),
    ("w--3", "unknown keys"),
])
def test_bad_strings_raise(bad, problem):
    with pytest.raises(ValueError, match=problem):
        parse_actions(bad)
    with pytest.raises(ValueError):  # the oracle rejects them too
        cam_utils.action_string_to_c2w(bad)


def test_parse_counts_frames():
    frames = parse_actions("w-3,none-2,DW-1")
    assert frames == [{"w"}] * 3 + [set()] * 2 + [{"d", "w"}]
