"""Memory-bounded FP8 / FP32 export: trace a weightless module, calibrate block by block, stream the weights.

Why: the whole-model path (``sanawm.export.onnx.export_onnx``) holds the FP32 model, its FP8 deep copy and the
written graph reloaded with its data: several times the checkpoint, over 150 GB for the refiner. Here peak host
memory is about one block's weights + the calibration activations + a fixed overhead, whatever the depth:

1. the module is built with ghost parameters (``sanawm.export.weights_stream``); FP8 wrappers are swapped in place
   (no copy);
2. ``calibrate_streamed``: resident weights (embedders, final layer) are loaded; each block's weights are loaded by
   a forward pre-hook just before the block runs and dropped after it; weight scales come from each block's
   weights as it passes; activation amax as in ``quantize_fp8``;
3. ``export_streamed``: ``torch.onnx.export`` traces the ghost module (shapes only); every weight initializer of the
   ONNX IR becomes a lazy tensor read from the checkpoint when it is written; FP8 weights are quantized inside that
   lazy read; ``onnx_ir.save`` writes them one at a time into ``<name>.onnx.data``.

The graph is the one ``export_onnx`` writes (same Q/DQ names and layout, ``sanawm.export.quantize``), so the checks
(``run_onnx_cpu``, ``fp8_layer_check``) apply; for a model too large to check whole, check a depth-reduced one from
this same code path (the tests do, at full width).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..spec import StepIO
from .quantize import (FP8_E4M3_MAX, PLACEHOLDER_DOMAIN, PLACEHOLDER_OP, CalibrationReport, QuantizeError,
                       prepare_fp8_inplace, quantizers, select_quantizable)
from .weights_stream import WeightSource, release_freed_weights, repeated_units

log = logging.getLogger("sanawm.export")


class _UnitStreamer:
    """Hooks that load a unit's (block's) weights before it runs and drop them after."""

    def __init__(self, src: WeightSource, units):
        self.src, self.hooks, self.ran = src, [], {u: 0 for u, _ in units}

        def load(names, u):
            self.ran[u] += 1
            src.materialize_(names)

        for uname, unit in units:
            pnames = [f"{uname}.{n}" for n, _ in unit.named_parameters()]
            self.hooks.append(unit.register_forward_pre_hook(lambda m, a, p=pnames, u=uname: load(p, u)))
            self.hooks.append(unit.register_forward_hook(lambda m, a, o, p=pnames: src.ghost_(p)))

    def remove(self):
        for h in self.hooks:
            h.remove()


class _OnDevice:
    """Calibration forwards on ``device`` (``--calib-device``): the module's buffers moved there; the tensor inputs
    of every call of an ``entry`` module moved there and its outputs brought back to the CPU (so a calibration loop
    written for the CPU runs unchanged); ``restore`` puts the buffers (RoPE tables, the amax just gathered) back.

    ``entry`` picks the modules the loop calls: by default ``module`` itself; a loop that wraps the model in another
    module (the generator's ``GeneratorStep``) names that wrapper. Global module hooks, because such a wrapper is
    built inside the loop, after this object exists."""

    def __init__(self, module: nn.Module, device: torch.device, entry: Callable[[nn.Module], bool] | None = None):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self.module, self.device = module, device
        self._buffers(device)
        is_entry = entry or (lambda m: m is module)
        mv = lambda x, d: x.to(d) if isinstance(x, torch.Tensor) else x  # noqa: E731

        def inputs(m, args):
            return tuple(mv(a, device) for a in args) if is_entry(m) else None

        def outputs(m, args, out):
            if not is_entry(m):
                return None
            return type(out)(mv(o, "cpu") for o in out) if isinstance(out, (tuple, list)) else mv(out, "cpu")

        self.hooks = [register_module_forward_pre_hook(inputs), register_module_forward_hook(outputs)]

    def _buffers(self, device) -> None:
        for m in self.module.modules():
            for k, b in m._buffers.items():
                if b is not None:
                    m._buffers[k] = b.to(device)

    def restore(self) -> None:
        for h in self.hooks:
            h.remove()
        self._buffers(torch.device("cpu"))


def calibrate_streamed(module: nn.Module, src: WeightSource, calibrate: Callable[[nn.Module], None] | None,
                       names, device: str | torch.device = "cpu", entry=None) -> CalibrationReport:
    """FP8 calibration of a ghost ``module`` (wrappers already in place) holding one unit's weights at a time.

    ``calibrate=None``: weight scales only (FP32 export needs nothing; tests of the weight path). ``device``: where
    the calibration forwards run (each unit's weights go there as they load; weight scales and amax end on the CPU);
    ``entry``: which module calls carry the loop's tensors there and back (``_OnDevice``)."""
    device = torch.device(device)
    units = repeated_units(module)
    in_unit = {f"{u}.{n}" for u, m in units for n, _ in m.named_parameters()}
    resident = [n for n in src.params if n not in in_unit]
    qs = quantizers(module)
    src.device = torch.device("cpu")  # weight scales are computed (and kept) on the CPU
    src.materialize_(resident)
    try:
        # weight scales: the wrappers computed them from ghosts; redo them from the real weights, unit by unit
        unit_of = {q: next((u for u, _ in units if q.startswith(u + ".")), None) for q in qs}
        for u, m in [(None, None)] + units:
            pn = [f"{u}.{n}" for n, _ in m.named_parameters()] if m is not None else []
            src.materialize_(pn)
            for qn, q in qs.items():
                if unit_of[qn] == u:
                    q._init_q(q.qname, q.per_channel)
            src.ghost_(pn)
        if calibrate is not None:
            on_dev = None
            if device.type != "cpu":
                src.device = device
                src.materialize_(resident)  # the resident weights again, on the device
                on_dev = _OnDevice(module, device, entry)
            streamer = _UnitStreamer(src, units)
            for q in qs.values():
                q.mode = "calib"
            try:
                with torch.no_grad():
                    calibrate(module)
            finally:
                streamer.remove()
                if on_dev is not None:
                    on_dev.restore()
                src.device = torch.device("cpu")
            idle = [u for u, n in streamer.ran.items() if n == 0]
            if idle:
                raise QuantizeError(
                    f"units {idle[:3]} (children of a ModuleList) never ran as modules during calibration, so their "
                    "weights were never loaded; streamed calibration loads weights per unit: call each block as a "
                    "module (block(x), not block[...] parts)")
            for q in qs.values():
                q.finish_calibration()
    finally:
        src.ghost_(resident)
    return CalibrationReport(list(names), {n: float(m.input_amax) for n, m in qs.items()}, {n: m.calls for n, m in qs.items()})


# -------------------------------------------------------------------------------------- ONNX IR side
def _lazy_weights(model, src: WeightSource) -> int:
    """Replace the value of every initializer named like a parameter with a lazy read from the checkpoint."""
    import onnx_ir as ir

    n = 0
    for name, v in model.graph.initializers.items():
        if name not in src.params:
            continue
        shape = tuple(src.params[name].shape)
        v.const_value = ir.LazyTensor(lambda name=name: ir.tensor(src.load(name).numpy()), ir.DataType.FLOAT,
                                      ir.Shape(shape), name=name)
        n += 1
    return n


def _fp8_weight(w_tensor, scale: np.ndarray, axis: int, name: str):
    import ml_dtypes
    import onnx_ir as ir

    def make():
        w = w_tensor.numpy().astype(np.float32)
        sb = scale
        if scale.ndim == 1:
            shp = [1] * w.ndim
            shp[axis % w.ndim] = -1
            sb = scale.reshape(shp)
        return ir.tensor(np.clip(w / sb, -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn))

    return ir.LazyTensor(make, ir.DataType.FLOAT8E4M3FN, w_tensor.shape, name=name)


def lower_fp8_ir(model) -> int:
    """``sanawm.FP8QDQ`` placeholders -> native Q/DQ on an ONNX IR model whose weights may be lazy (the ``onnx_ir``
    counterpart of ``quantize.lower_fp8_placeholders``, same names and layout). Returns the number lowered."""
    import ml_dtypes
    import onnx_ir as ir

    g = model.graph
    count = 0
    for node in list(g):
        if node.domain != PLACEHOLDER_DOMAIN:
            continue
        if node.op_type != PLACEHOLDER_OP:
            raise QuantizeError(f"unknown placeholder {node.domain}.{node.op_type}")
        tag = node.attributes["tag"].as_string()
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else -1
        x, s = node.inputs[0], node.inputs[1]
        if s.const_value is None:
            raise QuantizeError(f"{tag}: FP8 scale {s.name!r} is not a constant; scales must be buffers")
        scale = s.const_value.numpy().astype(np.float32)
        sv = ir.Value(name=f"{tag}.scale", const_value=ir.tensor(scale, name=f"{tag}.scale"))
        zv = ir.Value(name=f"{tag}.zero_point",
                      const_value=ir.tensor(np.zeros(scale.shape, ml_dtypes.float8_e4m3fn), name=f"{tag}.zero_point"))
        for v in (sv, zv):
            v.shape, v.type = v.const_value.shape, ir.TensorType(v.const_value.dtype)
            g.register_initializer(v)
        qattrs = {"axis": axis} if scale.ndim == 1 else {}
        out = node.outputs[0]
        if x.const_value is not None and x.is_initializer():  # weight: FP8 initializer + DequantizeLinear
            wv = ir.Value(name=f"{tag}_fp8", const_value=_fp8_weight(x.const_value, scale, axis, f"{tag}_fp8"))
            wv.shape, wv.type = ir.Shape(x.const_value.shape), ir.TensorType(ir.DataType.FLOAT8E4M3FN)
            g.register_initializer(wv)
            new = [ir.node("DequantizeLinear", [wv, sv, zv], attributes=qattrs, name=f"{tag}.DQ")]
        else:
            q = ir.node("QuantizeLinear", [x, sv, zv], attributes={"saturate": 1, **qattrs}, name=f"{tag}.Q")
            new = [q, ir.node("DequantizeLinear", [q.outputs[0], sv, zv], attributes=qattrs, name=f"{tag}.DQ")]
        new[-1].outputs[0].name = f"{tag}.dq"
        new[-1].outputs[0].shape, new[-1].outputs[0].type = out.shape, out.type
        ir.convenience.replace_nodes_and_values(g, node, [node], new, [out], [new[-1].outputs[0]])
        for v in (x, s):
            if v.is_initializer() and not v.uses():
                g.initializers.pop(v.name)
        count += 1
    model.opset_imports.pop(PLACEHOLDER_DOMAIN, None)
    return count


def export_streamed(
    module: nn.Module,
    io: StepIO,
    path: str | os.PathLike,
    src: WeightSource,
    *,
    sample_inputs: dict[str, np.ndarray],
    opset: int | None = None,
    dims: Mapping[str, tuple[int, int]] | None = None,
) -> Path:
    """Export a ghost ``module`` (FP32 or FP8 wrappers, calibrated) to ``path`` + ``path.data``, streaming its
    weights from ``src``. No ONNX Runtime check here: run one on a depth-reduced export of the same code path."""
    import onnx
    import onnx_ir as ir

    from . import nvfp4, quantize
    from .onnx import DEFAULT_OPSET, _fix_io, _symbolic, _torch_args, light_optimize

    t0 = time.time()
    release_freed_weights()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dynamic_shapes = None
    if dims is not None or _symbolic(io):
        from .dynamic import torch_dynamic_shapes

        dynamic_shapes = torch_dynamic_shapes(module, io, dims or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module, _torch_args(io, sample_inputs), input_names=[t.name for t in io.inputs],
            output_names=[t.name for t in io.outputs], opset_version=opset or DEFAULT_OPSET, dynamo=True,
            dynamic_shapes=dynamic_shapes, external_data=True, optimize=False, verbose=False,
            custom_translation_table={**quantize.translation_table(), **nvfp4.translation_table()})
    model = prog.model
    bound = _lazy_weights(model, src)
    # the folder would read (and keep) lazy weights: nodes on them are left for ORT / TensorRT to fold
    light_optimize(model, should_fold=lambda n: False if any(
        v is not None and isinstance(v.const_value, ir.LazyTensor) for v in n.inputs) else None)
    lowered = lower_fp8_ir(model)
    data_name = path.name + ".data"
    for f in (path, path.with_name(data_name)):
        if f.exists():
            f.unlink()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / path.name
        ir.save(model, raw, external_data=data_name, size_threshold_bytes=1024)
        proto = onnx.load(str(raw), load_external_data=False)
        _fix_io(proto, io)
        onnx.save_model(proto, str(path))
        os.replace(Path(tmp) / data_name, path.with_name(data_name))
    onnx.checker.check_model(str(path))
    log.info("streamed %s: %d weights, %d FP8 placeholders lowered, %.1fs", path.name, bound, lowered, time.time() - t0)
    return path


def quantize_streamed(module: nn.Module, src: WeightSource, calibrate, *, include=None, exclude=None,
                      device: str | torch.device = "cpu", entry=None) -> CalibrationReport:
    """FP8 wrappers in place on a ghost module, then ``calibrate_streamed`` (forwards on ``device``)."""
    release_freed_weights()
    names = select_quantizable(module, include, exclude)
    prepare_fp8_inplace(module, names)
    return calibrate_streamed(module, src, calibrate, names, device, entry)
