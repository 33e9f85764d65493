"""``sanawm-export --streamed``: the memory-bounded generator export gives the same bundle entry and the same numbers
on ONNX Runtime as the whole-model export of the same official-format safetensors file; bad combinations are refused
with a one-line message naming the fix; both exports are slow (two ~35 s traces each)."""

from __future__ import annotations

import json

import click
import pytest

pytest.importorskip("onnxruntime")

from sanawm.config import tiny  # noqa: E402
from sanawm.export import cli  # noqa: E402
from sanawm.export.families import generator_streamed  # noqa: E402
from sanawm.export.families.generator import generator_engine_feeds  # noqa: E402
from sanawm.export.onnx import run_onnx_cpu  # noqa: E402
from sanawm.export.scale import write_random_checkpoint  # noqa: E402
from sanawm.spec import generator_profiles  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

SAME_TOL = 1e-5  # the same FP32 maths from the same weights; only ORT's graph optimisations may differ


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    write_random_checkpoint(tiny(), path, seed=3)
    return path


def _export(ckpt, out, *extra, config="tiny") -> dict:
    argv = ["--checkpoint", str(ckpt), "--config", config, "--engines", "generator", "--out", str(out), *extra]
    assert cli.main(argv) == 0
    return json.loads((out / "manifest.json").read_text())


def _same_numbers(a_dir, b_dir, cfg) -> float:
    worst = 0.0
    for prof in generator_profiles(cfg):
        feeds = generator_engine_feeds(cfg, prof, seed=21, kv_dtype="float32")
        a, b = run_onnx_cpu(a_dir / "generator.onnx", feeds), run_onnx_cpu(b_dir / "generator.onnx", feeds)
        assert a.keys() == b.keys()
        worst = max([worst] + [rel_error(a[n], b[n]) for n in a])
    return worst


@pytest.mark.slow
def test_streamed_fp32_equals_whole_model_export(ckpt, tmp_path, monkeypatch):
    """Also the check path of a model above CHECK_WHOLE_BYTES: a softmax_every_n-block graph of the same path (the
    whole-graph check runs in the FP8 test)."""
    whole = _export(ckpt, tmp_path / "whole")
    monkeypatch.setattr(generator_streamed, "CHECK_WHOLE_BYTES", 0)
    streamed = _export(ckpt, tmp_path / "streamed", "--streamed")
    ew, es = whole["engines"]["generator"], streamed["engines"]["generator"]
    for k in ("kind", "inputs", "outputs", "profiles", "state_map", "precision"):
        assert es[k] == ew[k], k
    rec = es["files"]["onnx"]
    assert rec["streamed"] is True and rec["ort_check_depth"] == tiny().softmax_every_n < tiny().num_layers
    assert not list((tmp_path / "streamed").glob(".check-*"))  # the check graph is not left in the bundle
    assert rec["ort_check_rel_error"] < 1e-3 and rec["external_data"]
    assert streamed["generator_config"] == whole["generator_config"]
    assert _same_numbers(tmp_path / "whole", tmp_path / "streamed", tiny()) < SAME_TOL


@pytest.mark.parametrize("extra, fix", [
    (["--random"], "drop --streamed"),
    (["--checkpoint", "w.bin"], "convert it to .safetensors"),
    (["--checkpoint", "DIR"], "not a diffusers folder"),
    (["--checkpoint", "w.safetensors", "--precision", "nvfp4"], "change --precision"),
    (["--checkpoint", "w.safetensors", "--precision", "fp16"], "change --precision"),
    (["--checkpoint", "w.safetensors", "--fp8", "--act-scale", "percentile:99.9"], "drop --act-scale"),
])
def test_bad_combinations_refused(extra, fix, tmp_path):
    extra = [str(tmp_path) if x == "DIR" else x for x in extra]
    with pytest.raises(click.UsageError) as e:
        cli.parse_args(["--streamed", "--engines", "generator", "--config", "tiny", "--out", str(tmp_path / "b"),
                        *extra])
    assert fix in str(e.value) and "\n" not in str(e.value)


def test_refusal_reaches_the_command_line(tmp_path, capsys):
    assert cli.main(["--random", "--streamed", "--out", str(tmp_path / "b")]) == 2
    assert "--streamed" in capsys.readouterr().err


def _scales(onnx_path) -> dict:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))  # tiny graph: its external data loads with it
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith(".scale")}


@pytest.mark.slow
def test_streamed_fp8_matches_whole_model_fp8(tmp_path):
    """Block-streamed calibration (world config: its built-in calibration set) gives the whole-model path's FP8
    scales (weights and activations), layer set and policy, and the streamed graph passes the teacher-forced check."""
    import numpy as np

    from sanawm.config import world

    ckpt = tmp_path / "world.safetensors"
    write_random_checkpoint(world(), ckpt, seed=4)
    whole = _export(ckpt, tmp_path / "whole", "--fp8", "--calib-chunks", "1", config="world")
    streamed = _export(ckpt, tmp_path / "streamed", "--fp8", "--calib-chunks", "1", "--streamed", config="world")
    rw, rs = (m["engines"]["generator"]["files"]["onnx"] for m in (whole, streamed))
    assert rs["fp8_layers"] == rw["fp8_layers"] and rs["precision_policy"] == rw["precision_policy"]
    assert rs["ort_check_depth"] == world().num_layers and rs["ort_check_fp8_forced_rel_error"] < 1e-3
    assert rs["kv_max_abs"] == pytest.approx(rw["kv_max_abs"], rel=1e-5)
    sw, ss = _scales(tmp_path / "whole" / "generator.onnx"), _scales(tmp_path / "streamed" / "generator.onnx")
    assert sw.keys() == ss.keys() and len(sw) >= 2 * len(rw["fp8_layers"])
    for k in sw:
        np.testing.assert_allclose(ss[k], sw[k], rtol=1e-5, err_msg=k)
