"""The README's main command, `sanawm demo`, end to end on a fresh folder: builds the world bundle from the shipped
trained weights in the default (relative) folder, encodes the prompt with the tiny Gemma-2, renders a held-out
scene along an action path to a playable MP4; a second run reuses the bundle and writes generated | truth."""

import os
import subprocess
import sys

import pytest

from sanawm.worlds.paths import FRAME_HW

av = pytest.importorskip("av")


def _demo(cwd, home, *extra):
    env = {**os.environ, "HOME": str(home), "SANAWM_CACHE": str(home / "cache")}
    return subprocess.run([sys.executable, "-m", "sanawm.cli", "demo", "--out", "demo.mp4", *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_demo_from_a_fresh_folder(tmp_path):
    r = _demo(tmp_path, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "building the world bundle" in r.stderr
    assert "Warning" not in r.stderr, r.stderr[-4000:]  # e.g. a truncated demo prompt
    assert (tmp_path / "sanawm-demo-bundle" / "manifest.json").is_file()
    with av.open(str(tmp_path / "demo.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    # 3 s -> 49 video frames snapped to 24k + 1 -> the output drops the condition frame: 48
    h, w = FRAME_HW[0] * 4, FRAME_HW[1] * 4  # --display-scale 4 (default)
    assert len(frames) == 48 and frames[0].shape == (h, w, 3)
    assert len({f.tobytes() for f in frames}) > 1

    again = _demo(tmp_path, tmp_path, "--seconds", "1.5", "--compare", "--display-scale", "1")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "building the world bundle" not in again.stderr
    with av.open(str(tmp_path / "demo.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 24 and frames[0].shape == (FRAME_HW[0], 2 * FRAME_HW[1], 3)  # generated | truth

    before = (tmp_path / "demo.mp4").read_bytes()
    bad = _demo(tmp_path, tmp_path, "--scene", "512")  # EVAL_SEEDS holds 512 held-out scenes: 0..511
    assert bad.returncode == 2 and "--scene" in bad.stderr and "0<=x<=511" in bad.stderr, bad.stderr[-2000:]
    assert (tmp_path / "demo.mp4").read_bytes() == before  # a refused run leaves the earlier output alone
