"""ONNX export of a StepIO module: names, fixed shapes, external data, ORT CPU parity."""

import onnx
import pytest
import torch

from sanawm.bundle import onnx_external_locations
from sanawm.export.onnx import DEFAULT_OPSET, ExportError, export_onnx, run_onnx_cpu, run_torch
from sanawm.spec import StepIO, TensorSpec


def test_toy_fp32_matches_torch(toy_exports):
    r, io = toy_exports["fp32"], toy_exports["io"]
    assert set(r.rel_errors) == {t.name for t in io.outputs}
    assert r.max_rel_error < 1e-5, r.rel_errors


def test_graph_contract(toy_exports):
    r, io = toy_exports["fp32"], toy_exports["io"]
    m = onnx.load(str(r.onnx_path), load_external_data=False)
    assert [i.name for i in m.graph.input] == [t.name for t in io.inputs]
    assert [o.name for o in m.graph.output] == [t.name for t in io.outputs]
    for vi, t in zip(list(m.graph.input) + list(m.graph.output), io.inputs + io.outputs):
        assert [d.dim_value for d in vi.type.tensor_type.shape.dim] == list(t.shape), t.name  # fixed shapes
    assert {o.domain: o.version for o in m.opset_import}[""] == DEFAULT_OPSET
    assert not any(n.op_type == "Attention" for n in m.graph.node)  # decomposed at opset 21
    # weights are external, beside the graph, under a relative location
    assert r.external_data == [r.onnx_path.with_name("toy.onnx.data")]
    locs = onnx_external_locations(r.onnx_path)
    assert locs and all(loc == "toy.onnx.data" for _, loc in locs)


def test_state_chaining_through_onnx(toy_exports):
    """Two chained calls on ORT equal two chained calls in torch (state out -> state in)."""
    io, model, path = toy_exports["io"], toy_exports["model"], toy_exports["fp32"].onnx_path
    f = dict(toy_exports["checks"][0])
    ref1, got1 = run_torch(model, io, f), run_onnx_cpu(path, f)
    f_t, f_o = dict(f, h=ref1["h.out"]), dict(f, h=got1["h.out"])
    ref2, got2 = run_torch(model, io, f_t), run_onnx_cpu(path, f_o)
    torch.testing.assert_close(torch.from_numpy(got2["y"]), torch.from_numpy(ref2["y"]), rtol=1e-4, atol=1e-5)


class _Bad(torch.nn.Module):
    def forward(self, x):
        return x * 2, x * 3


def test_wrong_output_count_is_explained(tmp_path):
    io = StepIO((TensorSpec("x", "float32", (2,)),), (TensorSpec("y", "float32", (2,)),), {})
    with pytest.raises(ExportError, match="outputs"):
        export_onnx(_Bad(), io, tmp_path / "bad.onnx")
