"""The CLIs' error boundary, help and common flags, through click's test runner and through subprocesses of the
entry points (`python -m sanawm.cli`, `python -m sanawm.export.cli`):

user errors (bad flags and choices, missing files, a bad bundle, a missing backend library, a bad prompt file,
bad export input) print ONE line `error: ...` and exit 2; internal errors (a numpy broadcast ValueError, a
TypeError from inside) print the traceback and "this is a bug", exit 1; --debug adds the traceback to user
errors; --version; option sections in --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sanawm import __version__
from sanawm.cli import cli
from sanawm.engines.base import MissingBackendError
from sanawm.export.cli import export_command
from sanawm.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def invoke(command, args):
    r = CliRunner().invoke(command, args)
    return r.exit_code, r.stderr, r.stdout


@pytest.fixture
def gen(tmp_path):
    """A generate command line up to the bundle's load (latent + preset + --no-prompt)."""
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "l.npy", np.zeros((1, 16, 1, 4, 6), np.float32))
    return ["generate", "--bundle", str(tmp_path / "b"), "--latent", str(tmp_path / "l.npy"), "--preset", "orbit",
            "--no-prompt", "--no-refiner", "--out", str(tmp_path / "o.mp4")]


def _raising(exc):
    def load(cls, *a, **k):
        raise exc
    return classmethod(load)


@pytest.mark.parametrize("exc", [
    ValueError("operands could not be broadcast together with shapes (3,4) (5,)"),
    TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'"),
    KeyError("generator"),
])
def test_internal_errors_are_bugs_with_a_traceback(gen, monkeypatch, exc):
    monkeypatch.setattr(Runtime, "load", _raising(exc))
    rc, err, _ = invoke(cli, gen)
    assert rc == 1, err
    assert "Traceback (most recent call last)" in err and type(exc).__name__ in err
    assert "this is a bug in sanawm" in err


@pytest.mark.parametrize("exc, needle", [
    (MissingBackendError("backend 'tensorrt' needs the tensorrt package: pip install tensorrt"), "pip install tensorrt"),
    (FileNotFoundError("plan.engine"), "plan.engine"),
])
def test_user_errors_from_loading_are_one_line(gen, monkeypatch, exc, needle):
    monkeypatch.setattr(Runtime, "load", _raising(exc))
    rc, err, _ = invoke(cli, gen)
    assert rc == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    rc, err, _ = invoke(cli, ["--debug"] + gen)  # --debug: the same error with its traceback
    assert rc == 2 and "Traceback (most recent call last)" in err and needle in err
    rc, err, _ = invoke(cli, gen + ["--debug"])  # also after the command name
    assert rc == 2 and "Traceback (most recent call last)" in err


def test_bad_bundle_and_bad_inputs_are_one_line(gen, tmp_path):
    # the folder exists but is no bundle: BundleError from the real Runtime.load
    rc, err, _ = invoke(cli, gen)
    assert rc == 2 and "manifest.json not found" in err and err.count("\n") == 1, err
    for extra, needle in [
        (["--action-style", "sideways"], "Invalid value for '--action-style'"),
        (["--encoder-device", "tpu"], "Invalid value for '--encoder-device'"),
        (["--max-chunks", "0"], "Invalid value for '--max-chunks'"),
        (["--frobnicate"], "No such option"),
        (["--prompt-embeddings", "p.npz"], "--no-prompt runs without a prompt"),
        (["--intrinsics", "k.npy"], "--intrinsics goes with --camera"),
    ]:
        rc, err, _ = invoke(cli, gen + extra)
        assert rc == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1, (extra, err)


def test_bad_prompt_file_is_a_user_error(gen, tmp_path, monkeypatch):
    from sanawm.config import tiny

    monkeypatch.setattr(Runtime, "load", classmethod(lambda cls, *a, **k: _fake()))
    args = [a for a in gen if a != "--no-prompt"]
    rc, err, _ = invoke(cli, args + ["--prompt-embeddings", str(tmp_path / "missing.npz")])
    assert rc == 2 and "does not exist; encode the prompt with" in err and err.count("\n") == 1, err
    np.savez(tmp_path / "wrong.npz", text=np.zeros((1, 3, tiny().caption_channels), np.float32))
    rc, err, _ = invoke(cli, args + ["--prompt-embeddings", str(tmp_path / "wrong.npz")])
    assert rc == 2 and err.startswith("error: ") and "wrong.npz" in err and err.count("\n") == 1, err


