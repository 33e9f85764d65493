"""NVFP4 in the ONNX graph: lowering the ``sanawm.NVFP4QDQ`` placeholders, and running FP4 graphs for checks.

Weights (a placeholder on an initializer) are folded into what TensorRT fuses into FP4 GEMMs and ONNX defines at
opset 23: an FP4 E2M1 initializer ``<layer>.weight_fp4 [out, in]``, its FP8 E4M3 block scales
``<layer>.weight.block_scale [out, in/16]`` and FP32 global scale, and two ``DequantizeLinear`` (scales, then the
FP4 values block-wise along ``in`` with ``block_size`` 16). The FP4 values and scales are computed by the torch fake
quant itself (``sanawm.export.nvfp4.nvfp4_quantize``), so graph and torch cannot disagree on them.

Activations need block scales computed at run time. ``form="trt"`` (what bundles hold, what TensorRT-RTX parses):
``Flatten -> trt.TRT_FP4DynamicQuantize(x, g) -> (FP4 x, FP8 scales) -> DequantizeLinear x2 -> Reshape``, the
dynamic-quantize layer TensorRT documents for NVFP4 activations. ``form="onnx"``: the same graph with that node
replaced by its definition in standard opset-23 ONNX (``fp4_dynamic_quantize_function``: block amax, FP8
QuantizeLinear of the scales, block-wise FLOAT4E2M1 QuantizeLinear). That definition is also how onnx's reference
evaluator runs a ``form="trt"`` graph (``run_reference``): ONNX Runtime has no FP4 kernels.
"""

from __future__ import annotations

import os

import numpy as np

from .nvfp4 import FP4_E2M1_MAX, NVFP4_BLOCK, NVFP4_OP, NVFP4_OPSET
from .quantize import PLACEHOLDER_DOMAIN, QuantizeError

TRT_DOMAIN = "trt"
TRT_FP4_OP = "TRT_FP4DynamicQuantize"
FORMS = ("trt", "onnx")
# export check bound, graph (reference evaluator) vs torch fake quant, free running: the quantized tensors agree bit
# for bit, but a 1-ulp FP32 difference upstream (matmul order) can move a value across an FP4 rounding boundary,
# a step of up to 1/6 of its block's range, and later layers carry it on; a wrong graph is O(1) off
NVFP4_CHECK_BOUND = 5e-2


def fp4_dynamic_quantize_function():
    """``trt.TRT_FP4DynamicQuantize(x [M, K], g) -> (x_fp4 [M, K], scale_fp8 [M, K/16])`` in standard ONNX.

    Block scale ``fp8(amax_b / 6 / g)`` (saturating), then ``x / (scale * g)`` rounded to FP4; a zero scale
    divides by 1 (its block is all zeros), as the torch fake quant does."""
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    def const(name, arr):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))

    nodes = [
        const("blk", np.array([-1, NVFP4_BLOCK], np.int64)),
        const("last", np.array([-1], np.int64)),
        const("six", np.array(FP4_E2M1_MAX, np.float32)),
        const("zero", np.array(0.0, np.float32)),
        const("one", np.array(1.0, np.float32)),
        const("z8", np.zeros((), ml_dtypes.float8_e4m3fn)),
        helper.make_node("Reshape", ["x", "blk"], ["xb"]),
        helper.make_node("Abs", ["xb"], ["xa"]),
        helper.make_node("ReduceMax", ["xa", "last"], ["am"], keepdims=0),
        helper.make_node("Shape", ["x"], ["rows"], end=1),
        helper.make_node("Concat", ["rows", "last"], ["sshape"], axis=0),
        helper.make_node("Reshape", ["am", "sshape"], ["amb"]),
        helper.make_node("Div", ["amb", "six"], ["bs"]),
        helper.make_node("QuantizeLinear", ["bs", "g", "z8"], ["scale_fp8"], saturate=1),
        helper.make_node("DequantizeLinear", ["scale_fp8", "g", "z8"], ["sf"]),
        helper.make_node("Equal", ["sf", "zero"], ["is0"]),
        helper.make_node("Where", ["is0", "one", "sf"], ["safe"]),
        helper.make_node("QuantizeLinear", ["x", "safe"], ["x_fp4"], axis=1, block_size=NVFP4_BLOCK,
                         output_dtype=TensorProto.FLOAT4E2M1),
    ]
    return helper.make_function(TRT_DOMAIN, TRT_FP4_OP, ["x", "g"], ["x_fp4", "scale_fp8"], nodes,
                                [helper.make_opsetid("", NVFP4_OPSET)], attributes=["axis", "block_size", "scale_type"])


