"""Timewarp homographies, the preview player and the message schema (numpy only, no bundle)."""

import numpy as np
import pytest

from sanawm.camera import action_to_c2w
from sanawm.runtime.steering import CameraRig
from sanawm.serve.player import Player
from sanawm.serve.protocol import ProtocolError, pack_frame, parse_message, unpack_frame
from sanawm.serve.reproject import homography, intrinsics_matrix, reproject, warp

K = intrinsics_matrix([160.0, 160.0, 96.0, 64.0], (128, 192), (128, 192))


def _project(K, c2w, X):
    Xc = (np.linalg.inv(c2w) @ np.c_[X, np.ones(len(X))].T)[:3]
    x = K @ Xc
    return (x[:2] / x[2]).T


def _h(H, x):
    y = H @ np.c_[x, np.ones(len(x))].T
    return (y[:2] / y[2]).T


def test_rotation_homography_is_exact_at_any_depth():
    src = action_to_c2w("w-10")[-1]
    dst = src @ action_to_c2w("di-12")[-1] @ np.diag([1, 1, 1, 1.0])
    dst[:3, 3] = src[:3, 3]  # same centre: pure rotation
    rng = np.random.default_rng(0)
    X = (src @ np.c_[rng.uniform(-1, 1, (50, 2)) * 3, rng.uniform(1, 30, 50), np.ones(50)].T).T[:, :3]  # any depths
    H = homography(K, src, dst)
    np.testing.assert_allclose(_h(H, _project(K, src, X)), _project(K, dst, X), atol=1e-6)


def test_translation_is_exact_on_the_assumed_plane():
    src, dst = np.eye(4), action_to_c2w("wl-20")[-1]
    rng = np.random.default_rng(1)
    X = np.c_[rng.uniform(-1, 1, (50, 2)), np.full(50, 2.0)]  # the plane z = 2 m (PLANE_DEPTH_M)
    np.testing.assert_allclose(_h(homography(K, src, dst, 2.0), _project(K, src, X)), _project(K, dst, X), atol=1e-6)


def test_warp_identity_and_a_moving_dot():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (128, 192, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp(img, np.eye(3)), img)
    np.testing.assert_array_equal(reproject(img, K, np.eye(4), np.eye(4)), img)
    dot = np.zeros((128, 192, 3), np.uint8)
    dot[60:64, 100:104] = 255
    dst = action_to_c2w("d-10")[-1]  # yaw right: the dot moves left in the picture
    H = homography(K, np.eye(4), dst)
    want = _h(H, np.array([[101.5, 61.5]]))[0]
    out = warp(dot, H)[..., 0].astype(float)
    ys, xs = np.nonzero(out > 128)
    assert want[0] < 95 and abs(xs.mean() - want[0]) < 1.0 and abs(ys.mean() - want[1]) < 1.0


def _frames(n, chunk, first, seq, rig):
    poses = rig.roll(frozenset("w"), n)
    imgs = np.zeros((n, 8, 8, 3), np.uint8)
    return imgs, poses, np.stack(rig.trace), chunk, first, seq, {}


def test_player_previews_a_new_key_until_a_chunk_reflects_it():
    rig = CameraRig()
    player = Player(rig.state_dict())
    player.push_chunk(*_frames(24, 0, 1, 0, rig))
    shown = [player.tick() for _ in range(5)]
    assert [s.kind for s in shown] == ["gen"] * 5
    now = player.on_input(frozenset("d"), seq=3)  # a frame at once, from the last shown one
    assert now.kind == "reproj" and now.seq == 3 and now.source is shown[-1].source
    assert not np.allclose(now.pose, shown[-1].pose)
    stale = [player.tick() for _ in range(19)]  # the rest of chunk 0 was generated before the key: warped
    assert all(s.kind == "reproj" and s.seq == 3 for s in stale)
    yaws = [np.arctan2(s.pose[0, 2], s.pose[2, 2]) for s in stale]
    assert np.all(np.diff(yaws) > 0)  # the preview camera keeps turning right
    idle = player.tick()  # nothing queued: the last frame, warped further
    assert idle.kind == "reproj" and idle.source is stale[-1].source
    player.push_chunk(*_frames(24, 1, 25, 3, rig))
    fresh = player.tick()
    assert fresh.kind == "gen" and fresh.seq == 3 and player.preview is None  # the generated chunk takes over
    assert player.tick().kind == "gen"


def test_schema_refusals_name_the_problem():
    assert parse_message('{"op": "keys", "keys": "wd", "seq": 4}', 4096)["keys"] == "wd"
    cases = {'{"op": "keys"}': "needs field 'keys'", '{"op": "start", "fps": 500}': "fps must be in",
             '{"op": "mouse", "dx": true, "dy": 0}': "must be int or float", '{"op": "stop", "x": 1}': "unexpected ['x']",
             '{"op": "start", "scene": "a", "upload": "b"}': "not both", '{"op": "keys", "keys": "w", "seq": -1}': "seq"}
    for text, words in cases.items():
        with pytest.raises(ProtocolError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_message(text, 4096)
    h, j = unpack_frame(pack_frame({"kind": "gen", "seq": 2}, b"\xff\xd8jpeg"))
    assert h == {"kind": "gen", "seq": 2} and j == b"\xff\xd8jpeg"
