"""The streaming chunk step as a pure function of explicit tensors (sana-wm-streaming.md 1-2, 7).

``GeneratorStep(model, first)`` takes exactly the inputs of :func:`sanawm.spec.generator_step_io` (positional,
in that order) and returns its outputs as a tuple in that order. Nothing is kept between calls: carried state
(GDN states, K-conv tails, FFN tails) comes in and goes out, softmax blocks read a padded window of cached K/V
masked by ``window_valid`` and return this chunk's K/V. Softmax runs at 1/sqrt(cfg.streaming_softmax_scale_dim),
RoPE at ``frame_index``, and the camera K conv stays inside the chunk unless ``cfg.cam_kconv_tail``.

Helpers :func:`initial_state` and :func:`window_inputs` build the state of the first call and the window of
chunk c from stored per-chunk K/V (the runtime does the same from the manifest).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import GeneratorConfig
from ..kernels.gdn.onnx_decomposed import padded_frames
from ..spec import StepIO, generator_step_io, max_window_frames
from ..spec_dynamic import frame_counts, generator_step_io_dynamic
from .plan import Plan, step_plan
from .transformer import SanaWMGenerator

_KV = ("k", "v", "cam_k", "cam_v")


class GeneratorStep(nn.Module):
    """One streaming forward over a chunk of ``first_chunk_size`` (``first``) or ``chunk_size`` frames."""

    def __init__(self, model: SanaWMGenerator, first: bool):
        super().__init__()
        self.model = model
        self.first = first
        cfg = model.cfg
        self.io: StepIO = generator_step_io(cfg, first)
        self.input_names = tuple(t.name for t in self.io.inputs)
        self.output_names = tuple(t.name for t in self.io.outputs)
        self.num_frames = cfg.first_chunk_size if first else cfg.chunk_size
        self.plan = step_plan(cfg, self.num_frames)
        self.has_window = (not first) and max_window_frames(cfg) > 0

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(args) != len(self.input_names):
            raise TypeError(
                f"GeneratorStep({'first' if self.first else 'next'}) takes {len(self.input_names)} tensors in the "
                f"order of sanawm.spec.generator_step_io: {self.input_names[:8]}...; got {len(args)}"
            )
        a = dict(zip(self.input_names, args))
        cfg = self.model.cfg
        states = []
        for i, block in enumerate(self.model.blocks):
            st = {"ffn_tail": a[f"b{i}.ffn_tail"][:, None]}  # [1, S, C] -> [1, 1, S, C]
            if block.is_softmax:
                if self.has_window:
                    st["window"] = {nm: a[f"b{i}.{nm}_win"] for nm in _KV}
                    st["window"]["valid"] = a["window_valid"]
            else:
                for nm in ("S_kv", "S_z", "cam_S_kv", "k_tail"):
                    st[nm] = a[f"b{i}.{nm}"]
                if cfg.cam_kconv_tail:
                    st["cam_k_tail"] = a[f"b{i}.cam_k_tail"]
            states.append(st)
        with self._trace_context():
            v, outs = self.model.run(
                a["latents"], a["timestep"], a["text"], a["text_mask"], a["camera"], a["plucker"],
                a["frame_index"], self._plan(a["latents"]), states,
            )
        result = []
        for name in self.output_names:
            if name == "velocity":
                result.append(v.float())
                continue
            blk, key = name.split(".", 1)
            o = outs[int(blk[1:])]
            key = key[: -len(".out")] if key.endswith(".out") else key[: -len("_chunk")]
            t = o[key]
            if key == "ffn_tail":
                t = t[:, 0]
            result.append(t.float().contiguous())
        return tuple(result)

    def _plan(self, latents: torch.Tensor) -> Plan:
        return self.plan

    def _trace_context(self):
        return contextlib.nullcontext()


class GeneratorStepDynamic(GeneratorStep):
    """One streaming forward over ``n`` frames, n in ``frame_counts(cfg)`` (chunk_size or first_chunk_size),
    exported as ONE graph with a symbolic frame axis (contract ``generator_step_io_dynamic``).

    Always takes the softmax window and ``window_valid``; chunk 0 passes an all-zero ``window_valid``
    (``sanawm.spec_dynamic.masked_window_feeds``): every window token gets the additive MASK_VALUE, whose
    exp underflows to exactly 0 in the softmax, so the call equals ``GeneratorStep(model, first=True)``.
    The plan is built from the traced frame count, and the decomposed GDN scan pads to the largest chunk.
    """

    def __init__(self, model: SanaWMGenerator):
        super().__init__(model, first=False)
        cfg = model.cfg
        self.io = generator_step_io_dynamic(cfg)
        self.frame_counts = frame_counts(cfg)
        self.num_frames = None  # symbolic
        self.plan = None
        self.has_window = True  # generator_step_io_dynamic refuses configs without a window

    def _plan(self, latents: torch.Tensor) -> Plan:
        n = latents.shape[2]
        if isinstance(n, int) and n not in self.frame_counts:
            raise ValueError(f"GeneratorStepDynamic serves chunks of {self.frame_counts} latent frames, got {n}")
        return step_plan(self.model.cfg, n)

    def _trace_context(self):
        return padded_frames(max(self.frame_counts))


def initial_state(cfg: GeneratorConfig, first: bool = True) -> dict[str, torch.Tensor]:
    """Zero tensors for every carried-state input of ``generator_step_io(cfg, first)`` (the first call)."""
    io = generator_step_io(cfg, first)
    carried = set(io.state_map.values())
    return {t.name: torch.zeros(t.shape) for t in io.inputs if t.name in carried}


def window_inputs(cfg: GeneratorConfig, chunk_kv: dict[int, list[dict]], c: int) -> dict[str, torch.Tensor]:
    """Padded softmax window of chunk ``c`` (> 0) from stored per-chunk K/V.

    Args:
        chunk_kv: chunk index -> list over blocks (``None`` for GDN blocks) of dicts ``{k, v, cam_k, cam_v}``
            ``[1, h, n*S, D]`` as returned by the step (``b{i}.k_chunk`` ...).
    Returns:
        ``{"window_valid": [Wt], "b{i}.k_win": [1, h, Wt, D], ...}``: real tokens first (sink chunk first, then
        older to newer), zero padding after, ``window_valid`` 1 on real tokens.
    """
    Wt = max_window_frames(cfg) * cfg.patch_tokens
    chunks = cfg.window_chunks(c)
    out: dict[str, torch.Tensor] = {}
    valid = None
    for i in range(cfg.num_layers):
        if not cfg.is_softmax_block(i):
            continue
        for nm in _KV:
            parts = [chunk_kv[d][i][nm] for d in chunks]
            cat = torch.cat(parts, dim=2)
            n_real = cat.shape[2]
            if n_real > Wt:
                raise ValueError(f"window of chunk {c} has {n_real} tokens > Wt = {Wt}; config and spec disagree")
            pad = cat.new_zeros(cat.shape[0], cat.shape[1], Wt - n_real, cat.shape[3])
            out[f"b{i}.{nm}_win"] = torch.cat([cat, pad], dim=2)
            valid = torch.cat([torch.ones(n_real), torch.zeros(Wt - n_real)])
    out["window_valid"] = valid
    return out