def _weight_nodes(tag: str, w: np.ndarray, g: np.ndarray, out: str):
    """Initializers and nodes of one FP4 weight (values and scales from the torch fake quant)."""
    import ml_dtypes
    import torch
    from onnx import helper, numpy_helper

    from .nvfp4 import nvfp4_quantize

    if w.ndim != 2:
        raise QuantizeError(f"{tag}: NVFP4 weight has shape {list(w.shape)}; the wrappers hand the graph [out, in]")
    q, s8 = nvfp4_quantize(torch.tensor(w, dtype=torch.float32), torch.tensor(g, dtype=torch.float32))
    names = (f"{tag}_fp4", f"{tag}.block_scale", f"{tag}.global_scale", f"{tag}.block_scale_f")
    inits = [
        numpy_helper.from_array(q.numpy().astype(ml_dtypes.float4_e2m1fn), names[0]),  # exact: q is on the grid
        numpy_helper.from_array(s8.numpy().astype(ml_dtypes.float8_e4m3fn), names[1]),
        numpy_helper.from_array(g.astype(np.float32).reshape(()), names[2]),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", [names[1], names[2]], [names[3]], name=f"{tag}.scale.DQ"),
        helper.make_node("DequantizeLinear", [names[0], names[3]], [out], name=f"{tag}.DQ", axis=1, block_size=NVFP4_BLOCK),
    ]
    return inits, nodes


def _activation_nodes(tag: str, x: str, g: np.ndarray, out: str):
    """Initializers and nodes of one dynamically quantized activation (blocks along its last dim)."""
    from onnx import TensorProto, helper, numpy_helper

    gname = f"{tag}.global_scale"
    t = {k: f"{tag}.{k}" for k in ("flat", "shape", "fp4", "block_scale", "block_scale_f", "dq")}
    nodes = [
        helper.make_node("Flatten", [x], [t["flat"]], name=f"{tag}.flatten", axis=-1),
        helper.make_node(TRT_FP4_OP, [t["flat"], gname], [t["fp4"], t["block_scale"]], name=f"{tag}.Q", domain=TRT_DOMAIN,
                         axis=-1, block_size=NVFP4_BLOCK, scale_type=TensorProto.FLOAT8E4M3FN),
        helper.make_node("DequantizeLinear", [t["block_scale"], gname], [t["block_scale_f"]], name=f"{tag}.scale.DQ"),
        helper.make_node("DequantizeLinear", [t["fp4"], t["block_scale_f"]], [t["dq"]], name=f"{tag}.DQ", axis=-1,
                         block_size=NVFP4_BLOCK),
        helper.make_node("Shape", [x], [t["shape"]], name=f"{tag}.shape"),
        helper.make_node("Reshape", [t["dq"], t["shape"]], [out], name=f"{tag}.unflatten"),
    ]
    return [numpy_helper.from_array(g.astype(np.float32).reshape(()), gname)], nodes


