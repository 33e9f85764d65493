"""Model facts for the device plan, from torch modules built on the meta device (no weights, no memory).

For each engine (generator, VAE decoder, refiner) at one call shape:

* parameter counts split by the exporter's FP8 policy (``sanawm.export.quantize.select_quantizable``: the
  model's ``fp8_quantizable`` / ``fp8_skip``). Weight bytes at ``fp8``: quantized Linear/Conv weights 1 B per
  element plus one FP32 scale per output channel (per-channel weight scales, as ``quantize.py`` writes them);
  every other parameter at ``rest_bytes`` (4: FP32, what the exporter keeps today; 2: a BF16 policy).
* FLOPs of one call: ``torch.utils.flop_counter.FlopCounterMode`` over the real step module's forward on meta
  tensors (matmul, conv, bmm, SDPA), split into FLOPs inside the FP8-quantized modules and the rest.
* activation-workspace estimate: a dispatch-mode walk over the same forward that tracks every intermediate
  tensor from creation to release (weights and engine inputs excluded, engine outputs excluded at the end) and
  reports the peak of the live set (``peak_live``), plus the largest single op's operands (``largest_op``).
  This is what an eager forward holds at once with the graph as exported (FP32 activations, attention
  scores materialised); a TensorRT engine with fused attention needs less, one without fusion about as much.
  It is an ESTIMATE, never a measurement.

The forward runs with ``torch.compiler.is_exporting()`` patched to True so the GDN recurrence takes the
decomposed path the ONNX export traces (its finiteness check cannot read meta tensors).
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from sanawm.export.quantize import select_quantizable

FP8_BYTES, SCALE_BYTES = 1, 4


@dataclass
class CallFacts:
    flops: int  # one call
    flops_fp8: int  # of which inside FP8-quantized modules
    peak_live: int  # activation-workspace estimate (bytes), see the module docstring
    largest_op: int
    peak_live_fused: int  # the same with attention fused (SDPA returns its output only, no score matrix)


@dataclass
class ModelFacts:
    name: str
    params: int
    params_fp8: int  # weight elements of the FP8-quantized modules
    fp8_out_channels: int  # per-channel scales
    calls: dict  # profile -> CallFacts

    def weight_bytes(self, precision: str, rest_bytes: int) -> int:
        if precision != "fp8":
            return self.params * {"fp32": 4, "fp16": 2, "bf16": 2}[precision]
        return self.params_fp8 * FP8_BYTES + self.fp8_out_channels * SCALE_BYTES + (self.params - self.params_fp8) * rest_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["calls"] = {k: asdict(v) for k, v in self.calls.items()}
        return d


class _LiveSet(TorchDispatchMode):
    """Peak bytes of intermediate tensors alive at once (see the module docstring)."""

    def __init__(self, exclude):
        super().__init__()
        self.exclude = {id(t) for t in exclude}
        self.live = self.peak = self.largest_op = 0
        self._ids: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.largest_op = max(self.largest_op, sum(_nbytes(t) for t in ins + outs if id(t) not in self.exclude))
        for t in outs:
            if t._base is not None or id(t) in self._ids:  # views share their base's storage
                continue
            n = _nbytes(t)
            self.live += n
            self._ids.add(id(t))
            weakref.finalize(t, self._release, n, id(t))
        self.peak = max(self.peak, self.live)
        return out

    def _release(self, n: int, key: int) -> None:
        self.live -= n
        self._ids.discard(key)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _fused_sdpa(q, k, v, *args, **kwargs):
    """Stand-in for a fused attention kernel: the output only (flash attention keeps scores on chip)."""
    return q.new_empty(q.shape[:-1] + (v.shape[-1],))


def _live_peak(module, inputs, keep, fused: bool) -> tuple[int, int]:
    with torch.no_grad(), mock.patch("torch.compiler.is_exporting", return_value=True), \
            mock.patch.object(torch.nn.functional, "scaled_dot_product_attention",
                              _fused_sdpa if fused else torch.nn.functional.scaled_dot_product_attention):
        with _LiveSet(keep) as live:
            out = module(*inputs)
        out_bytes = sum(_nbytes(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
    return max(int(live.peak) - out_bytes, 0), int(live.largest_op)


def profile_call(module: torch.nn.Module, inputs: list, fp8_modules: list[str]) -> CallFacts:
    """FLOPs and the activation estimates of ``module(*inputs)`` on meta tensors."""
    keep = list(module.parameters()) + list(module.buffers()) + list(inputs)
    with torch.no_grad(), mock.patch("torch.compiler.is_exporting", return_value=True):
        with FlopCounterMode(display=False) as fc:
            module(*inputs)
    peak, largest = _live_peak(module, inputs, keep, fused=False)
    fused, _ = _live_peak(module, inputs, keep, fused=True)
    counts = fc.get_flop_counts()
    root = type(module).__name__
    fp8 = 0
    for name in fp8_modules:
        fp8 += sum(counts.get(f"{root}.{name}", {}).values())
    return CallFacts(int(fc.get_total_flops()), int(fp8), peak, largest, fused)


def _meta_inputs(io) -> list:
    return [torch.zeros(t.shape, dtype=getattr(torch, t.dtype), device="meta") for t in io.inputs]


def _param_split(module: torch.nn.Module) -> tuple[int, int, int, list[str]]:
    """(all params, FP8 weight elements, FP8 output channels, FP8 module names) by the exporter's policy."""
    names = select_quantizable(module)
    mods = dict(module.named_modules())
    w = sum(mods[n].weight.numel() for n in names)
    ch = sum(mods[n].weight.shape[0] for n in names)
    return sum(p.numel() for p in module.parameters()), w, ch, names


