"""Acceptance: SIGKILL of a running ``sanawm generate`` leaves a playable MP4 of the finished chunks.

A long clip (hundreds of chunks, minutes of work) is started on a tiny random generator-only bundle (so the
video is the CLI's latent preview; no VAE engines) in a subprocess; when its
progress lines on stderr say that K chunks are done (``render`` prints a chunk's line only after the MP4 writer
got that chunk), the process is SIGKILLed: no ``finally``, no ``close``, no trailer. The file must then

* open and decode with PyAV (fragmented MP4),
* hold at least ``K * frames_per_chunk - 1`` frames (the writer documents a one-frame lag: the mp4 muxer
  holds the newest packet), all of the model frame's preview size,
* show the right pictures: the decoded frames match the latent preview of the same chunks recomputed in this
  process from the same bundle, seed and camera (mean abs difference per frame <= 6 of 255: libx264 crf 18 on
  the blocky nearest-upscaled preview measured 2.2-3.0; the test also checks that a one-latent-frame shift
  differs by more than 3x the tolerance, so the comparison can fail).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # only to build the bundle (export side)

pytestmark = pytest.mark.slow  # bundle export ~1-2 min on 2 CPU cores

KILL_AFTER_CHUNKS = 2
SECONDS = 600.0  # 400 chunks: far more than can finish before the kill
MEAN_ABS_TOL = 6.0  # codec loss on the blocky preview measured 2.2-3.0 / 255 (libx264 crf 18)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("killbundle") / "bundle"
    cmd = [sys.executable, "-m", "sanawm.export.cli", "--random", "--seed", "3", "--config", "tiny",
           "--out", str(out), "--backends", "onnxruntime",
           "--engines", "generator"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"export failed:\n{r.stderr[-3000:]}"
    return out


def _expected_preview(bundle, latent_path, args_list, num_chunks):
    """Preview frames of the first ``num_chunks`` chunks, computed in-process the way the CLI does."""
    import math

    from types import SimpleNamespace

    from sanawm.cli.generate import generate
    from sanawm.cli.inputs import prepare_inputs, target_num_frames
    from sanawm.cli.prompting import prompt_inputs
    from sanawm.runtime import Runtime
    from sanawm.runtime.frames import latent_preview

    args = SimpleNamespace(**generate.make_context("generate", list(args_list[1:])).params)
    runtime = Runtime.load(bundle, "onnxruntime")
    first, camera, F = prepare_inputs(runtime, args, target_num_frames(args.seconds))
    session = runtime.start(first, prompt_inputs(runtime, args), camera, seed=args.seed, num_frames=F)
    cfg = runtime.cfg
    scale = max(2, 2 * math.ceil(128 / (2 * cfg.latent_width)))  # as sanawm.cli.render.render
    frames = []
    for _ in range(num_chunks):
        ch = next(session)
        frames.append(latent_preview(ch.refined, scale=scale, drop_first=ch.index == 0))
    return np.concatenate(frames), session.num_chunks


def test_sigkill_leaves_playable_mp4(bundle, tmp_path):
    import av

    from sanawm.config import tiny

    cfg = tiny()
    rng = np.random.default_rng(5)
    latent = tmp_path / "first.npy"
    np.save(latent, rng.standard_normal((1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width)).astype(np.float32))
    out = tmp_path / "clip.mp4"
    args = ["generate", "--bundle", str(bundle), "--latent", str(latent), "--preset", "orbit",
            "--seconds", str(SECONDS), "--seed", "11", "--out", str(out), "--no-prompt"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sanawm.cli", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    lines, done = [], 0
    t0 = time.monotonic()
    try:
        for line in proc.stderr:  # plain progress lines (stderr is a pipe, not a TTY)
            lines.append(line.rstrip())
            if line.lstrip().startswith("[") and " chunk " in line:
                done = int(line.split(" chunk ", 1)[1].split("/", 1)[0])
                if done >= KILL_AFTER_CHUNKS:
                    break
            assert time.monotonic() - t0 < 300, "no progress within 300 s:\n" + "\n".join(lines[-20:])
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert done >= KILL_AFTER_CHUNKS, "generate ended before reporting chunks:\n" + "\n".join(lines[-20:])
    assert still_running and rc == -signal.SIGKILL, f"the run was not killed mid-way (rc {rc})"
    header = [ln for ln in lines if ln.startswith("generating ")]
    assert header, "no 'generating ...' line:\n" + "\n".join(lines[-20:])
    total = int(re.search(r" in (\d+) chunks", header[0]).group(1))
    assert total > done + 10, f"clip too short for a mid-way kill: {total} chunks"

    expected, num_chunks = _expected_preview(bundle, latent, args, KILL_AFTER_CHUNKS)
    assert num_chunks == total
    per_chunk = cfg.chunk_size * 8
    assert expected.shape[0] == KILL_AFTER_CHUNKS * per_chunk

    with av.open(str(out)) as c:  # must open and decode although the file was never closed
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    n = len(frames)
    print(f"\nkilled after {done} reported chunks; MP4 {out.stat().st_size} bytes decodes to {n} frames "
          f"({per_chunk} per chunk, clip would be {total} chunks)")
    assert n >= KILL_AFTER_CHUNKS * per_chunk - 1, f"only {n} frames decodable after {done} finished chunks"
    assert n <= total * per_chunk
    H, W = expected.shape[1:3]
    assert all(f.shape == (H, W, 3) for f in frames), {f.shape for f in frames}
    got = np.stack(frames[: KILL_AFTER_CHUNKS * per_chunk - 1]).astype(np.float32)
    diff = np.abs(got - expected[: got.shape[0]].astype(np.float32)).mean(axis=(1, 2, 3))
    # discrimination check: the same frames against the preview one latent frame (8 video frames) later
    m = got.shape[0] - 8
    shifted = np.abs(got[:m] - expected[8 : 8 + m].astype(np.float32)).mean(axis=(1, 2, 3))
    print(f"mean abs diff vs recomputed preview per frame: max {diff.max():.2f} / 255 (tol {MEAN_ABS_TOL}); "
          f"vs the preview shifted by one latent frame: min {shifted.min():.1f}")
    assert diff.max() <= MEAN_ABS_TOL, f"decoded frames do not match the chunks' previews: {diff.round(1)}"
    assert shifted.min() > 3 * MEAN_ABS_TOL, "the comparison cannot tell neighbouring frames apart"
