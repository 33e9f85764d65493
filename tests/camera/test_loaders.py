"""Loaders: write files in tmp_path with plain numpy / text code, load them back."""

import numpy as np
import pytest

from camera_testutils import random_c2w, random_intrinsics
from sanawm.camera import load_bench_npz, load_c2w_npy, load_re10k_txt


def test_npy_with_intrinsics_npy(tmp_path, rng):
    c2w = random_c2w(rng, 13)
    k = random_intrinsics(rng, 13, (720, 1280), per_frame=True)
    np.save(tmp_path / "c2w.npy", c2w.astype(np.float32))
    np.save(tmp_path / "k.npy", k)
    p = load_c2w_npy(tmp_path / "c2w.npy", str(tmp_path / "k.npy"), image_hw=(720, 1280), fps=16)
    np.testing.assert_allclose(p.c2w, c2w, atol=1e-6)
    np.testing.assert_array_equal(p.intrinsics, k)
    assert (len(p), p.image_hw, p.fps) == (13, (720, 1280), 16.0)
    # Intrinsics as an in-memory (3, 3) K.
    K = np.array([[k[0, 0], 0, k[0, 2]], [0, k[0, 1], k[0, 3]], [0, 0, 1]])
    np.testing.assert_array_equal(load_c2w_npy(tmp_path / "c2w.npy", K).intrinsics, np.tile(k[0], (13, 1)))


def test_npy_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_c2w_npy(tmp_path / "missing.npy", [1, 1, 0, 0])
    np.save(tmp_path / "bad.npy", np.zeros((5, 4, 4)))  # last row zeros: not a pose
    with pytest.raises(ValueError, match="last row"):
        load_c2w_npy(tmp_path / "bad.npy", [1, 1, 0, 0])


def test_bench_npz(tmp_path, rng):
    c2w = random_c2w(rng, 20)
    k = random_intrinsics(rng, 20, (480, 832), per_frame=True)
    Ks = np.zeros((20, 3, 3))
    Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = k[:, 0], k[:, 1], k[:, 2], k[:, 3], 1
    np.savez(tmp_path / "scene.npz", c2w=c2w, intrinsics=Ks, fps=np.array(16), num_frames=np.array(17))
    p = load_bench_npz(tmp_path / "scene.npz", image_hw=(480, 832))
    assert len(p) == 17 and p.fps == 16.0 and p.image_hw == (480, 832)
    np.testing.assert_array_equal(p.c2w, c2w[:17])
    np.testing.assert_array_equal(p.intrinsics, k[:17])


def test_bench_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", c2w=np.tile(np.eye(4), (3, 1, 1)), fps=16, num_frames=3)
    with pytest.raises(ValueError, match=r"missing keys \['intrinsics'\]"):
        load_bench_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", c2w=np.tile(np.eye(4), (3, 1, 1)), intrinsics=[1, 1, 0, 0], fps=16, num_frames=5)
    with pytest.raises(ValueError, match="num_frames = 5 but c2w holds 3"):
        load_bench_npz(tmp_path / "b.npz")


def test_re10k_txt(tmp_path, rng):
    c2w = random_c2w(rng, 6)
    w2c = np.linalg.inv(c2w)  # independent of the loader's closed-form inverse
    H, W = 360, 640
    norm = np.array([0.9, 1.6, 0.5, 0.48])  # fx/W, fy/H, cx/W, cy/H
    lines = ["https://www.youtube.com/watch?v=abcdefghijk"]
    for i in range(6):
        ts = 1_000_000 + i * 33_367  # ~29.97 fps in microseconds
        nums = [ts, *norm, 0.0, 0.0, *w2c[i, :3, :].ravel()]
        lines.append(" ".join(f"{v:.9f}" if isinstance(v, float) else str(v) for v in nums))
    (tmp_path / "clip.txt").write_text("\n".join(lines) + "\n")
    p = load_re10k_txt(tmp_path / "clip.txt", (H, W))
    np.testing.assert_allclose(p.c2w, c2w, atol=1e-7)
    np.testing.assert_allclose(p.intrinsics, np.tile(norm * [W, H, W, H], (6, 1)))
    assert p.image_hw == (H, W) and p.fps == pytest.approx(1e6 / 33_367)
    # The URL header is optional.
    (tmp_path / "nourl.txt").write_text("\n".join(lines[1:]))
    np.testing.assert_array_equal(load_re10k_txt(tmp_path / "nourl.txt", (H, W)).c2w, p.c2w)


@pytest.mark.parametrize("body,problem", [
    ("url\n" + " ".join(["0.5"] * 17) + "\n", "17 numbers, expected 19"),
    ("url\n1 0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 x\n", "non-numeric"),
    ("url\n", "no pose lines"),
    ("url\n1 0.5 0.5 0.5 0.5 0 0 2 0 0 0 0 1 0 0 0 0 1 0\n", "bad world-to-camera matrix.*not orthonormal"),
])
def test_re10k_errors(tmp_path, body, problem):
    (tmp_path / "bad.txt").write_text(body)
    with pytest.raises(ValueError, match=problem):
        load_re10k_txt(tmp_path / "bad.txt", (360, 640))