def lower_nvfp4_placeholders(model, form: str = "trt"):
    """Rewrite ``sanawm.NVFP4QDQ`` placeholders (see the module docstring); bumps the graph to opset 23 and IR 11.

    Returns the model (modified in place); a model without NVFP4 placeholders is returned unchanged."""
    from onnx import helper

    if form not in FORMS:
        raise QuantizeError(f"unknown NVFP4 graph form {form!r}; choose one of {FORMS}")
    from .onnx_index import GraphIndex

    g = model.graph
    idx = GraphIndex(g)
    if not any(n.domain == PLACEHOLDER_DOMAIN and n.op_type == NVFP4_OP for n in idx.nodes):
        return model
    const_array = idx.const_array

    new_nodes, new_inits, drop = [], [], set()
    for n in idx.nodes:
        if not (n.domain == PLACEHOLDER_DOMAIN and n.op_type == NVFP4_OP):
            new_nodes.append(n)
            continue
        tag = {a.name: helper.get_attribute_value(a) for a in n.attribute}["tag"]
        tag = tag.decode() if isinstance(tag, bytes) else tag
        x, s = n.input[0], n.input[1]
        gs = const_array(s)
        if gs is None:
            raise QuantizeError(f"{tag}: NVFP4 global scale {s!r} is not a constant; scales must be buffers")
        w = const_array(x)
        make = _weight_nodes if w is not None else _activation_nodes
        i_, n_ = make(tag, w, gs, n.output[0]) if w is not None else make(tag, x, gs, n.output[0])
        new_inits += i_
        new_nodes += n_
        for used in ([x] if w is not None else []) + [s]:
            idx.release(used, drop)
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [t for t in g.initializer if t.name not in drop] + new_inits
    del g.initializer[:]
    g.initializer.extend(keep)
    opsets = {o.domain: o.version for o in model.opset_import if o.domain != PLACEHOLDER_DOMAIN}
    opsets[""] = max(opsets.get("", NVFP4_OPSET), NVFP4_OPSET)
    opsets[TRT_DOMAIN] = 1
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    model.ir_version = max(model.ir_version, 11)  # FLOAT4E2M1 tensors need IR 11
    used = {i for nd in g.node for i in nd.input} | {o for nd in g.node for o in nd.output}
    vis = [v for v in g.value_info if v.name in used]
    del g.value_info[:]
    g.value_info.extend(vis)
    return to_standard_form(model) if form == "onnx" else model


def to_standard_form(model):
    """The ``form="onnx"`` graph of a ``form="trt"`` one: each ``TRT_FP4DynamicQuantize`` inlined as its
    standard opset-23 definition (``fp4_dynamic_quantize_function``). Returns a new model."""
    import onnx.inliner

    m = onnx.ModelProto.FromString(model.SerializeToString())
    m.functions.append(fp4_dynamic_quantize_function())
    m = onnx.inliner.inline_local_functions(m)
    keep = [o for o in m.opset_import if o.domain != TRT_DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m


def has_fp4(model) -> bool:
    """Whether an ONNX model holds FP4 (which ONNX Runtime cannot run)."""
    from onnx import TensorProto

    return any(n.domain == TRT_DOMAIN and n.op_type == TRT_FP4_OP for n in model.graph.node) or any(
        t.data_type == TensorProto.FLOAT4E2M1 for t in model.graph.initializer)


def run_reference(path_or_model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an (FP4) ONNX graph under onnx's reference evaluator; ``TRT_FP4DynamicQuantize`` nodes run as their
    standard-ONNX definition. Returns {output name: array}. For small graphs: the evaluator is plain numpy."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    m = path_or_model
    if isinstance(m, (str, os.PathLike)):
        m = onnx.load(str(m), load_external_data=True)
    if any(n.domain == TRT_DOMAIN for n in m.graph.node) and not any(f.name == TRT_FP4_OP for f in m.functions):
        m = onnx.ModelProto.FromString(m.SerializeToString())
        m.functions.append(fp4_dynamic_quantize_function())
    ev = ReferenceEvaluator(m)
    names = [o.name for o in m.graph.output]
    want = {i.name for i in m.graph.input}
    return dict(zip(names, ev.run(names, {k: v for k, v in feeds.items() if k in want})))
