"""LiveSession on the tiny bundle (ONNX Runtime CPU): latest state wins, replay, fork, snapshot / restore."""

import numpy as np
import pytest

from sanawm.runtime import PromptEmbeddings
from sanawm.runtime.live import LiveSession

pytestmark = pytest.mark.slow  # needs the exported tiny bundle


@pytest.fixture(scope="module")
def inputs(runtime):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, runtime.image_hw + (3,), dtype=np.uint8)
    return image, PromptEmbeddings.zeros(runtime.cfg)


def _drive(live, plan):
    out = []
    for keys in plan:
        live.set_keys(keys)
        out.append(live.step())
    return out


def test_latest_state_wins_and_is_logged(runtime, inputs):
    live = LiveSession(runtime, *inputs, seed=0)
    live.set_keys("a", seq=4)
    live.add_mouse(2.0, 0.0, seq=5)
    live.set_keys("w", seq=7)  # arrives "during" the chunk: the last key state is the one used
    ch = live.step()
    assert live.log == [{"chunk": 0, "seq": 7, "keys": "w", "mouse": [2.0, 0.0]}]
    assert ch.seq == 7 and ch.frames.shape == (24,) + runtime.image_hw + (3,)
    assert ch.poses[-1][2, 3] > 0.1  # moved forward
    ch2 = live.step()  # keys stay held, the mouse turn was used up
    assert live.log[-1]["mouse"] == [0.0, 0.0] and ch2.first_frame == 25


def test_replay_fork_and_restore_are_bit_identical(runtime, inputs, tmp_path):
    plan = ["w", "wd", "il", "", "s"]
    live = LiveSession(runtime, *inputs, seed=5)
    head = _drive(live, plan[:2])
    twin = live.fork()
    live.save(tmp_path / "snap")
    tail = _drive(live, plan[2:])
    ref = [c.frames for c in head + tail]

    again = [c.frames for c in LiveSession.replay(runtime, *inputs, 5, live.log)]
    for a, b in zip(ref, again, strict=True):
        np.testing.assert_array_equal(a, b)

    restored = LiveSession.restore(tmp_path / "snap", runtime)
    assert restored.chunks_done == 2 and restored.log == live.log[:2]
    for a, c in zip(ref[2:], _drive(restored, plan[2:]), strict=True):
        np.testing.assert_array_equal(a, c.frames)

    forked = _drive(twin, ["a", "a", "a"])  # a fork diverges without touching the original
    assert not np.array_equal(forked[-1].frames, ref[-1])
    np.testing.assert_array_equal(np.stack(live.poses[:49]), np.stack(twin.poses[:49]))


def test_snapshot_before_the_first_chunk_and_limits(runtime, inputs, tmp_path):
    live = LiveSession(runtime, *inputs, seed=2, max_frames=49)
    live.set_keys("d")
    live.save(tmp_path / "early")
    first = live.step()
    restored = LiveSession.restore(tmp_path / "early", runtime)
    np.testing.assert_array_equal(restored.step().frames, first.frames)
    live.step()
    assert live.num_frames == 49 and live.at_limit
    with pytest.raises(ValueError, match="maximum clip length"):
        live.step()
    with pytest.raises(ValueError, match="no snapshot nope"):
        LiveSession.restore(tmp_path / "nope", runtime)


def test_explicit_segment_drives_the_next_chunk(runtime, inputs):
    from sanawm.camera import action_to_c2w

    live = LiveSession(runtime, *inputs, seed=0)
    live.step()
    start = live.pose
    seg = action_to_c2w("l-24")[1:]
    live.set_segment(seg)
    ch = live.step()
    np.testing.assert_allclose(ch.poses, start @ seg)
    assert "c2w" in live.log[-1]
    with pytest.raises(ValueError, match="has 24 video frames; the segment has 3"):
        live.set_segment(seg[:3])
