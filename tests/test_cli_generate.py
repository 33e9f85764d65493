"""`sanawm generate` option groups through click's test runner, over fake engines (no bundle build):
honest prompt defaults (no prompt / no refiner text fail unless asked for), backend flags reaching
Runtime.load, output flags (--save-session / --max-chunks / --resume equal an uninterrupted run), the
end-of-run summary, -q."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from runtime.fakes import FakeDecoder, fake_generators
from runtime.test_refiner_stage import LAYOUT, LT, CT, fake_refiner
from sanawm.cli import cli
from sanawm.config import tiny
from sanawm.runtime import Runtime

CFG = tiny()


def fake_runtime(refiner=True, with_refiner_engines=True, **_):
    ex = {**fake_generators(CFG), "vae_decoder_first": FakeDecoder(CFG, True), "vae_decoder_next": FakeDecoder(CFG, False)}
    if with_refiner_engines:
        ex.update(fake_refiner())
    return Runtime(CFG, ex, refiner=refiner, refiner_layout=LAYOUT)


@pytest.fixture
def loads(monkeypatch):
    """Runtime.load answers fake engines (generator, refiner, decoder); returns the list of its kwargs."""
    calls = []

    def load(cls, bundle, backend="onnxruntime", **kw):
        calls.append(dict(kw, backend=backend))
        return fake_runtime(refiner=kw.get("refiner", True))

    monkeypatch.setattr(Runtime, "load", classmethod(load))
    return calls


@pytest.fixture
def inputs(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    lat = tmp_path / "first.npy"
    np.save(lat, np.random.default_rng(3).standard_normal((1, CFG.in_channels, 1, CFG.latent_height,
                                                           CFG.latent_width)).astype(np.float32))
    rng = np.random.default_rng(5)
    stage1 = rng.standard_normal((1, CFG.caption_length, CFG.caption_channels)).astype(np.float32)
    np.savez(tmp_path / "p1.npz", **{"stage1.features": stage1})
    np.savez(tmp_path / "p2.npz", **{"stage1.features": stage1,
                                     "refiner.features": rng.standard_normal((1, LT, CT)).astype(np.float32),
                                     "refiner.mask": np.ones((1, LT), np.float32)})
    base = ["generate", "--bundle", str(b), "--latent", str(lat), "--preset", "orbit", "--seconds", "4.5"]
    return tmp_path, base


def invoke(args):
    r = CliRunner().invoke(cli, args)
    return r.exit_code, r.stderr


def test_no_prompt_is_refused_unless_asked_for(loads, inputs):
    tmp, base = inputs
    rc, err = invoke(base + ["--out", str(tmp / "a.mp4"), "--no-refiner"])
    assert rc == 2 and err.startswith("error: no prompt:") and "--no-prompt" in err and err.count("\n") == 1, err
    rc, err = invoke(base + ["--out", str(tmp / "a.mp4"), "--no-refiner", "--no-prompt"])
    assert rc == 0, err
    assert "constant condition, not 'no text'" in err


def test_refiner_without_refiner_text_is_refused_unless_turned_off_or_zeros_asked_for(loads, inputs):
    tmp, base = inputs
    p1 = ["--prompt-embeddings", str(tmp / "p1.npz")]
    rc, err = invoke(base + p1 + ["--out", str(tmp / "a.mp4")])
    assert rc == 2 and "no refiner text" in err and "--zero-refiner-prompt" in err and "--no-refiner" in err, err
    rc, err = invoke(base + p1 + ["--out", str(tmp / "b.mp4"), "--no-refiner"])
    assert rc == 0 and loads[-1]["refiner"] is False, err
    with _no_refiner_warning():
        rc, err = invoke(base + p1 + ["--out", str(tmp / "c.mp4"), "--zero-refiner-prompt"])
    assert rc == 0 and "--zero-refiner-prompt: the refiner runs on all-zero text" in err, err
    rc, err = invoke(base + ["--prompt-embeddings", str(tmp / "p2.npz"), "--out", str(tmp / "d.mp4")])
    assert rc == 0 and "refiner" not in err.split("generating")[0], err  # refiner text present: nothing to say
    rc, err = invoke(base + p1 + ["--no-refiner", "--zero-refiner-prompt"])
    assert rc == 2 and "conflict" in err


class _no_refiner_warning:
    """Fails when the refiner stage's "no refiner text" warning escapes (--zero-refiner-prompt silences it)."""

    def __enter__(self):
        import warnings

        self.cm = warnings.catch_warnings(record=True)
        self.log = self.cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        assert not [w for w in self.log if "no refiner text" in str(w.message)]


