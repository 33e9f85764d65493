"""Per-layer precision policy and activation-scale rules: which layers stay high precision, percentile scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sanawm.config import tiny
from sanawm.export.act_scale import (HIST_BINS, ActScaleError, act_histogram, parse_act_scale,
                                     percentile_from_histogram)
from sanawm.export.precision_policy import PolicyError, PrecisionPolicy
from sanawm.export.quantize import FP8_E4M3_MAX, quantize_fp8, select_quantizable
from sanawm.export.toy import ToyStep, toy_step_io
from sanawm.models.generator_engine import GeneratorEngine
from sanawm.models.transformer import SanaWMGenerator


def test_act_scale_spellings():
    assert parse_act_scale("max") is None and parse_act_scale("percentile:99.99") == 99.99
    for bad in ("min", "percentile:0", "percentile:101", "percentile:x", "p99"):
        with pytest.raises(ActScaleError, match="use max | percentile:P"):
            parse_act_scale(bad)


def test_histogram_percentile_matches_numpy_within_a_bin():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    x[:15] = 80.0  # outliers: the max is 80, the 99.99th percentile stays near 4
    amax = float(x.abs().max())
    got = percentile_from_histogram(act_histogram(x, amax), amax, 99.99)
    want = float(np.percentile(x.abs().numpy(), 99.99))
    assert abs(got - want) <= amax / HIST_BINS + 1e-6, (got, want)
    assert got < amax / 10
    assert percentile_from_histogram(act_histogram(x, amax), amax, 100.0) == amax


def _toy_calib(outlier: float):
    from sanawm.export.onnx import random_inputs, run_torch

    io = toy_step_io()

    def calib(q):
        for s in range(4):
            f = random_inputs(io, seed=200 + s)
            f["x"][0, 0, 0] = outlier  # one huge activation in the first layer's input
            run_torch(q, io, f)

    return calib


def test_percentile_rule_clips_an_outlier_that_max_keeps():
    torch.manual_seed(0)
    m = ToyStep().eval()
    calib = _toy_calib(500.0)
    qmax, rmax = quantize_fp8(m, calib)
    qpct, rpct = quantize_fp8(m, calib, act_scale="percentile:99")  # 768 values: 1 outlier is the top 0.13%
    assert rmax.input_amax == rpct.input_amax  # pass 1 is the same
    assert float(qmax.q.input_scale) * FP8_E4M3_MAX == pytest.approx(rmax.input_amax["q"])
    assert rmax.input_amax["q"] > 400.0  # q sees x (plus a small time embedding)
    assert rpct.input_clip["q"] < rmax.input_amax["q"] / 20  # the outlier no longer sets the scale
    assert float(qpct.q.input_scale) * FP8_E4M3_MAX == pytest.approx(rpct.input_clip["q"])


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return GeneratorEngine(SanaWMGenerator(tiny())).eval()


def test_first_and_last_blocks_stay_high_precision(engine):
    pol = PrecisionPolicy.parse("embedders,final,first:1,last:1")
    chosen = select_quantizable(engine, exclude=pol.exclude_patterns(engine))
    blocks = {int(n.split("blocks.")[1].split(".")[0]) for n in chosen}
    assert blocks == {1, 2}  # tiny has 4 blocks
    default = select_quantizable(engine, exclude=PrecisionPolicy.parse().exclude_patterns(engine))
    assert {int(n.split("blocks.")[1].split(".")[0]) for n in default} == {0, 1, 2, 3}
    assert set(chosen) < set(default)
    assert pol.to_manifest(engine)["kept_blocks"] == [0, 3]


def test_module_patterns_and_block_ranges(engine):
    pol = PrecisionPolicy.parse("blocks:1-2,blocks.*.cross_attn.*")
    chosen = select_quantizable(engine, exclude=pol.exclude_patterns(engine))
    assert not any("cross_attn" in n for n in chosen)
    assert {int(n.split("blocks.")[1].split(".")[0]) for n in chosen} == {0, 3}


def test_bad_policies_are_refused(engine):
    with pytest.raises(PolicyError, match="'middle:2' is not understood"):
        PrecisionPolicy.parse("middle:2")
    with pytest.raises(ActScaleError):
        PrecisionPolicy.parse(None, "mean")
    with pytest.raises(PolicyError, match=r"match no Linear/Conv layer.*step\.model\.blocks\.0\.attn\.qkv|match no"):
        PrecisionPolicy.parse("blocks.*.no_such_layer").exclude_patterns(engine)


def test_cli_flags_resolve_and_refuse():
    import click

    from sanawm.export.cli import parse_args

    a = parse_args(["--random", "--out", "b", "--fp8", "--keep-high-precision", "first:2", "--act-scale",
                    "percentile:99.99"])
    assert a.policy.keep == ("first:2",) and a.policy.percentile == 99.99
    with pytest.raises(click.UsageError, match="add --precision fp8"):
        parse_args(["--random", "--out", "b", "--keep-high-precision", "first:2"])
    with pytest.raises(click.UsageError, match="not understood"):
        parse_args(["--random", "--out", "b", "--fp8", "--act-scale", "avg"])
    with pytest.raises(click.UsageError, match="random weights calibrate on random inputs"):
        parse_args(["--random", "--out", "b", "--fp8", "--calib-cameras", "w-24"])


def test_percentile_scales_and_kept_layer_export_to_standard_onnx(tmp_path):
    """The policy changes scales and which layers get Q/DQ, not the graph's kind: ORT runs it and matches torch's
    fake quant as closely as the default export does."""
    import onnx

    from sanawm.export.onnx import export_onnx, random_inputs
    from sanawm.export.quantize import qdq_layers

    torch.manual_seed(0)
    io = toy_step_io()
    q, rep = quantize_fp8(ToyStep().eval(), _toy_calib(500.0), exclude=["o"], act_scale="percentile:99")
    checks = [random_inputs(io, seed=s) for s in (11, 12)]
    res = export_onnx(q, io, tmp_path / "toy.onnx", check_inputs=checks)
    assert res.max_rel_error < 1e-4, res.rel_errors
    tags = qdq_layers(onnx.load(str(tmp_path / "toy.onnx"), load_external_data=False))
    assert not any(t.startswith("o.") for t in tags) and "q.input" in tags
