"""FP16 weights and GEMMs on the block linears, everything else FP32 (build side): ``--precision fp16``.

For GPUs without FP8 tensor cores (RTX 30xx, A100) and as the middle step between FP32 and FP8. TensorRT 11 and
TensorRT-RTX build strongly typed networks, so the precision has to be in the graph itself: the layers that FP8
would quantize (same selection, ``sanawm.export.quantize.select_quantizable``: the model's ``fp8_quantizable`` /
``fp8_skip`` policy) keep FP16 weights and run as ``Cast(fp16) -> MatMul/Conv -> Cast(fp32)``. Embedders, norms,
softmax, the GDN recurrence and every carried state stay FP32, and the engine's inputs and outputs keep their
FP32 contract, so the runtime does not change.

FP16 has a narrow range (65504), so the conversion runs the engine's calibration loop (the same streaming run
FP8 calibrates on) and refuses layers whose inputs or outputs come closer than ``FP16_HEADROOM`` to it: an
engine that overflows to inf on real data is worse than no engine. Why not BF16: ONNX allows bfloat16 Conv only
from opset 22 and ONNX Runtime's CPU provider, the check every exported graph passes here, has no bfloat16 GEMM.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
import torch.nn.functional as F

from .quantize import select_quantizable

log = logging.getLogger("sanawm.export")

FP16_MAX = 65504.0
FP16_HEADROOM = 4.0  # calibration amax must stay below FP16_MAX / this: real prompts and cameras vary


class FP16RangeError(ValueError):
    pass


class _HalfBase:
    """Mixin: cast in, compute in FP16, cast back; track |input| and |output| maxima while ``recording``."""

    def _init_half(self, name: str):
        self.hname = name
        self.recording = False
        self.input_amax = 0.0
        self.output_amax = 0.0
        self.weight = nn.Parameter(self.weight.detach().to(torch.float16), requires_grad=False)
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach().to(torch.float16), requires_grad=False)

    def _run(self, x, op):
        y = op(x.to(torch.float16))
        if self.recording:
            self.input_amax = max(self.input_amax, _amax(x))
            self.output_amax = max(self.output_amax, _amax(y))
        return y.to(x.dtype)


def _amax(t) -> float:
    """max |t|; inf when t holds inf or nan (an overflow upstream), so range checks cannot miss it."""
    a = float(t.detach().float().abs().amax())
    return a if a == a else float("inf")


class FP16Linear(nn.Linear, _HalfBase):
    def forward(self, x):
        return self._run(x, lambda h: F.linear(h, self.weight, self.bias))


class _FP16Conv(_HalfBase):
    def forward(self, x):
        return self._run(x, lambda h: self._conv_forward(h, self.weight, self.bias))


_HALF = {nn.Linear: FP16Linear} | {
    c: type("FP16" + c.__name__, (c, _FP16Conv), {"forward": _FP16Conv.forward}) for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
}


def half_layers(model: nn.Module) -> dict[str, _HalfBase]:
    return {m.hname: m for m in model.modules() if isinstance(m, _HalfBase)}


@dataclass
class HalfReport:
    layers: list[str]
    input_amax: dict[str, float] = field(default_factory=dict)
    output_amax: dict[str, float] = field(default_factory=dict)

    def peaks(self) -> dict[str, float]:
        """max(|input|, |output|) per layer seen in calibration."""
        return {n: max(self.input_amax[n], self.output_amax[n]) for n in self.layers}

    @property
    def max_activation(self) -> float:
        return max(self.peaks().values())


def convert_fp16(
    model: nn.Module,
    calibrate: Callable[[nn.Module], None] | None,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> tuple[nn.Module, HalfReport]:
    """A copy of ``model`` whose selected Linear/Conv layers hold FP16 weights and compute in FP16.

    ``calibrate(copy)`` runs representative data (the FP8 calibration loop); every converted layer must run and
    stay inside FP16's range with ``FP16_HEADROOM`` to spare, else ``FP16RangeError`` names the layers and the
    fix. ``calibrate=None`` skips the range check (tests of the conversion itself).
    """
    names = select_quantizable(model, include, exclude)
    q = copy.deepcopy(model).eval()
    for name in names:  # converted in place (class swap), so the module tree and its names stay as they were
        m = q.get_submodule(name)
        m.__class__ = _HALF[type(m)]
        m._init_half(name)
    layers = half_layers(q)
    rep = HalfReport(names)
    if calibrate is None:
        return q, rep
    for m in layers.values():
        m.recording = True
    with torch.no_grad():
        calibrate(q)
    for m in layers.values():
        m.recording = False
    rep.input_amax = {n: m.input_amax for n, m in layers.items()}
    rep.output_amax = {n: m.output_amax for n, m in layers.items()}
    limit = FP16_MAX / FP16_HEADROOM
    hot = {n: v for n, v in rep.peaks().items() if not v < limit}  # `not <` also catches inf / nan
    if hot:
        worst = sorted(hot.items(), key=lambda kv: -kv[1])[:5]
        raise FP16RangeError(
            f"FP16 would overflow: {len(hot)} layer(s) see values beyond {limit:.0f} (FP16 max {FP16_MAX:.0f} / "
            f"headroom {FP16_HEADROOM:g}) in calibration: " + ", ".join(f"{n} {v:.3g}" for n, v in worst)
            + "; export with --precision fp8 (scaled) or fp32 instead"
        )
    idle = [n for n, m in layers.items() if m.input_amax == 0.0 and m.output_amax == 0.0]
    if idle:
        raise FP16RangeError(f"layers {idle[:5]} never ran (or saw only zeros) during the FP16 range check; make "
                             "the calibration loop run every path of the model")
    log.info("FP16: %d layers in half precision; largest activation %.3g", len(names), rep.max_activation)
    return q, rep
