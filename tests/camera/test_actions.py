"""Action DSL: style="diffusers" vs diffusers' action_string_to_c2w; style="current" (upstream's current
mapping and speeds, no eased inertia) checked on its own and against "diffusers" with keys swapped."""

import numpy as np
import pytest

from sanawm.camera import ACTION_STYLES, CameraPath, action_path, action_to_c2w, parse_actions

try:
    from diffusers.pipelines.sana_wm import cam_utils
except ImportError:  # the "current"-style tests below still run; only the oracle comparisons skip
    cam_utils = None
needs_diffusers = pytest.mark.skipif(cam_utils is None, reason="diffusers (sana_wm cam_utils) not installed")

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


@needs_diffusers
@pytest.mark.parametrize("action", STRINGS)
def test_matches_diffusers(action):
    ours = action_to_c2w(action, style="diffusers")
    ref = cam_utils.action_string_to_c2w(action)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    # diffusers rolls out in float64 and rounds to float32; ours keeps float64. Same values after rounding.
    np.testing.assert_array_equal(ours.astype(np.float32), ref)


@needs_diffusers
@pytest.mark.parametrize("speeds", [
    dict(translation_speed=0.025, rotation_speed_deg=0.6),
    dict(translation_speed=0.3, rotation_speed_deg=5.0, pitch_limit_deg=30.0),
])
def test_matches_diffusers_custom_speeds(speeds):
    action = "w-10,il-20,dk-15,i-40"
    ref = cam_utils.action_string_to_c2w(action, **speeds)
    np.testing.assert_array_equal(action_to_c2w(action, style="diffusers", **speeds).astype(np.float32), ref)


def test_pitch_limit_is_enforced():
    # 1.2°/frame for 100 frames would be 120°; only 70 frames fit under 85°.
    c2w = action_to_c2w("i-100", style="diffusers")
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
    if cam_utils is not None:
        with pytest.raises(ValueError):  # the oracle rejects them too
            cam_utils.action_string_to_c2w(bad)


def test_parse_counts_frames():
    frames = parse_actions("w-3,none-2,DW-1")
    assert frames == [{"w"}] * 3 + [set()] * 2 + [{"d", "w"}]


# --- style="current" (the default): a/d yaw, j/l strafe, 0.025 m and 0.6 deg per frame ---

_SWAP = str.maketrans("adjlADJL", "jladJLAD")  # current <-> diffusers key spelling


def _yaw_deg(R):
    return np.degrees(np.arctan2(R[0, 2], R[2, 2]))  # heading of the camera z axis on the XZ plane


def test_current_is_the_default():
    np.testing.assert_array_equal(action_to_c2w("w-5,a-3,j-4"), action_to_c2w("w-5,a-3,j-4", style="current"))
    assert ACTION_STYLES["current"][:2] == (0.025, 0.6) and ACTION_STYLES["diffusers"][:2] == (0.05, 1.2)


@pytest.mark.parametrize("key,sign", [("a", -1), ("d", 1)])
def test_current_ad_yaws_in_place(key, sign):
    c2w = action_to_c2w(f"{key}-10")
    np.testing.assert_array_equal(c2w[:, :3, 3], 0.0)  # centre stays put
    np.testing.assert_allclose([_yaw_deg(R) for R in c2w[:, :3, :3]], sign * 0.6 * np.arange(11), atol=1e-12)
    np.testing.assert_allclose(c2w[:, :3, 1], [[0.0, 1.0, 0.0]] * 11, atol=1e-15)  # pure yaw: y axis fixed


@pytest.mark.parametrize("key,sign", [("j", -1), ("l", 1)])
def test_current_jl_strafes_along_camera_x(key, sign):
    c2w = action_to_c2w(f"d-25,{key}-8")  # yaw 15 deg first so camera x is not the world x axis
    R0 = c2w[25, :3, :3]
    for k in range(26, 34):
        np.testing.assert_array_equal(c2w[k, :3, :3], R0)  # rotation unchanged
    step = np.diff(c2w[25:, :3, 3], axis=0)
    np.testing.assert_allclose(step, np.tile(sign * 0.025 * R0[:, 0], (8, 1)), atol=1e-15)


def test_current_speeds():
    c2w = action_to_c2w("w-40")
    np.testing.assert_allclose(c2w[:, :3, 3], np.outer(0.025 * np.arange(41), [0, 0, 1]), atol=1e-15)
    c2w = action_to_c2w("i-10")  # pitch keys are the same in both styles, 0.6 deg per frame here
    pitch = np.degrees(np.arcsin(-c2w[-1, 1, 2]))
    assert pitch == pytest.approx(6.0, abs=1e-9)


def test_explicit_speeds_override_style_defaults():
    a = action_to_c2w("w-7,d-5,l-3", style="current", translation_speed=0.05, rotation_speed_deg=1.2)
    b = action_to_c2w("w-7,l-5,d-3", style="diffusers")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("action", STRINGS + ["aw-20,jk-10,dli-15,none-2"])
def test_current_is_diffusers_with_keys_swapped_and_speeds_scaled(action):
    ours = action_to_c2w(action, style="current")
    ref = action_to_c2w(action.translate(_SWAP), style="diffusers", translation_speed=0.025,
                        rotation_speed_deg=0.6)
    np.testing.assert_array_equal(ours, ref)
    if cam_utils is None:
        return
    # and so to diffusers itself, with the swapped string and current speeds
    oracle = cam_utils.action_string_to_c2w(action.translate(_SWAP), translation_speed=0.025,
                                            rotation_speed_deg=0.6)
    np.testing.assert_array_equal(ours.astype(np.float32), oracle)


def test_unknown_style_raises():
    with pytest.raises(ValueError, match="unknown action style"):
        action_to_c2w("w-3", style="legacy")
