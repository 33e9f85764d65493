"""FP8 E4M3 W8A8 post-training quantization with explicit Q/DQ in the ONNX graph (build side).

Route (and why): the quantizable layers are swapped for ``FP8Linear``/``FP8Conv`` wrappers that call one
``torch.library`` custom op, ``sanawm::fp8_qdq(x, scale, axis, tag)`` (fake quant: saturate, round to
E4M3, rescale). Its ONNX translation is a placeholder node ``sanawm.FP8QDQ`` in our own domain, which
the dynamo exporter emits without touching torchlib's opset (no "Opset mismatch when inlining" patch) and
which the optimizer leaves alone. ``lower_fp8_placeholders`` then rewrites each placeholder into native
``QuantizeLinear(zero_point FLOAT8E4M3FN) -> DequantizeLinear`` nodes named ``<layer>.<input|weight>.Q/.DQ``;
a weight placeholder is folded into an FP8 initializer + ``DequantizeLinear`` (4x smaller file, the
layout TensorRT fuses into FP8 GEMMs). The layer choice is made on module names in torch, where it is
known, rather than by pattern-matching MatMul/Gemm nodes in the exported graph, whose weight names the
exporter's constant folding can change. Torch fake quant and the ORT CPU graph agree to rounding.

Numerics: activations per-tensor (scale = amax / 448 from calibration), weights per output channel
(or per tensor); scales FP32 so ORT CPU runs the graph (it has no BF16 Q/DQ). Everything else, and all
carried state, stays FP32. Which layers: ``include``/``exclude`` patterns (fnmatch on module names, or
``re:<regex>``), defaulting to the model's ``fp8_quantizable`` / ``fp8_skip`` class attributes.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .act_scale import act_histogram, parse_act_scale, percentile_pass

log = logging.getLogger("sanawm.export")

FP8_E4M3_MAX = 448.0
PLACEHOLDER_DOMAIN = "sanawm"
PLACEHOLDER_OP = "FP8QDQ"


class QuantizeError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ custom op
@torch.library.custom_op("sanawm::fp8_qdq", mutates_args=())
def fp8_qdq(x: torch.Tensor, scale: torch.Tensor, axis: int, tag: str) -> torch.Tensor:
    """Fake-quantize ``x`` to FP8 E4M3 and back: ``clamp(x / s, +-448) -> e4m3 (RNE) -> * s``.

    ``scale`` is a scalar (per tensor) or a vector along ``axis`` (per channel). ``tag`` names the node.
    """
    s = scale
    if scale.dim() == 1:
        shape = [1] * x.dim()
        shape[axis % x.dim()] = -1
        s = scale.reshape(shape)
    q = (x.float() / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.float() * s).to(x.dtype)


@fp8_qdq.register_fake
def _fp8_qdq_fake(x, scale, axis, tag):
    return torch.empty_like(x)


_translation = None


def translation_table() -> dict:
    """``custom_translation_table`` entry for ``torch.onnx.export``: fp8_qdq -> placeholder node."""
    global _translation
    if _translation is None:
        from ._fp8_onnxscript import fp8_qdq_onnx

        _translation = {torch.ops.sanawm.fp8_qdq.default: fp8_qdq_onnx}
    return _translation


# ------------------------------------------------------------------------------------------ wrappers
class _FP8Base(nn.Module):
    """Shared calibration / fake-quant logic. ``mode``: "float" | "calib" | "quant"."""

    def _init_q(self, name: str, per_channel: bool):
        self.qname = name
        self.per_channel = per_channel
        self.mode = "float"
        self.register_buffer("input_amax", torch.zeros(()))
        self.register_buffer("input_scale", torch.ones(()))
        w = self.weight.detach().float()
        if per_channel:
            amax = w.reshape(w.shape[0], -1).abs().amax(1)
        else:
            amax = w.abs().amax()
        self.register_buffer("weight_scale", torch.clamp(amax, min=1e-12) / FP8_E4M3_MAX)
        self.calls = 0

    def _q_input(self, x):
        if self.mode == "calib":
            if getattr(self, "hist", None) is not None:  # second pass of a percentile rule (sanawm.export.act_scale)
                self.hist += act_histogram(x, float(self.input_amax))
                return x
            self.input_amax = torch.maximum(self.input_amax, x.detach().abs().amax().float())
            self.calls += 1
            return x
        if self.mode == "quant":
            return torch.ops.sanawm.fp8_qdq(x, self.input_scale, -1, f"{self.qname}.input")
        return x

    def _q_weight(self):
        if self.mode == "quant":
            return torch.ops.sanawm.fp8_qdq(self.weight, self.weight_scale, 0, f"{self.qname}.weight")
        return self.weight

    def finish_calibration(self):
        if self.calls == 0:
            raise QuantizeError(
                f"layer {self.qname!r} never ran during calibration; make the calibration loop call every "
                "path of the model (all timesteps, the t = 0 pass, first and later chunks) or exclude the layer"
            )
        amax = float(self.input_amax)
        amax = float(self.input_clip) if getattr(self, "input_clip", None) is not None else amax  # percentile rule
        if amax == 0.0:
            log.warning("layer %s saw only zeros during calibration; input scale set to 1/448", self.qname)
            amax = 1.0
        self.input_scale = torch.tensor(amax / FP8_E4M3_MAX, dtype=torch.float32)
        self.mode = "quant"


class FP8Linear(nn.Linear, _FP8Base):
    @classmethod
    def wrap(cls, m: nn.Linear, name: str, per_channel: bool) -> "FP8Linear":
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = m.in_features, m.out_features
        q.weight, q.bias = m.weight, m.bias
        q._init_q(name, per_channel)
        return q

    def forward(self, x):
        return F.linear(self._q_input(x), self._q_weight(), self.bias)


class _FP8Conv(_FP8Base):
    def forward(self, x):
        return self._conv_forward(self._q_input(x), self._q_weight(), self.bias)


def _conv_wrapper(conv_cls):
    class W(conv_cls, _FP8Conv):
        forward = _FP8Conv.forward

        @classmethod
        def wrap(cls, m, name: str, per_channel: bool):
            q = copy.copy(m)
            q.__class__ = cls
            q._init_q(name, per_channel)
            return q

    W.__name__ = "FP8" + conv_cls.__name__
    return W


FP8Conv1d, FP8Conv2d, FP8Conv3d = (_conv_wrapper(c) for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d))
_WRAP = {nn.Linear: FP8Linear, nn.Conv1d: FP8Conv1d, nn.Conv2d: FP8Conv2d, nn.Conv3d: FP8Conv3d}


# ------------------------------------------------------------------------------------------ selection
def _match(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _declared_policy(model: nn.Module) -> list[tuple[str, tuple, tuple]]:
    """(prefix, fp8_quantizable, fp8_skip) of every submodule that declares a policy (a step wrapper around
    the model finds the model's own declaration under its attribute prefix)."""
    out = []
    for prefix, m in model.named_modules():
        inc = tuple(getattr(type(m), "fp8_quantizable", ()) or ())
        if inc:
            out.append((prefix + "." if prefix else "", inc, tuple(getattr(type(m), "fp8_skip", ()) or ())))
    return out


def select_quantizable(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None) -> list[str]:
    """Names of the Linear/Conv (groups=1) modules to quantize.

    ``include``/``exclude`` are fnmatch patterns on full module names (``"blocks.*.attn.qkv"``) or
    ``"re:<regex>"``; every explicit pattern must match at least one candidate module (a typo fails here
    instead of silently quantizing nothing). Without ``include``, the policy comes from the
    ``fp8_quantizable`` / ``fp8_skip`` class attributes of the model or of any submodule (patterns relative
    to that submodule; skip wins). ``exclude`` applies on top of either.
    """
    cands = [
        n
        for n, m in model.named_modules()
        if type(m) in _WRAP and (type(m) is nn.Linear or m.groups == 1)
    ]
    exclude = list(exclude or [])
    for p in list(include or []) + exclude:
        if not any(_match(n, p) for n in cands):
            raise QuantizeError(f"pattern {p!r} matches no Linear/Conv (groups=1) module of {type(model).__name__}")
    if include is not None:
        chosen = [n for n in cands if any(_match(n, p) for p in include)]
    else:
        policy = _declared_policy(model)
        if not policy:
            raise QuantizeError(
                f"{type(model).__name__} declares no quantizable layers: pass include=[...] patterns or set the "
                "class attribute fp8_quantizable (and fp8_skip) on the model"
            )
        chosen = []
        for n in cands:
            q = skip = False
            for prefix, inc, sk in policy:
                if not n.startswith(prefix):
                    continue
                rel = n[len(prefix):]
                q |= any(_match(rel, p) for p in inc)
                skip |= any(_match(rel, p) for p in sk)
            if q and not skip:
                chosen.append(n)
        for prefix, inc, _ in policy:
            for p in inc:
                if not any(n.startswith(prefix) and _match(n[len(prefix):], p) for n in cands):
                    log.warning("fp8_quantizable pattern %r of %s matches no Linear/Conv module", p, prefix or "model")
    chosen = [n for n in chosen if not any(_match(n, p) for p in exclude)]
    if not chosen:
        raise QuantizeError(f"no layer of {type(model).__name__} selected for FP8; check the include/exclude patterns")
    return chosen


def prepare_fp8(model: nn.Module, names: Iterable[str], *, per_channel_weights: bool = True) -> nn.Module:
    """A deep copy of ``model`` with the named Linear/Conv modules swapped for FP8 wrappers (mode "float")."""
    return prepare_fp8_inplace(copy.deepcopy(model), names, per_channel_weights=per_channel_weights)


def prepare_fp8_inplace(module: nn.Module, names: Iterable[str], *, per_channel_weights: bool = True) -> nn.Module:
    """Swap the named Linear/Conv layers of ``module`` for FP8 wrappers in place (they share the parameters)."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        m = getattr(parent, attr)
        setattr(parent, attr, _WRAP[type(m)].wrap(m, name, per_channel_weights))
    return module


def quantizers(model: nn.Module) -> dict[str, _FP8Base]:
    return {m.qname: m for m in model.modules() if isinstance(m, _FP8Base)}


@dataclass
class CalibrationReport:
    layers: list[str]
    input_amax: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    input_clip: dict[str, float] = field(default_factory=dict)  # the |x| each input scale maps to 448

    def to_dict(self) -> dict:
        return {"layers": self.layers, "input_amax": self.input_amax, "calls": self.calls, "input_clip": self.input_clip}


def quantize_fp8(
    model: nn.Module,
    calibrate: Callable[[nn.Module], None],
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    per_channel_weights: bool = True,
    act_scale: str = "max",
) -> tuple[nn.Module, CalibrationReport]:
    """FP8 E4M3 W8A8 post-training quantization.

    Args:
        model: float model (left untouched; a quantized copy is returned).
        calibrate: ``calibrate(qmodel)`` runs the model over calibration data (many calls: every denoising
            timestep and the t = 0 cache pass, over several chunks); activation amax is the max over all.
        include, exclude: layer patterns (default: model.fp8_quantizable / model.fp8_skip).
        act_scale: ``max`` or ``percentile:P`` (then ``calibrate`` runs twice; it must be deterministic).
    Returns:
        (quantized copy in fake-quant mode, ready for ``export_onnx``; calibration report).
    """
    names = select_quantizable(model, include, exclude)
    q = prepare_fp8(model, names, per_channel_weights=per_channel_weights).eval()
    qs = quantizers(q)
    for m in qs.values():
        m.mode = "calib"
    with torch.no_grad():
        calibrate(q)
    percentile_pass(q, qs.values(), calibrate, parse_act_scale(act_scale))
    for m in qs.values():
        m.finish_calibration()
    rep = CalibrationReport(names, {n: float(m.input_amax) for n, m in qs.items()}, {n: m.calls for n, m in qs.items()})
    rep.input_clip = {n: float(m.input_scale) * FP8_E4M3_MAX for n, m in qs.items()}
    log.info("FP8: %d layers quantized, calibrated over %d calls", len(names), max(rep.calls.values(), default=0))
    return q, rep


# ---------------------------------------------------------------------------------- ONNX lowering
def lower_fp8_placeholders(model):
    """Rewrite ``sanawm.FP8QDQ`` placeholders into native Q/DQ (FLOAT8E4M3FN zero points, FP32 scales).

    Activation: ``x -> QuantizeLinear -> DequantizeLinear``. Weight (placeholder on an initializer):
    FP8 initializer ``<layer>.weight_fp8`` -> ``DequantizeLinear``. Returns the model (modified in place).
    """
    import ml_dtypes
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .onnx_index import GraphIndex

    g = model.graph
    idx = GraphIndex(g)
    if not any(n.domain == PLACEHOLDER_DOMAIN for n in idx.nodes):
        return model
    const_array = idx.const_array

    new_nodes, drop_inits = [], set()
    for n in idx.nodes:
        if n.domain != PLACEHOLDER_DOMAIN:
            new_nodes.append(n)
            continue
        if n.op_type != PLACEHOLDER_OP:
            raise QuantizeError(f"unknown placeholder {n.domain}.{n.op_type}")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        tag = attrs["tag"].decode() if isinstance(attrs["tag"], bytes) else attrs["tag"]
        axis = int(attrs.get("axis", -1))
        x, s = n.input[0], n.input[1]
        scale = const_array(s)
        if scale is None:
            raise QuantizeError(f"{tag}: FP8 scale {s!r} is not a constant; scales must be buffers")
        scale = scale.astype(np.float32)
        sname, zname = f"{tag}.scale", f"{tag}.zero_point"
        g.initializer.append(numpy_helper.from_array(scale, sname))
        zp = np.zeros(scale.shape, dtype=ml_dtypes.float8_e4m3fn)
        g.initializer.append(numpy_helper.from_array(zp, zname))
        qattrs = {"axis": axis} if scale.ndim == 1 else {}
        w = const_array(x)
        if w is not None:  # weight: fold Q into an FP8 initializer
            sb = scale
            if scale.ndim == 1:
                shp = [1] * w.ndim
                shp[axis % w.ndim] = -1
                sb = scale.reshape(shp)
            wq = np.clip(w.astype(np.float32) / sb, -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
            wname = f"{tag}_fp8"
            g.initializer.append(numpy_helper.from_array(wq, wname))
            new_nodes.append(helper.make_node("DequantizeLinear", [wname, sname, zname], [n.output[0]], name=f"{tag}.DQ", **qattrs))
            idx.release(x, drop_inits)
        else:
            qout = f"{tag}.q"
            new_nodes.append(helper.make_node("QuantizeLinear", [x, sname, zname], [qout], name=f"{tag}.Q", saturate=1, **qattrs))
            new_nodes.append(helper.make_node("DequantizeLinear", [qout, sname, zname], [n.output[0]], name=f"{tag}.DQ", **qattrs))
        idx.release(s, drop_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [t for t in g.initializer if t.name not in drop_inits]
    del g.initializer[:]
    g.initializer.extend(keep)
    # drop the placeholder domain and stale value_info of rewritten tensors
    opsets = [o for o in model.opset_import if o.domain != PLACEHOLDER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    used = {i for nd in g.node for i in nd.input} | {o.name for o in g.output}
    vis = [v for v in g.value_info if v.name in used or any(v.name in nd.output for nd in g.node)]
    del g.value_info[:]
    g.value_info.extend(vis)

    return model


def qdq_layers(model) -> dict[str, dict]:
    """{layer tag: {"op": QuantizeLinear|DequantizeLinear ..., "zero_point_dtype": ...}} of an ONNX model."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, dict] = {}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            tag = n.name.rsplit(".", 1)[0]
            out.setdefault(tag, {"ops": [], "zero_point_dtype": None})
            out[tag]["ops"].append(n.op_type)
            out[tag]["zero_point_dtype"] = TensorProto.DataType.Name(zp.data_type) if zp is not None else None
    return out
