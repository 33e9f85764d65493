"""NVFP4 W4A4 post-training quantization for RTX 50 (Blackwell, sm_120): ``--precision nvfp4`` (build side).

Scheme (NVIDIA's NVFP4): values in FP4 E2M1 (+-{0, 0.5, 1, 1.5, 2, 3, 4, 6}), one FP8 E4M3 scale per block of
``NVFP4_BLOCK`` = 16 consecutive elements along the input (reduction) dim, and one FP32 global scale per tensor
that the block scales are quantized against (two-level scaling)::

    g = amax / (6 * 448)                      weights: amax of the weight; activations: calibration amax
    s_b = fp8(clamp(amax_b / 6 / g, <= 448))  per block of 16 (weights at export, activations at run time)
    x_q = fp4(x / (s_b * g)) * (s_b * g)

Layers: the same selection FP8 quantizes (``select_quantizable``: the model's ``fp8_quantizable`` /
``fp8_skip``). Linears, and 1x1 convs run as a linear over the channel dim (so the channel is the last axis,
where TensorRT's dynamic FP4 quantizer blocks); other convs are refused by name.

Torch side: wrappers call one custom op, ``sanawm::nvfp4_qdq`` (the torch fake quant), whose ONNX translation is a
placeholder ``sanawm.NVFP4QDQ``; ``lower_nvfp4_placeholders`` rewrites it (see ``sanawm.export.nvfp4_onnx``).
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Iterable

import torch
from torch import nn
import torch.nn.functional as F

from .quantize import FP8_E4M3_MAX, CalibrationReport, QuantizeError, _FP8Base, quantizers, select_quantizable

log = logging.getLogger("sanawm.export")

FP4_E2M1_MAX = 6.0
NVFP4_BLOCK = 16
NVFP4_OPSET = 23  # first opset with FLOAT4E2M1 and block-wise DequantizeLinear over it
NVFP4_OP = "NVFP4QDQ"


# ------------------------------------------------------------------------------------------ numerics
def fp4_e2m1_round(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP4 E2M1 value (ties to even mantissa), saturating at +-6.

    The grid has step 0.5 below 2, 1 in [2, 4) and 2 in [4, 6]; on each range ``torch.round`` (half to even) of
    ``v / step`` lands on an even integer exactly when the E2M1 mantissa bit is 0, so this is IEEE-style RNE.
    """
    a = v.abs().clamp(max=FP4_E2M1_MAX)
    q = torch.where(a < 2, torch.round(a * 2) / 2, torch.where(a < 4, torch.round(a), torch.round(a / 2) * 2))
    return torch.copysign(q, v)


