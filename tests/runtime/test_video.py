"""Progressive MP4 output: readable while the writer is still open and after the writer process is killed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sanawm.runtime.frames import latent_preview, to_uint8
from sanawm.runtime.video import LatentWriter, PNGWriter, ProgressiveMP4Writer, read_video


def chunk(k, n=24, h=32, w=48):
    return np.full((n, h, w, 3), 30 + 60 * k, np.uint8)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_mp4_is_readable_after_every_chunk_without_close(tmp_path, codec):
    path = tmp_path / "clip.mp4"
    w = ProgressiveMP4Writer(path, codec=codec)
    for k in range(3):
        w.write_chunk(chunk(k))
        got = read_video(path)  # writer still open: no trailer, no close
        # everything except the newest frame (the muxer holds one packet) is on disk and decodes
        assert got.shape == (24 * (k + 1) - 1, 32, 48, 3)
        for j in range(k + 1):
            assert abs(int(got[24 * j + 5].mean()) - (30 + 60 * j)) <= 3
    w.close()
    assert read_video(path).shape[0] == 72


def test_mp4_survives_a_killed_writer(tmp_path):
    path = tmp_path / "crash.mp4"
    code = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from sanawm.runtime.video import ProgressiveMP4Writer
        w = ProgressiveMP4Writer({str(path)!r})
        for k in range(2):
            w.write_chunk(np.full((24, 32, 48, 3), 30 + 60 * k, np.uint8))
        os.kill(os.getpid(), signal.SIGKILL)  # die mid-run: no close, no atexit
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9
    got = read_video(path)
    assert got.shape[0] == 47  # two chunks less the one held frame
    assert abs(int(got[30].mean()) - 90) <= 3


def test_frame_conversion_truncates_like_the_release():
    x = np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0], np.float32)
    frames = np.broadcast_to(x[None, :, None, None], (3, 6, 1, 1))
    got = to_uint8(frames[None])[:, 0, 0, 0]
    np.testing.assert_array_equal(got, [0, 0, 127, 254, 255, 255])  # 127.5 -> 127, 254.87 -> 254 (no rounding)
    with pytest.raises(ValueError, match="RGB first"):
        to_uint8(np.zeros((4, 2, 2, 3), np.float32))


def test_png_and_latent_writers(tmp_path):
    from PIL import Image

    p = PNGWriter(tmp_path / "png")
    p.write_chunk(chunk(0, n=2))
    p.write_chunk(chunk(1, n=1))
    assert sorted(f.name for f in (tmp_path / "png").iterdir()) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert np.asarray(Image.open(tmp_path / "png" / "frame_00002.png"))[0, 0, 0] == 90
    lw = LatentWriter(tmp_path / "lat.npy")
    lw.write_chunk(np.zeros((1, 4, 4, 2, 2), np.float32))
    lw.write_chunk(np.ones((1, 4, 3, 2, 2), np.float32))
    lw.close()
    lat = np.load(tmp_path / "lat.npy", allow_pickle=False)
    assert lat.shape == (1, 4, 7, 2, 2) and lat[0, 0, 4:].min() == 1


def test_latent_preview_shape():
    v = latent_preview(np.zeros((1, 16, 4, 4, 6), np.float32), scale=8, drop_first=True)
    assert v.shape == (24, 32, 48, 3) and v.dtype == np.uint8


def test_odd_sizes_and_wrong_dtypes_are_refused(tmp_path):
    w = ProgressiveMP4Writer(tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="even"):
        w.write_chunk(np.zeros((1, 31, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        w.write_chunk(np.zeros((1, 32, 48, 3), np.float32))
