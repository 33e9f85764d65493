"""FP8 E4M3 W8A8 with explicit Q/DQ: runs on ORT CPU, quantizes exactly the declared layers, keeps state FP32."""

import numpy as np
import onnx
import pytest
import torch

from sanawm.export.onnx import run_onnx_cpu, run_torch
from sanawm.export.quantize import (
    FP8_E4M3_MAX,
    QuantizeError,
    lower_fp8_placeholders,
    qdq_layers,
    quantize_fp8,
    select_quantizable,
)
from sanawm.export.toy import ToyStep
from sanawm.testing import rel_error

# FP8 E4M3 keeps 3 mantissa bits (relative rounding error up to 2^-4); with weights and activations both
# quantized the toy's outputs land at ~3-4% relative RMS error. Bound stated here:
FP8_REL_TOL = 8e-2


def test_fp8_graph_runs_and_differs_from_fp32_by_a_bounded_amount(toy_exports):
    io, model, path = toy_exports["io"], toy_exports["model"], toy_exports["fp8"].onnx_path
    for f in toy_exports["checks"]:
        ref, got = run_torch(model, io, f), run_onnx_cpu(path, f)
        for n in ("y", "k_chunk", "v_chunk", "h.out"):
            err = rel_error(ref[n], got[n])
            assert err < FP8_REL_TOL, (n, err)
        assert rel_error(ref["y"], got["y"]) > 1e-3, "FP8 output identical to FP32: nothing was quantized"


def test_ort_matches_torch_fake_quant(toy_exports):
    assert toy_exports["fp8"].max_rel_error < 1e-4, toy_exports["fp8"].rel_errors


def test_qdq_exactly_on_quantizable_layers(toy_exports):
    m = onnx.load(str(toy_exports["fp8"].onnx_path), load_external_data=False)
    layers = qdq_layers(m)
    want = {"q", "k", "v", "o", "ffn.0"}  # ToyStep.fp8_quantizable minus fp8_skip (ffn.2)
    assert toy_exports["report"].layers == ["q", "k", "v", "o", "ffn.0"]
    assert set(layers) == {f"{l}.input" for l in want} | {f"{l}.weight" for l in want}
    for tag, info in layers.items():
        assert info["zero_point_dtype"] == "FLOAT8E4M3FN", tag
        assert info["ops"] == (["DequantizeLinear"] if tag.endswith(".weight") else ["QuantizeLinear", "DequantizeLinear"])
    # no placeholder domain left, every Q/DQ node belongs to a named layer
    assert all(n.domain == "" for n in m.graph.node)
    assert sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node) == 3 * len(want)
    # weights are stored as FP8 initializers; the skipped layer keeps float weights
    inits = {t.name: t for t in m.graph.initializer}
    assert inits["q.weight_fp8"].data_type == onnx.TensorProto.FLOAT8E4M3FN
    scales = [t for n, t in inits.items() if n.endswith(".scale")]
    assert scales and all(t.data_type == onnx.TensorProto.FLOAT for t in scales)


def test_state_and_io_stay_float32(toy_exports):
    m = onnx.load(str(toy_exports["fp8"].onnx_path), load_external_data=False)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name != "pos":
            assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, vi.name
    got = run_onnx_cpu(toy_exports["fp8"].onnx_path, toy_exports["checks"][0])
    assert got["h.out"].dtype == np.float32


def test_selection_patterns():
    m = ToyStep()
    assert select_quantizable(m) == ["q", "k", "v", "o", "ffn.0"]
    assert select_quantizable(m, include=["re:[qk]"]) == ["q", "k"]
    assert select_quantizable(m, exclude=["o"]) == ["q", "k", "v", "ffn.0"]

    class Wrapper(torch.nn.Module):  # a step wrapper finds the model's own policy under its prefix
        def __init__(self):
            super().__init__()
            self.model = ToyStep()

    assert select_quantizable(Wrapper()) == ["model.q", "model.k", "model.v", "model.o", "model.ffn.0"]
    with pytest.raises(QuantizeError, match="matches no Linear"):
        select_quantizable(m, include=["blocks.*.qkv"])
    with pytest.raises(QuantizeError, match="declares no quantizable"):
        select_quantizable(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_layer_missed_by_calibration_is_an_error():
    m = ToyStep()
    with pytest.raises(QuantizeError, match="'q' never ran during calibration"):
        quantize_fp8(m, lambda q: None)


def test_scales_come_from_calibration_amax(toy_exports):
    q = toy_exports["qmodel"]
    amax = toy_exports["report"].input_amax["o"]
    assert amax > 0
    assert float(q.o.input_scale) == pytest.approx(amax / FP8_E4M3_MAX)
    assert q.o.weight_scale.shape == (32,)  # per output channel


def test_lowering_one_node_graph():
    """precondition: one placeholder on a graph input; under test: lowering; postcondition: Q -> DQ in fp8."""
    from onnx import TensorProto, helper, numpy_helper

    s = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    node = helper.make_node("FP8QDQ", ["x", "s"], ["y"], domain="sanawm", axis=-1, tag="lin.input")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [s])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("sanawm", 1)])
    m = lower_fp8_placeholders(m)
    assert [(n.op_type, n.name) for n in m.graph.node] == [("QuantizeLinear", "lin.input.Q"), ("DequantizeLinear", "lin.input.DQ")]
    assert [o.domain for o in m.opset_import] == [""]
    onnx.checker.check_model(m)
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.array([0.3, 1000.0, -3.3, 0.0], np.float32)})[0]
    np.testing.assert_array_equal(y, [0.3125, 224.0, -3.25, 0.0])  # e4m3 rounding, saturation at 448 * 0.5
