"""NVFP4 (W4A4, 16-element blocks, FP8 block scales): torch fake quant vs onnx's reference evaluator on the exported
graph, the numerics against ml_dtypes' FP4 / FP8 casts, the standard-ONNX form, a TensorRT-RTX AOT build for sm_120,
and the CLI bundle that ONNX Runtime refuses."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ml_dtypes = pytest.importorskip("ml_dtypes")

from torch import nn  # noqa: E402

from sanawm.export.nvfp4 import (  # noqa: E402
    FP4_E2M1_MAX,
    NVFP4_BLOCK,
    fp4_e2m1_round,
    nvfp4_quantize,
    quantize_nvfp4,
)
from sanawm.export.nvfp4_onnx import (  # noqa: E402
    TRT_DOMAIN,
    lower_nvfp4_placeholders,
    run_reference,
    to_standard_form,
)
from sanawm.export.onnx import export_onnx, random_inputs, run_torch  # noqa: E402
from sanawm.export.quantize import FP8_E4M3_MAX, QuantizeError  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

# graph vs torch fake quant: the quantized tensors are bit-equal, so only FP32 accumulation order differs
GRAPH_TOL = 1e-5


@pytest.fixture(scope="module")
def toy_nvfp4(tmp_path_factory):
    from sanawm.export.toy import ToyStep, toy_step_io

    torch.manual_seed(0)
    io, model = toy_step_io(), ToyStep().eval()

    def calib(q):
        for s in range(4):
            run_torch(q, io, random_inputs(io, seed=100 + s))

    q, rep = quantize_nvfp4(model, calib)
    root = tmp_path_factory.mktemp("nvfp4")
    checks = [random_inputs(io, seed=s) for s in (11, 12)]
    res = export_onnx(q, io, root / "toy.onnx", check_inputs=checks)
    return dict(io=io, model=model, q=q, rep=rep, res=res, checks=checks, root=root)


def test_fp4_rounding_matches_ml_dtypes():
    # every multiple of 1/8 in [-8, 8] (all ties of the E2M1 grid, saturation) plus random values
    v = np.concatenate([np.arange(-64, 65) / 8.0, np.random.default_rng(0).normal(0, 3, 4096)]).astype(np.float32)
    ref = v.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    got = fp4_e2m1_round(torch.from_numpy(v)).numpy()
    np.testing.assert_array_equal(got, ref)


def _dynamic_quant_graph():
    """TRT_FP4DynamicQuantize -> DequantizeLinear x2 on a [M, K] input, as the lowering writes it."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("TRT_FP4DynamicQuantize", ["x", "g"], ["x4", "s8"], domain=TRT_DOMAIN, axis=-1,
                          block_size=NVFP4_BLOCK, scale_type=TensorProto.FLOAT8E4M3FN),
         helper.make_node("DequantizeLinear", ["s8", "g"], ["sf"]),
         helper.make_node("DequantizeLinear", ["x4", "sf"], ["y"], axis=-1, block_size=NVFP4_BLOCK)],
        "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64]),
               helper.make_tensor_value_info("g", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(TRT_DOMAIN, 1)])
    m.ir_version = 11
    return m


def test_activation_quant_graph_equals_torch_bit_for_bit():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (4, 64)).astype(np.float32)
    x[0, :16] = 0.0  # an all-zero block (scale 0)
    x[1, :16] *= 50.0  # beyond the calibrated range: block scale saturates at 448, values at +-6 steps
    x[2, 16:32] *= 1e-6  # block scale in FP8's subnormal range
    amax = float(np.abs(x[2:]).max())  # "calibration" saw rows 2.. only
    g = np.float32(amax / (FP4_E2M1_MAX * FP8_E4M3_MAX))
    got = run_reference(_dynamic_quant_graph(), {"x": x, "g": np.array(g)})["y"]
    want = torch.ops.sanawm.nvfp4_qdq(torch.from_numpy(x), torch.tensor(g), "t").numpy()
    np.testing.assert_array_equal(got, want)
    assert np.all(got[0, :16] == 0) and np.isfinite(got).all()
    assert np.abs(got[1, :16]).max() < np.abs(x[1, :16]).max()  # saturated, as the scheme says