def generator_facts(cfg) -> ModelFacts:
    from sanawm.models.generator_step import GeneratorStep
    from sanawm.models.transformer import SanaWMGenerator
    from sanawm.spec import generator_profiles, generator_step_io, max_window_frames

    with torch.device("meta"):
        model = SanaWMGenerator(cfg)
    params, w, ch, names = _param_split(model)
    calls = {}
    for prof, dims in generator_profiles(cfg).items():
        step = GeneratorStep(model, first=prof == "first")
        if prof == "first":  # one engine: chunk 0 runs with the (all-masked) window bound, like later chunks
            step.io = generator_step_io(cfg, first=True, window=True)
            step.input_names = tuple(t.name for t in step.io.inputs)
            step.has_window = max_window_frames(cfg) > 0
        calls[prof] = profile_call(step, _meta_inputs(step.io), ["model." + n for n in names])
    return ModelFacts("generator", params, w, ch, calls)


def vae_decoder_facts(vae_config: dict, latent_hw: tuple[int, int]) -> ModelFacts:
    """Decoder weights and calls; FP32 (the exporter exports the VAE in FP32), so no FP8 split."""
    from diffusers import AutoencoderKLLTX2Video

    from sanawm.models.vae import VAEDecoderStep

    cfg = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKLLTX2Video(**cfg)
    calls = {}
    # "next_per_frame": one latent frame per call (the release decodes frame by frame with the cache)
    for prof, first, n in (("first", True, 4), ("next", False, 3), ("next_per_frame", False, 1)):
        step = VAEDecoderStep(vae, first, latent_hw, n)
        calls[prof] = profile_call(step, _meta_inputs(step.io), [])
    return ModelFacts("vae_decoder", sum(p.numel() for p in vae.decoder.parameters()), 0, 0, calls)


# published refiner (sana-wm-reference.md section 10, third-party config dump): 48 layers, 32 x 128, split RoPE,
# caption 3840, cross-attention 4096, gated attention; the diffusers defaults give the rest.
FULL_REFINER = dict(rope_type="split", gated_attn=True)


def refiner_facts(layout, tiny: bool, in_channels: int, kv_dtype: str = "float32"):
    """(ModelFacts, RefinerCore on meta) of the video-only refiner (the audio modules are never exported): the one
    ``RefinerEngine`` graph at its two profiles (``sink``; ``block``, which every denoising and commit call runs)."""
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel

    from sanawm.models.refiner import RefinerCore, tiny_refiner_config
    from sanawm.models.refiner.engine import RefinerEngine
    from sanawm.spec_refiner import refiner_profiles

    kw = tiny_refiner_config(in_channels=in_channels, out_channels=in_channels) if tiny else FULL_REFINER
    with torch.device("meta"):
        core = RefinerCore(SanaWMLTX2RefinerTransformer3DModel(**kw))
    params, w, ch, names = _param_split(core)
    fp8 = ["core." + n for n in names]
    engine = RefinerEngine(core, layout, kv_dtype)
    calls = {prof: profile_call(engine, _meta_inputs(engine.io.concrete(dims)), fp8)
             for prof, dims in refiner_profiles(layout).items()}
    return ModelFacts("refiner", params, w, ch, calls), core