def test_backend_flags_reach_runtime_load(loads, inputs):
    tmp, base = inputs
    rc, err = invoke(base + ["--no-prompt", "--no-refiner", "--out", str(tmp / "a.mp4")])
    assert rc == 0, err
    assert loads[-1]["verify"] is False and "use_cuda_graph" not in loads[-1]
    rc, err = invoke(base + ["--no-prompt", "--no-refiner", "--out", str(tmp / "a.mp4"), "--verify",
                             "--no-cuda-graphs", "--backend", "tensorrt_rtx", "--weight-streaming-budget", "50%",
                             "--refiner-seed", "7"])
    assert rc == 0, err
    assert loads[-1] == dict(backend="tensorrt_rtx", verify=True, use_cuda_graph=False, weight_streaming_budget=0.5,
                             refiner=False, refiner_seed=7)
    rc, err = invoke(base + ["--no-prompt", "--backend", "tensorrt-llm"])
    assert rc == 2 and "Invalid value for '--backend'" in err and err.count("\n") == 1


def test_summary_line_and_quiet(loads, inputs):
    tmp, base = inputs
    rc, err = invoke(base + ["--prompt-embeddings", str(tmp / "p2.npz"), "--out", str(tmp / "a.mp4")])
    assert rc == 0, err
    m = re.search(r"done: (\d+) frames \(([\d.]+) s of video\) in ([\d.]+) s wall, ([\d.]+)x realtime; per stage: "
                  r"generator ([\d.]+) s, refiner ([\d.]+) s, decoder ([\d.]+) s; peak RSS (\d+) MiB", err)
    assert m, err
    assert int(m.group(1)) == 72 and float(m.group(2)) == 4.5  # 4.5 s = 73 = 24k + 1 frames
    assert int(m.group(8)) > 10  # a Python process with numpy holds more than 10 MiB
    rc, quiet = invoke(["-q"] + base + ["--prompt-embeddings", str(tmp / "p2.npz"), "--out", str(tmp / "b.mp4")])
    assert rc == 0 and quiet == "", quiet
    rc, quiet = invoke(base + ["-q", "--prompt-embeddings", str(tmp / "p2.npz"), "--out", str(tmp / "c.mp4")])
    assert rc == 0 and quiet == "", quiet


def test_save_session_and_resume_continue_the_clip(loads, inputs):
    """--max-chunks 1 --save-session, then --resume: the two pieces' latents are the uninterrupted run's."""
    tmp, base = inputs
    p2 = ["--prompt-embeddings", str(tmp / "p2.npz")]
    rc, err = invoke(base + p2 + ["--out", str(tmp / "all.mp4"), "--save-latents", str(tmp / "all.npy")])
    assert rc == 0, err
    sess = tmp / "run.npz"
    rc, err = invoke(base + p2 + ["--out", str(tmp / "p1.mp4"), "--save-latents", str(tmp / "l1.npy"),
                                  "--max-chunks", "1", "--save-session", str(sess)])
    assert rc == 0 and f"continue with --resume {sess}" in err, err
    rc, err = invoke(["generate", "--bundle", str(tmp / "bundle"), "--resume", str(sess), "--out", str(tmp / "p2.mp4"),
                      "--save-latents", str(tmp / "l2.npy")])
    assert rc == 0, err
    whole, a, b = (np.load(tmp / n) for n in ("all.npy", "l1.npy", "l2.npy"))
    assert a.shape[2] < whole.shape[2] and b.shape[2] > 0
    np.testing.assert_array_equal(np.concatenate([a, b], axis=2), whole)
    # the finished session has nothing left; resuming inputs are refused with the fix
    invoke(["generate", "--bundle", str(tmp / "bundle"), "--resume", str(sess), "--out", str(tmp / "p3.mp4"),
            "--save-session", str(tmp / "done.npz")])
    rc, err = invoke(["generate", "--bundle", str(tmp / "bundle"), "--resume", str(tmp / "done.npz")])
    assert rc == 2 and "no chunks left" in err
    rc, err = invoke(["generate", "--bundle", str(tmp / "bundle"), "--resume", str(sess), "--preset", "orbit"])
    assert rc == 2 and "drop --preset" in err
    (tmp / "junk.npz").write_bytes(b"not a zip")
    rc, err = invoke(["generate", "--bundle", str(tmp / "bundle"), "--resume", str(tmp / "junk.npz")])
    assert rc == 2 and err.startswith("error: ") and "not a saved sanawm session" in err and err.count("\n") == 1