def _fake():
    sys.path.insert(0, str(ROOT / "tests"))
    from runtime.fakes import FakeDecoder, fake_generators
    from sanawm.config import tiny

    cfg = tiny()
    return Runtime(cfg, {**fake_generators(cfg), "vae_decoder_first": FakeDecoder(cfg, True),
                         "vae_decoder_next": FakeDecoder(cfg, False)})


def test_help_has_option_sections_and_version():
    rc, _, out = invoke(cli, ["generate", "--help"])
    assert rc == 0
    heads = [ln for ln in out.splitlines() if ln.endswith("options:")]
    assert heads[:5] == ["Inputs options:", "Camera options:", "Prompt options:", "Backend options:", "Output options:"]
    assert "[onnxruntime|tensorrt|tensorrt_rtx]" in out and "orbit" in out
    rc, _, out = invoke(export_command, ["--help"])
    assert rc == 0 and {"Inputs options:", "Precision options:", "Backend options:", "Output options:"} <= set(
        out.splitlines())
    from sanawm.export.cli import PRECISIONS

    assert f"[{'|'.join(PRECISIONS)}]" in out
    for command in (cli, export_command):
        rc, _, out = invoke(command, ["--version"])
        assert rc == 0 and out.strip().endswith(__version__)


def test_export_user_errors(tmp_path):
    for args, needle in [
        (["--random", "--out", str(tmp_path / "b"), "--precision", "fp4"], "Invalid value for '--precision'"),
        (["--random", "--out", str(tmp_path / "b"), "--config", "huge"], "Invalid value for '--config'"),
        (["--out", str(tmp_path / "b")], "give the weights"),
        (["--random", "--checkpoint", "c.pth", "--out", str(tmp_path / "b")], "conflict"),
        (["--random", "--out", str(tmp_path / "b"), "--engines", "nope"], "unknown engine 'nope'"),
        (["--random", "--out", str(tmp_path / "b"), "--backends", "cuda"], "unknown backend 'cuda'"),
        (["--random", "--out", str(tmp_path / "b"), "--fp8", "--precision", "fp16"], "--fp8 conflicts"),
    ]:
        rc, err, _ = invoke(export_command, args)
        assert rc == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------- the entry points
def _run(module, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_entry_points_in_a_subprocess(tmp_path):
    r = _run("sanawm.cli", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"sanawm {__version__}"
    r = _run("sanawm.export.cli", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"sanawm-export {__version__}"
    args = ["generate", "--bundle", str(tmp_path / "nope"), "--latent", "l.npy", "--preset", "orbit", "--no-prompt"]
    r = _run("sanawm.cli", *args)
    assert r.returncode == 2 and r.stderr == f"error: --bundle {tmp_path / 'nope'} does not exist; build one with " \
        f"`sanawm-export --out {tmp_path / 'nope'} ...`\n", r.stderr
    r = _run("sanawm.cli", "--debug", *args)
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    r = _run("sanawm.export.cli", "--random", "--out", str(tmp_path / "b"), "--engines", "nope")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown engine 'nope'") and r.stderr.count("\n") == 1
    r = _run("sanawm.cli", "encode-prompt", "--help")  # handed to the build-side command untouched
    assert r.returncode == 0 and "--stage1-encoder" in r.stdout


def test_serve_through_the_group(tmp_path, monkeypatch):
    """`sanawm serve` (flags owned by sanawm.serve.cli): --verify reaches Runtime.load, a missing backend library is
    one line and exit 2, its own refusals too, and --help lists its flags."""
    pytest.importorskip("aiohttp")
    seen = {}

    def load(cls, bundle, backend="onnxruntime", **kw):
        seen.update(kw, backend=backend)
        raise MissingBackendError("backend 'tensorrt_rtx' needs the tensorrt_rtx package: pip install tensorrt-rtx")

    monkeypatch.setattr(Runtime, "load", classmethod(load))
    monkeypatch.delenv("SANAWM_SERVE_TOKEN", raising=False)
    rc, err, _ = invoke(cli, ["serve", "--bundle", str(tmp_path), "--backend", "tensorrt_rtx", "--verify"])
    assert rc == 2 and err.startswith("error: backend 'tensorrt_rtx' needs") and err.count("\n") == 1, err
    assert seen["verify"] is True and seen["backend"] == "tensorrt_rtx"
    rc, err, _ = invoke(cli, ["serve", "--bundle", str(tmp_path), "--host", "0.0.0.0"])
    assert rc == 2 and "set --token" in err and err.count("\n") == 1
    rc, _, out = invoke(cli, ["serve", "--help"])
    assert rc == 0 and "--max-sessions" in out and "--verify" in out
