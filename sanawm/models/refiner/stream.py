"""The refiner's AR loop in torch over the step modules (the oracle the runtime and exported graphs match)."""

from __future__ import annotations

from typing import Sequence

import torch

from ...constants import STAGE_2_SIGMAS
from .layer import RefinerCore
from ...refiner_layout import RefinerLayout
from .steps import RefinerSinkCapture, RefinerStep, RefinerTextKV

def empty_history(core: RefinerCore, layout: RefinerLayout, device=None):
    """(hist_valid, [hist_k, hist_v] * layers) all zero (no history yet)."""
    hm = layout.history_tokens
    z = torch.zeros(1, core.heads, hm, core.head_dim, device=device)
    return torch.zeros(hm, device=device), [z.clone() for _ in range(2 * core.num_layers)]


def sink_rope_offset(block_start: int, history_frames: int, sink_frames: int) -> int:
    """Where the sink is re-rotated: just before the history window (oracle: block_start - hist - sink)."""
    return block_start - history_frames - sink_frames


@torch.no_grad()
def refine_stream(
    core: RefinerCore,
    sana_latent: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    noise: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    block_size: int = 3,
    kv_max_frames: int = 11,
    sink_frames: int = 1,
    sigmas: Sequence[float] = STAGE_2_SIGMAS,
    sink: RefinerSinkCapture | None = None,
    step: RefinerStep | None = None,
    capture: RefinerStep | None = None,
    text_kv: bool = False,
    text_graph: RefinerTextKV | None = None,
) -> torch.Tensor:
    """Block-by-block AR refinement of ``sana_latent`` [1,C,T,H,W] using only the step modules.

    ``noise``: one tensor per block ([1,C,block,H,W]); else drawn from ``generator`` block by block as the
    oracle does (``torch.randn`` of the block shape). Returns [1,C,T,H,W]; frames ``[0, sink)`` are the raw
    input. The sink/step/capture (and text) callables may be replaced by engine runners with the same
    positional I/O. ``text_kv=True`` computes the prompt K/V once (``RefinerTextKV``) and runs the step graphs
    in their ``text_kv`` form.
    """
    if sana_latent.shape[0] != 1:
        raise ValueError(f"refine_stream runs batch 1, got batch {sana_latent.shape[0]}")
    B, C, T, H, W = sana_latent.shape
    if T <= sink_frames:
        raise ValueError(f"latent has {T} frames but sink_frames={sink_frames}")
    if (T - sink_frames) % block_size:
        raise ValueError(
            f"(T - sink) = {T - sink_frames} is not a multiple of block_size={block_size}: the fixed-shape step "
            "graphs need whole blocks (stage-1 chunks give T = 1 + 3k)"
        )
    layout = RefinerLayout(H, W, text.shape[1], block_size, kv_max_frames, sink_frames)
    sink = sink or RefinerSinkCapture(core)
    step = step or RefinerStep(core, text_kv=text_kv)
    capture = capture or RefinerStep(core, capture=True, text_kv=text_kv)
    if text_kv:
        tkv = (text_graph or RefinerTextKV(core))(text)
    dev = sana_latent.device
    dt = sana_latent.dtype
    sig = torch.tensor([float(s) for s in sigmas], dtype=torch.float32)  # the scheduler's float32 sigmas
    s_max = float(sig[0])
    mult = core.timestep_scale_multiplier

    z = sana_latent
    out = z.clone()
    sink_kv = sink(z[:, :, :sink_frames].contiguous(), torch.arange(sink_frames, device=dev), text, text_mask)
    hist_valid, hist = empty_history(core, layout, dev)
    hist_frames = 0
    num_blocks = (T - sink_frames) // block_size
    for b in range(num_blocks):
        start = sink_frames + b * block_size
        clean = z[:, :, start: start + block_size]
        frame_pos = torch.arange(start, start + block_size, device=dev)
        off = sink_rope_offset(start, hist_frames, sink_frames)
        sink_pos = torch.arange(off, off + sink_frames, device=dev)
        kv = []
        for i in range(core.num_layers):
            kv += [sink_kv[2 * i], sink_kv[2 * i + 1], hist[2 * i], hist[2 * i + 1]]
            if text_kv:
                kv += [tkv[2 * i], tkv[2 * i + 1]]
        txt = () if text_kv else (text,)
        eps = noise[b] if noise is not None else torch.randn(clean.shape, generator=generator, device=dev, dtype=dt)
        x = ((1.0 - s_max) * clean.float() + s_max * eps.float()).to(dt)
        for i in range(len(sig) - 1):
            s = float(sig[i])
            ts = torch.full((1,), s * mult, dtype=torch.float32, device=dev)
            (v,) = step(x, ts, frame_pos, sink_pos, *txt, text_mask, hist_valid, *kv)
            x0 = (x.float() - v.float() * sig[i].to(dev)).to(dt)
            if s <= 1.0e-6:
                x = x0
            else:
                vel = (x.float() - x0.float()) / s
                x = (x.float() + (sig[i + 1] - sig[i]).to(dev) * vel).to(dt)
        res = capture(x, frame_pos, sink_pos, *txt, text_mask, hist_valid, *kv)
        hist_valid, hist = res[0], list(res[1:])
        hist_frames = min(hist_frames + block_size, layout.history_frames)
        out[:, :, start: start + block_size] = x
    return out
