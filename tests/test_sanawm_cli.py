"""`sanawm` CLI: argument errors, input checks, a whole `generate` over fake engines, the torch-free guarantee."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sanawm import cli
from sanawm.cli import UserError
from sanawm.cli.inputs import camera_path, parse_budget
from sanawm.config import tiny
from sanawm.runtime import Runtime
from sanawm.runtime.video import read_video

sys.path.insert(0, str(Path(__file__).parent / "runtime"))
from fakes import FakeDecoder, fake_generators  # noqa: E402

CFG = tiny()


class FakeEncoder:
    """``vae_encoder``: [1, 3, 1, 128, 192] in [-1, 1] -> [1, 16, 1, 4, 6] (32x32 mean pooling, tiled channels)."""

    from sanawm.spec import TensorSpec as _T

    name = "vae_encoder"
    inputs = (_T("image", "float32", (1, 3, 1, 128, 192)),)
    outputs = (_T("latent", "float32", (1, 16, 1, 4, 6)),)

    def run(self, feeds):
        x = feeds["image"][0, :, 0].reshape(3, 4, 32, 6, 32).mean(axis=(2, 4))  # [3, 4, 6]
        return {"latent": np.resize(x, (16, 4, 6))[None, :, None].astype(np.float32)}


def fake_runtime(decoder=True, encoder=True):
    ex = fake_generators(CFG)
    if encoder:
        ex["vae_encoder"] = FakeEncoder()
    if decoder:
        ex.update(vae_decoder_first=FakeDecoder(CFG, True), vae_decoder_next=FakeDecoder(CFG, False))
    return Runtime(CFG, ex)


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """A folder that `generate` accepts, with Runtime.load answering fake engines (no ONNX build in tests)."""
    d = tmp_path / "bundle"
    d.mkdir()
    monkeypatch.setattr(Runtime, "load", classmethod(lambda cls, *a, **k: fake_runtime()))
    return d


def save_png(path, shape, mode="RGB"):
    from PIL import Image

    Image.fromarray(np.full(shape, 120, np.uint8)).convert(mode).save(path)
    return str(path)


def run(argv, capsys):
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def test_missing_bundle_is_reported(tmp_path, capsys):
    rc, err = run(["generate", "--bundle", str(tmp_path / "nope"), "--image", "x.png", "--preset", "orbit"], capsys)
    assert rc == 2 and "does not exist; build one with `sanawm-export" in err


def test_folder_without_manifest_is_reported(tmp_path, capsys):
    rc, err = run(["generate", "--bundle", str(tmp_path), "--image", "x.png", "--preset", "orbit"], capsys)
    assert rc == 2 and "manifest.json not found" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "orbit", "--action", "w-10"], "exactly one camera source"),
        ([], "exactly one camera source"),
        (["--preset", "orbit", "--latent", "x.npy"], "exactly one of --image"),
        (["--preset", "orbit", "--seconds", "0"], "--seconds must be positive"),
        (["--preset", "spin"], "Invalid value for '--preset': 'spin' is not one of"),
        (["--action", "q-10"], ""),
    ],
)
def test_argument_errors(bundle, tmp_path, capsys, extra, message):
    img = save_png(tmp_path / "a.png", (128, 192, 3))
    rc, err = run(["generate", "--bundle", str(bundle), "--image", img, "--out", str(tmp_path / "o.mp4"), "--no-prompt"]
                  + extra, capsys)
    assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_image_with_wrong_channels_is_refused(bundle, tmp_path, capsys):
    from PIL import Image

    p = tmp_path / "rgba.png"
    a = np.full((128, 192, 4), 100, np.uint8)
    a[..., 3] = 10
    Image.fromarray(a, "RGBA").save(p)
    rc, err = run(["generate", "--bundle", str(bundle), "--image", str(p), "--preset", "orbit", "--no-prompt"], capsys)
    assert rc == 2 and "transparent" in err


def test_malformed_trajectory_is_refused(bundle, tmp_path, capsys):
    img = save_png(tmp_path / "a.png", (128, 192, 3))
    c2w = np.tile(np.eye(4), (50, 1, 1))
    c2w[3, :3, :3] *= 2.0  # not a rotation
    np.save(tmp_path / "c2w.npy", c2w)
    rc, err = run(["generate", "--bundle", str(bundle), "--image", img, "--camera", str(tmp_path / "c2w.npy"),
                   "--no-prompt"], capsys)
    assert rc == 2 and err.startswith("error: ") and "rotation" in err.lower(), err


def test_generate_writes_mp4_png_and_latents(bundle, tmp_path, capsys):
    img = save_png(tmp_path / "a.png", (300, 400, 3))  # any size: resized and centre-cropped to 128x192
    out = tmp_path / "clip.mp4"
    rc, err = run(
        ["generate", "--bundle", str(bundle), "--latent", "unused"][:3]
        + ["--image", img, "--preset", "orbit", "--seconds", "3", "--out", str(out),
           "--png-dir", str(tmp_path / "png"), "--save-latents", str(tmp_path / "lat.npy"), "--no-prompt"],
        capsys,
    )
    assert rc == 0, err
    assert "--no-prompt: the generator runs on all-zero prompt features" in err
    assert "chunk 2/2" in err and "frames/s" in err and "ETA" in err  # plain progress lines (not a TTY)
    assert read_video(out).shape == (48, 16, 24, 3)  # 3 s = 49 = 24k + 1 frames -> 48 output frames
    assert len(list((tmp_path / "png").iterdir())) == 48
    assert np.load(tmp_path / "lat.npy").shape == (1, 16, 7, 4, 6)


def test_generate_needs_an_encoder_for_images(tmp_path, capsys, monkeypatch):
    # the fake runtime has no vae_encoder: an image cannot be encoded, the message says to pass a latent
    d = tmp_path / "b"
    d.mkdir()
    monkeypatch.setattr(Runtime, "load", classmethod(lambda cls, *a, **k: fake_runtime(encoder=False)))
    img = save_png(tmp_path / "a.png", (128, 192, 3))
    rc, err = run(["generate", "--bundle", str(d), "--image", img, "--preset", "orbit", "--out", str(tmp_path / "o.mp4"),
                   "--no-prompt"], capsys)
    assert rc == 2 and "no vae_encoder" in err


def test_generate_is_torch_free_end_to_end(tmp_path):
    """In a fresh interpreter: import the run side and the CLI, generate a clip over fake engines, write an MP4."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent / 'runtime')!r})
        import numpy as np
        import sanawm.runtime, sanawm.cli.render
        from fakes import FakeDecoder, fake_generators
        from sanawm.config import tiny
        from sanawm.runtime import Runtime, PromptEmbeddings, Session
        cfg = tiny()
        ex = fake_generators(cfg)
        ex.update(vae_decoder_first=FakeDecoder(cfg, True), vae_decoder_next=FakeDecoder(cfg, False))
        rt = Runtime(cfg, ex)
        r = np.random.default_rng(0)
        cam = (r.standard_normal((13, 20)).astype(np.float32), r.standard_normal((48, 13, 4, 6)).astype(np.float32))
        s = rt.start(np.zeros((1, 16, 1, 4, 6), np.float32), PromptEmbeddings.zeros(cfg), cam, seed=0)
        next(s)
        s.save({str(tmp_path / 's.npz')!r})
        s = Session.resume({str(tmp_path / 's.npz')!r}, rt)
        summary = sanawm.cli.render.render(s, {str(tmp_path / 'c.mp4')!r}, save_latents={str(tmp_path / 'l.npy')!r})
        assert summary["chunks"] == 3, summary
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not bad, bad
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert read_video(tmp_path / "c.mp4").shape[0] == 72