def test_fake_quant_is_block_scaled_fp4():
    w = torch.randn(8, 64)
    g = w.abs().amax() / (FP4_E2M1_MAX * FP8_E4M3_MAX)
    q, s8 = nvfp4_quantize(w, g)
    assert s8.shape == (8, 64 // NVFP4_BLOCK)
    np.testing.assert_array_equal(s8.numpy(), s8.numpy().astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    np.testing.assert_array_equal(q.numpy(), q.numpy().astype(ml_dtypes.float4_e2m1fn).astype(np.float32))
    assert q.abs().amax(-1).min() >= 4.0  # each row's largest block value lands near the top of the FP4 range
    err = rel_error(w.numpy(), torch.ops.sanawm.nvfp4_qdq(w, g, "w").numpy())
    assert 0.02 < err < 0.2, err  # 4-bit rounding error, not a pass-through and not garbage


def test_toy_graph_equals_fake_quant_on_reference_evaluator(toy_nvfp4):
    res = toy_nvfp4["res"]
    assert res.opset == 23
    assert res.max_rel_error < GRAPH_TOL, res.rel_errors
    m = onnx.load(str(res.onnx_path))
    fp4 = [t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT4E2M1]
    assert sorted(fp4) == sorted(f"{n}.weight_fp4" for n in toy_nvfp4["rep"].layers)
    assert sum(n.op_type == "TRT_FP4DynamicQuantize" for n in m.graph.node) == len(toy_nvfp4["rep"].layers)
    # and the graph is NVFP4, not FP32: the fake quant differs from the float model by 4-bit error
    io, feeds = toy_nvfp4["io"], toy_nvfp4["checks"][0]
    assert rel_error(run_torch(toy_nvfp4["model"], io, feeds)["y"], run_reference(res.onnx_path, feeds)["y"]) > 1e-2


def test_standard_onnx_form_matches_trt_form(toy_nvfp4):
    m = onnx.load(str(toy_nvfp4["res"].onnx_path))
    std = to_standard_form(m)
    assert not any(n.domain == TRT_DOMAIN for n in std.graph.node)
    onnx.checker.check_model(std, full_check=True)
    feeds = toy_nvfp4["checks"][1]
    a, b = run_reference(m, feeds), run_reference(std, feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_lowering_form_onnx_is_standard(toy_nvfp4):
    """lower_nvfp4_placeholders(form="onnx") on a fresh export of one NVFP4 linear: no TensorRT op, valid ONNX."""
    from sanawm.export.nvfp4 import NVFP4Linear

    lin = NVFP4Linear.wrap(nn.Linear(32, 16), "lin")
    lin.input_amax, lin.calls = torch.tensor(2.0), 1
    lin.finish_calibration()
    prog = torch.onnx.export(lin.eval(), (torch.randn(3, 32),), dynamo=True, opset_version=21, optimize=True,
                             custom_translation_table=__import__("sanawm.export.nvfp4", fromlist=["x"]).translation_table())
    with pytest.raises(QuantizeError, match="unknown NVFP4 graph form"):
        lower_nvfp4_placeholders(prog.model_proto, form="fp4")
    m = lower_nvfp4_placeholders(prog.model_proto, form="onnx")
    assert not any(n.domain in (TRT_DOMAIN, "sanawm") for n in m.graph.node)
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(2).normal(0, 1, (3, 32)).astype(np.float32)
    got = run_reference(m, {m.graph.input[0].name: x})[m.graph.output[0].name]
    want = lin(torch.from_numpy(x)).detach().numpy()
    assert rel_error(want, got) < GRAPH_TOL


def test_point_conv_runs_as_linear_and_other_convs_are_refused():
    from sanawm.export.nvfp4 import NVFP4PointConv

    conv = nn.Conv2d(32, 16, 1)
    w = NVFP4PointConv.wrap(conv, "pc")
    x = torch.randn(2, 32, 3, 5)
    torch.testing.assert_close(w(x), conv(x), rtol=1e-5, atol=1e-5)  # mode "float": the same maths
    assert w.weight.data_ptr() == conv.weight.data_ptr()  # a view, not a copy
    with pytest.raises(QuantizeError, match="1x1"):
        NVFP4PointConv.wrap(nn.Conv2d(32, 16, 3), "k3")
    with pytest.raises(QuantizeError, match="multiple of the NVFP4 block"):
        NVFP4PointConv.wrap(nn.Conv2d(24, 16, 1), "c24")


def test_tensorrt_rtx_builds_nvfp4_for_sm120(toy_nvfp4, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed (pip install tensorrt-rtx)")
    from sanawm.export.build import build_engine

    r = build_engine(toy_nvfp4["res"].onnx_path, tmp_path / "toy.plan", backend="tensorrt_rtx",
                     compute_capabilities=["sm_120"])
    assert r.plan_path.stat().st_size > 1000
    assert r.build["compute_capabilities"] == ["sm_120"] and r.build["version"] == trt.__version__


def test_cli_nvfp4_bundle_refused_by_onnxruntime(tmp_path):
    from sanawm.bundle import Bundle, BundleError
    from sanawm.engines import load_executor
    from sanawm.export.cli import main

    out = tmp_path / "bundle"
    assert main(["--random", "--engines", "toy", "--out", str(out), "--precision", "nvfp4"]) == 0
    b = Bundle.open(out)
    e = b.engine("toy")
    assert e.precision == "nvfp4" and e.files["onnx"]["nvfp4_layers"] == ["q", "k", "v", "o", "ffn.0"]
    assert e.files["onnx"]["reference_check_rel_error"] < GRAPH_TOL and e.files["onnx"]["opset"] == 23
    with pytest.raises(BundleError, match="ONNX Runtime cannot run FP4.*tensorrt_rtx"):
        load_executor(b, "toy", "onnxruntime")
