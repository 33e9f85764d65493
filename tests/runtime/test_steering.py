"""The live camera rig and per-chunk camera inputs (numpy only, no bundle)."""

import numpy as np
import pytest

from sanawm.camera import CameraPath, action_to_c2w, prepare_camera
from sanawm.runtime.steering import CameraRig, chunk_camera, chunk_frames, parse_keys

ACTION = "w-10,dw-7,il-5,none-3,ks-4,aj-6"


def _segments(action):
    for seg in action.split(","):
        keys, n = seg.split("-")
        yield ("" if keys == "none" else keys), int(n)


@pytest.mark.parametrize("style", ["current", "diffusers"])
def test_rig_without_easing_is_the_action_language_bit_for_bit(style):
    rig = CameraRig(style=style, easing=False, pitch_limit_deg=85.0)
    poses = [rig.pose]
    for keys, n in _segments(ACTION):
        poses.extend(rig.roll(parse_keys(keys), n))
    np.testing.assert_array_equal(np.stack(poses), action_to_c2w(ACTION, style=style))


def test_easing_ramps_up_while_held_and_coasts_after_release():
    rig = CameraRig(easing=True)
    z = [p[2, 3] for p in rig.roll(parse_keys("w"), 16)]  # one second of W
    steps = np.diff([0.0] + z)
    assert steps[0] > 0 and np.all(np.diff(steps) > 0)  # accelerating
    assert steps[-1] < 0.025  # below the top speed after 1 s (tau 0.45 s)
    coast = np.diff([z[-1]] + [p[2, 3] for p in rig.roll(frozenset(), 16)])
    assert np.all(coast > 0) and np.all(np.diff(coast) < 0)  # still moving, slowing down


def test_pitch_is_clamped_and_mouse_turn_spreads_over_the_chunk():
    rig = CameraRig(easing=False)
    rig.roll(parse_keys("i"), 200)  # 0.6 deg per frame would reach 120 deg
    assert abs(np.degrees(rig.pitch)) <= 60.0 + 1e-9
    rig = CameraRig(easing=False)
    poses = rig.roll(frozenset(), 24, mouse_deg=(12.0, 0.0))
    yaw = np.degrees(np.arctan2(poses[:, 0, 2], poses[:, 2, 2]))
    np.testing.assert_allclose(np.diff(np.concatenate([[0.0], yaw])), 0.5, atol=1e-9)


def test_rig_state_round_trips_through_json():
    import json

    rig = CameraRig()
    rig.roll(parse_keys("wd"), 13, (3.0, -2.0))
    twin = CameraRig.from_state_dict(json.loads(json.dumps(rig.state_dict())))
    np.testing.assert_array_equal(rig.roll(parse_keys("wi"), 9), twin.roll(parse_keys("wi"), 9))


def test_follow_appends_a_relative_segment():
    rig = CameraRig()
    rig.roll(parse_keys("w"), 5)
    start = rig.pose
    seg = action_to_c2w("l-24")[1:]
    out = rig.follow(seg)
    np.testing.assert_allclose(out, start @ seg)
    np.testing.assert_allclose(rig.pose, out[-1])


def test_bad_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown keys \['q'\]"):
        parse_keys("wq")
    with pytest.raises(ValueError, match="keys must be"):
        parse_keys(3)


def test_chunk_camera_equals_prepare_camera_slices():
    rig = CameraRig()
    poses = [rig.pose]
    for keys in ("w", "wd", "il", "s"):
        poses.extend(rig.roll(parse_keys(keys), 24))
    c2w = np.stack(poses)  # 97 frames = latent frames 0..12: chunks [0,4) [4,7) [7,10) [10,13)
    image_hw, latent_hw = (128, 192), (4, 6)
    K = [160.0, 160.0, 96.0, 64.0]
    full = prepare_camera(CameraPath(c2w, K, image_hw=image_hw), latent_hw=latent_hw, image_hw=image_hw)
    for s, e in ((0, 4), (4, 7), (7, 10), (10, 13)):
        assert chunk_frames(s, e) == 24
        cond, pl = chunk_camera(c2w[: 8 * (e - 1) + 1], K, s, e, latent_hw, image_hw)
        np.testing.assert_array_equal(cond, full.camera_conditions[s:e])
        np.testing.assert_array_equal(pl, full.chunk_plucker[:, s:e])
    with pytest.raises(ValueError, match="need 97 poses"):
        chunk_camera(c2w[:90], K, 10, 13, latent_hw, image_hw)