def test_progress_line_on_a_tty():
    import io

    from sanawm.runtime.progress import Progress

    class TTY(io.StringIO):
        def isatty(self):
            return True

    s = TTY()
    p = Progress(2, 48, s)
    p.update(24)
    p.update(24)
    assert s.getvalue().startswith("\r[") and s.getvalue().count("\r") == 2 and s.getvalue().endswith("\n")


# ------------------------------------------------------------------------------ text prompts (--prompt)
def test_prompt_argument_errors(bundle, tmp_path, capsys):
    img = save_png(tmp_path / "a.png", (128, 192, 3))
    base = ["generate", "--bundle", str(bundle), "--image", img, "--preset", "orbit", "--out", str(tmp_path / "o.mp4")]
    rc, err = run(base + ["--prompt", "a fox", "--prompt-embeddings", "p.safetensors"], capsys)
    assert rc == 2 and "either --prompt" in err
    rc, err = run(base + ["--prompt", "a fox", "--cache-dir", str(tmp_path / "c")], capsys)
    assert rc == 2 and "--stage1-encoder DIR" in err and "--tiny-encoder" in err
    rc, err = run(base + ["--tiny-encoder"], capsys)
    assert rc == 2 and "give --prompt" in err


def test_prompt_embeddings_from_another_encoder_are_refused(bundle, tmp_path, capsys):
    from sanawm.text.store import save_prompt_embeddings

    p = tmp_path / "p.safetensors"
    f = np.zeros((1, CFG.caption_length, CFG.caption_channels), np.float32)
    meta = {"stage1_encoder": "gemma-2-2b-it@0123456789abcdef", "caption_length": CFG.caption_length,
            "caption_channels": CFG.caption_channels}
    save_prompt_embeddings(p, stage1=(f, np.ones(f.shape[:2], np.float32)), meta=meta)
    img = save_png(tmp_path / "a.png", (128, 192, 3))
    rc, err = run(["generate", "--bundle", str(bundle), "--image", img, "--preset", "orbit", "--prompt-embeddings", str(p),
                   "--out", str(tmp_path / "o.mp4")], capsys)
    assert rc == 2 and "this bundle expects 'tiny-gemma2-random@seed0'" in err
    assert f"sanawm encode-prompt --prompt ... --tiny --out {p}" in err