def nvfp4_block_scales(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 block scales (as float32 values, before the global scale) of ``x`` in blocks of 16 on its last dim.

    ``amax_b / 6`` then ``/ g`` in that order: the ONNX graph computes the same two FP32 divisions."""
    xb = x.float().reshape(*x.shape[:-1], x.shape[-1] // NVFP4_BLOCK, NVFP4_BLOCK)
    s = xb.abs().amax(-1) / FP4_E2M1_MAX / global_scale.float()
    return s.clamp(max=FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()


def nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP4 values as float32 [..., K], FP8 block scales as float32 [..., K/16]) of ``x``.

    A block whose scale is 0 (all zeros, or below FP8's smallest subnormal relative to ``g``) divides by 1 instead
    and so quantizes to zeros, as the ONNX decomposition does."""
    s8 = nvfp4_block_scales(x, global_scale)
    sf = s8 * global_scale.float()  # DequantizeLinear(s8, g)
    safe = torch.where(sf == 0, torch.ones_like(sf), sf)
    q = fp4_e2m1_round(x.float() / safe.repeat_interleave(NVFP4_BLOCK, -1))
    return q, s8


@torch.library.custom_op("sanawm::nvfp4_qdq", mutates_args=())
def nvfp4_qdq(x: torch.Tensor, global_scale: torch.Tensor, tag: str) -> torch.Tensor:
    """Fake-quantize ``x`` to NVFP4 along its last dim and back (``tag`` names the ONNX nodes)."""
    q, s8 = nvfp4_quantize(x, global_scale)
    sf = (s8 * global_scale.float()).repeat_interleave(NVFP4_BLOCK, -1)
    return (q * sf).to(x.dtype)


@nvfp4_qdq.register_fake
def _nvfp4_qdq_fake(x, global_scale, tag):
    return torch.empty_like(x)


def translation_table() -> dict:
    """``custom_translation_table`` entry for ``torch.onnx.export``: nvfp4_qdq -> placeholder node."""
    from ._nvfp4_onnxscript import nvfp4_qdq_onnx

    return {torch.ops.sanawm.nvfp4_qdq.default: nvfp4_qdq_onnx}


# ------------------------------------------------------------------------------------------ wrappers
class _NVFP4Base(_FP8Base):
    """The FP8 wrappers' calibration, NVFP4 scales and fake quant. ``weight_scale`` / ``input_scale`` are the
    global scales ``g``; the weight is read as ``[out, in]`` (``_weight2d``)."""

    def _init_q(self, name: str, per_channel: bool = False):
        self.qname = name
        self.per_channel = False
        self.mode = "float"
        self.calls = 0
        k = self._weight2d().shape[1]
        if k % NVFP4_BLOCK:
            raise QuantizeError(f"layer {name!r} has {k} input features, not a multiple of the NVFP4 block "
                                f"({NVFP4_BLOCK}); exclude it (it then stays FP32)")
        self.register_buffer("input_amax", torch.zeros(()))
        self.register_buffer("input_scale", torch.ones(()))
        amax = self._weight2d().detach().float().abs().amax()
        self.register_buffer("weight_scale", torch.clamp(amax, min=1e-12) / (FP4_E2M1_MAX * FP8_E4M3_MAX))

    def _q_input(self, x):
        if self.mode == "quant":
            return torch.ops.sanawm.nvfp4_qdq(x, self.input_scale, f"{self.qname}.input")
        return super()._q_input(x)

    def _q_weight(self):
        w = self._weight2d()
        if self.mode == "quant":
            return torch.ops.sanawm.nvfp4_qdq(w, self.weight_scale, f"{self.qname}.weight")
        return w

    def finish_calibration(self):
        super().finish_calibration()  # checks the layer ran; input_scale = amax / 448
        self.input_scale = self.input_scale / FP4_E2M1_MAX  # the global scale: amax / (6 * 448)


class NVFP4Linear(nn.Linear, _NVFP4Base):
    @classmethod
    def wrap(cls, m: nn.Linear, name: str) -> "NVFP4Linear":
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = m.in_features, m.out_features
        q.weight, q.bias = m.weight, m.bias
        q._init_q(name)
        return q

    def _weight2d(self):
        return self.weight

    def forward(self, x):
        return F.linear(self._q_input(x), self._q_weight(), self.bias)


class NVFP4PointConv(_NVFP4Base):
    """A 1x1 Conv{1,2,3}d as a linear over the channel dim: ``[B, C, *S] -> [B, *S, C] -> linear -> back``."""

    @classmethod
    def wrap(cls, m: nn.modules.conv._ConvNd, name: str) -> "NVFP4PointConv":
        zero_pad = m.padding in ("valid", "same") or all(p == 0 for p in m.padding)
        if any(k != 1 for k in m.kernel_size) or any(s != 1 for s in m.stride) or m.groups != 1 or not zero_pad:
            raise QuantizeError(f"layer {name!r} is a {type(m).__name__} with kernel {m.kernel_size}; NVFP4 covers "
                                "Linear and 1x1 (stride 1, no padding) convs: exclude it (it then stays FP32)")
        q = cls()
        # a 2-D view of the same storage (no copy), held as the parameter so the exported graph has the [out, in]
        # weight as an initializer the lowering folds (a Reshape in the graph might not be constant-folded)
        q.weight = nn.Parameter(m.weight.detach().view(m.weight.shape[0], m.weight.shape[1]), requires_grad=False)
        q.bias = m.bias
        q._init_q(name)
        return q

    def _weight2d(self):
        return self.weight

    def forward(self, x):
        xl = x.movedim(1, -1)
        return F.linear(self._q_input(xl), self._q_weight(), self.bias).movedim(-1, 1)


def _wrap(m: nn.Module, name: str) -> nn.Module:
    if type(m) is nn.Linear:
        return NVFP4Linear.wrap(m, name)
    if isinstance(m, nn.modules.conv._ConvNd):
        return NVFP4PointConv.wrap(m, name)
    raise QuantizeError(f"layer {name!r} ({type(m).__name__}) cannot be NVFP4-quantized; exclude it")


def quantize_nvfp4(
    model: nn.Module,
    calibrate: Callable[[nn.Module], None],
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> tuple[nn.Module, CalibrationReport]:
    """NVFP4 W4A4 post-training quantization (same contract as ``quantize_fp8``).

    ``calibrate(qmodel)`` runs calibration data; only the activations' per-tensor amax is calibrated (their block
    scales are computed at run time). Returns (quantized copy in fake-quant mode, calibration report).
    """
    names = select_quantizable(model, include, exclude)
    q = copy.deepcopy(model).eval()
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = q.get_submodule(parent_name) if parent_name else q
        setattr(parent, attr, _wrap(getattr(parent, attr), name))
    qs = quantizers(q)
    for m in qs.values():
        m.mode = "calib"
    with torch.no_grad():
        calibrate(q)
    for m in qs.values():
        m.finish_calibration()
    rep = CalibrationReport(names, {n: float(m.input_amax) for n, m in qs.items()}, {n: m.calls for n, m in qs.items()})
    log.info("NVFP4: %d layers quantized, calibrated over %d calls", len(names), max(rep.calls.values(), default=0))
    return q, rep
