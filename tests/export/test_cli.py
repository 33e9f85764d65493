"""sanawm-export end to end on the toy engine: bundle written, validated, stages skipped when up to date."""

import json
import logging

import click
import pytest

from sanawm.bundle import Bundle, BackendEnv
from sanawm.engines import load_executor
from sanawm.export.cli import main, parse_args
from sanawm.export.onnx import random_inputs

trt = pytest.importorskip("tensorrt_rtx")


def test_cli_toy_fp8_bundle(tmp_path, caplog):
    out = tmp_path / "bundle"
    args = ["--random", "--engines", "toy", "--out", str(out), "--backends", "onnxruntime,tensorrt_rtx",
            "--fp8", "--rtx-targets", "sm_89", "--timing-cache", str(tmp_path / "tc.cache")]
    assert main(args) == 0
    b = Bundle.open(out, environment=BackendEnv("tensorrt_rtx", trt.__version__, "sm_89"))
    e = b.engine("toy")
    assert e.precision == "fp8" and e.state_map == {"h.out": "h"} and "fixed shapes" in e.notes
    assert e.files["onnx"]["fp8_layers"] == ["q", "k", "v", "o", "ffn.0"]
    assert e.files["tensorrt_rtx"]["build"]["compute_capabilities"] == ["sm_89"]
    y = load_executor(b, "toy", "onnxruntime").run(random_inputs(e.step_io))["y"]
    assert y.shape == (1, 6, 32)

    # second run: both stages skipped, one log line each
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sanawm.export"):
        assert main(args) == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert any("[toy] onnx: up to date" in m for m in msgs)
    assert any("[toy] tensorrt_rtx plan: up to date" in m for m in msgs)

    # an altered plan is rebuilt on the next run (and refused by the reader until then)
    plan = out / "toy.tensorrt_rtx.plan"
    data = bytearray(plan.read_bytes())
    data[100] ^= 1
    plan.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="altered"):
        Bundle.open(out, verify_hashes=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sanawm.export"):
        assert main(args) == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert any("[toy] onnx: up to date" in m for m in msgs)
    assert any("[toy] tensorrt_rtx plan: building" in m for m in msgs)
    Bundle.open(out)

    # a different precision re-exports
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sanawm.export"):
        assert main([a for a in args if a != "--fp8"] + ["--precision", "fp32"]) == 0
    assert any("[toy] onnx: exporting" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "manifest.json").read_text())["engines"]["toy"]["precision"] == "fp32"


def test_cli_rejects_toy_with_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "x.pth"), "--engines", "toy", "--out", str(tmp_path)]) == 2
    assert "engine 'toy' has no checkpoint; use --random" in capsys.readouterr().err


def test_cli_spellings_of_the_tiny_model_and_backends():
    a = parse_args(["--checkpoint", "tiny", "--out", "b", "--backend", "onnx,tensorrt-rtx"])
    assert a.random and a.checkpoint is None and a.config == "tiny"
    assert a.backends == ["onnxruntime", "tensorrt_rtx"]
    with pytest.raises(click.UsageError, match="conflicts with --config full"):
        parse_args(["--checkpoint", "tiny", "--config", "full", "--out", "b"])


def test_cli_names_the_missing_backend_library(monkeypatch, tmp_path, capsys):
    import sanawm.engines.tensorrt.library as trt_library

    monkeypatch.setitem(trt_library._TRT_MODULES, "tensorrt_rtx", "no_such_module_xyz")
    assert main(["--random", "--engines", "toy", "--out", str(tmp_path / "b"),
                 "--backends", "onnxruntime,tensorrt_rtx"]) == 2
    msg = capsys.readouterr().err
    assert msg.startswith("error: ") and msg.count("\n") == 1
    assert "'tensorrt_rtx' needs" in msg and "pip install tensorrt-rtx" in msg
    assert not (tmp_path / "b").exists()  # refused before any work


@pytest.mark.slow
def test_cli_tiny_generator_fp16_onnxruntime(tmp_path, monkeypatch):
    """Generator engines through GeneratorStep on the tiny config in FP16 (range check, export and ORT check
    inside the CLI; FP32 goes through the CLI in tests/test_demo.py), written to a relative --out as
    `sanawm demo` does (artifact paths were once joined onto the relative root twice)."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "gen"
    assert main(["--checkpoint", "tiny", "--out", "gen", "--backend", "onnx", "--precision", "fp16",
                 "--engines", "generator"]) == 0
    b = Bundle.open(out)
    assert set(b.engines) == {"generator"}
    assert b.generator_config.num_layers == 4
    for name in b.engines:
        f = b.engine(name).files["onnx"]
        assert b.engine(name).precision == "fp16" and len(f["fp16_layers"]) == 52
        assert f["ort_check_rel_error"] < 5e-3 and 0 < f["fp16_max_activation"] < 65504 / 4