def test_generate_with_text_prompt_uses_the_cache_and_stays_torch_free(tmp_path):
    """`generate --prompt ... --tiny-encoder` twice in a fresh interpreter (engines faked): the first run encodes (in
    a subprocess), the second is a cache hit; the generate process never imports torch."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent / 'runtime')!r})
        import numpy as np
        from PIL import Image
        from fakes import FakeDecoder, fake_generators
        import sanawm.cli
        from sanawm.config import tiny
        from sanawm.runtime import Runtime
        import sanawm.runtime.session as session_mod

        cfg = tiny()
        seen = []
        start = session_mod.Session.start.__func__
        def spy(cls, runtime, first, prompt, *a, **k):
            seen.append(prompt)
            return start(cls, runtime, first, prompt, *a, **k)
        session_mod.Session.start = classmethod(spy)
        def fake_load(cls, *a, **k):
            ex = fake_generators(cfg)
            ex.update(vae_decoder_first=FakeDecoder(cfg, True), vae_decoder_next=FakeDecoder(cfg, False))
            return Runtime(cfg, ex)
        Runtime.load = classmethod(fake_load)
        Image.fromarray(np.full((16, 24, 3), 120, np.uint8)).save({str(tmp_path / 'a.png')!r})
        import os
        os.makedirs({str(tmp_path / 'b')!r}, exist_ok=True)
        for i in range(2):
            rc = sanawm.cli.main(["generate", "--bundle", {str(tmp_path / 'b')!r}, "--latent", {str(tmp_path / 'l.npy')!r},
                                  "--preset", "orbit", "--seconds", "3", "--out", {str(tmp_path / 'c.mp4')!r},
                                  "--prompt", "a red fox in the snow", "--tiny-encoder",
                                  "--cache-dir", {str(tmp_path / 'cache')!r}])
            assert rc == 0, rc
        assert len(seen) == 2 and float(np.abs(seen[0].text).sum()) > 0
        np.testing.assert_array_equal(seen[0].text, seen[1].text)
        assert seen[0].meta["stage1_encoder"] == "tiny-gemma2-random@seed0"
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "diffusers"))
        assert not bad, bad[:5]
        print("ok")
        """
    )
    np.save(tmp_path / "l.npy", np.zeros((1, 16, 1, 4, 6), np.float32))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("generate: prompt")]
    assert len(lines) == 2, r.stderr[-3000:]
    assert "encoded with tiny-gemma2-random@seed0" in lines[0] and "not in cache" in lines[0]
    assert "from cache" in lines[1]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_action_style_flag_selects_the_key_mapping():
    """`--action-style` reaches the camera path: under the current mapping "a" yaws in place, under the
    diffusers mapping it strafes (the camera centre moves, the rotation stays)."""
    paths = {}
    for style in ("current", "diffusers"):
        args = type("A", (), dict(intrinsics=None, camera=None, action="a-10", action_style=style, preset=None))()
        paths[style] = camera_path(args, (704, 1280), 11).c2w
    cur, old = paths["current"], paths["diffusers"]
    assert np.allclose(cur[-1, :3, 3], 0.0) and not np.allclose(cur[-1, :3, :3], np.eye(3))
    assert not np.allclose(old[-1, :3, 3], 0.0) and np.allclose(old[-1, :3, :3], np.eye(3))


def test_weight_streaming_budget_is_parsed_or_refused():
    assert parse_budget(None) is None
    assert parse_budget("2G") == 2 * 2**30 and parse_budget("50%") == 0.5
    with pytest.raises(UserError, match="weight-streaming-budget"):
        parse_budget("lots")
