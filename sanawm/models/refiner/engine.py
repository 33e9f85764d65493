"""The module exported as the ONE ``refiner`` engine: sink capture, denoising steps and history commit in one graph.

Inputs and outputs in ``sanawm.spec_refiner.refiner_engine_io`` order (read its docstring for the modes). The
maths is the step modules' (``RefinerSinkCapture``, ``RefinerStep``) and the Euler update of
``sanawm.models.refiner.refine_stream``, so an AR loop over this module equals that oracle:

* the sink pass is a block pass whose every prefix key is masked (the additive bias underflows to an exact 0
  weight), at sigma 0, storing pre-RoPE K;
* the first denoising pass starts from (1 - mix) latents + mix noise (the oracle's noisy block);
* a denoising pass returns ``latents.out`` = x + dt * (x - x0) / sigma with x0 = x - v * sigma, the oracle's
  float32 operations in its order;
* the commit pass (sigma 0) returns each layer's post-RoPE K and V of the refined block.

Every call computes both the velocity and the K/V (one graph); the runtime keeps what the call is for.
"""

from __future__ import annotations

import torch
from torch import nn

from ...refiner_layout import RefinerLayout
from ...spec_refiner import refiner_engine_io
from .layer import MASK_NEG, RefinerCore
from .rope import apply_rope

SIGMA_EPS = 1.0e-6  # the oracle's "clean" test (sigma <= 1e-6: x = x0)


class RefinerEngine(nn.Module):
    """One graph for every refiner call (see the module docstring)."""

    fp8_quantizable = tuple("core." + p for p in RefinerCore.fp8_quantizable)
    fp8_skip = tuple("core." + p for p in RefinerCore.fp8_skip)

    def __init__(self, core: RefinerCore, layout: RefinerLayout, kv_dtype: str = "float32"):
        super().__init__()
        self.core = core
        self.io = refiner_engine_io(core, layout, kv_dtype)
        self.kv_dtype = getattr(torch, kv_dtype)

    def forward(self, *args):
        # one positional tuple: torch.export's dynamic_shapes then cover the K/V inputs (which have no dynamic dim)
        latents, noise, mix, timestep, sigma, dt, kv_rotate, frame_pos, sink_pos, text, text_mask, kv_valid, *kv = args
        c = self.core
        # 0. the block's noisy start (refine_stream: (1 - s0) z + s0 eps); mix = 0 leaves latents exactly as they are
        m = mix.reshape(1, 1, 1, 1, 1)
        latents = (1.0 - m) * latents.float() + m * noise.float()
        if len(kv) != 4 * c.num_layers:
            raise ValueError(f"expected {4 * c.num_layers} per-layer K/V inputs (4 per layer), got {len(kv)}; "
                             "build the inputs in refiner_engine_io(...) order")
        n, H, W = latents.shape[2:]
        wdt = c.proj_in.weight.dtype
        # 1. embeddings: tokens, timestep, prompt, RoPE of the call's frames and of the re-rotated sink
        hs = c.proj_in(c.tokens(latents).to(wdt))
        temb, emb_t = c.temb(timestep, wdt)
        ctx, tb = c.text(text, text_mask, wdt)
        rope = c.rope(frame_pos, H, W)
        srope = c.rope(sink_pos, H, W)
        ones = torch.ones(hs.shape[1], dtype=kv_valid.dtype, device=kv_valid.device)
        key_bias = ((1.0 - torch.cat([kv_valid, ones])) * MASK_NEG).to(wdt)[None, None, None, :]
        rotate = kv_rotate.reshape(1, 1, 1, 1) > 0.5
        # 2. layers over [sink ; history ; call] keys; keep each layer's K (post- or pre-RoPE) and V
        outs = []
        for i, layer in enumerate(c.layers):
            sk, sv, hk, hv = (t.to(wdt) for t in kv[4 * i: 4 * i + 4])
            pk = torch.cat([apply_rope(sk, *srope, c.rope_type), hk], dim=2)
            pv = torch.cat([sv, hv], dim=2)
            hs, k_post, v, k_pre = layer(hs, temb, ctx, tb, rope, pk, pv, key_bias, with_pre_rope=True)
            outs += [torch.where(rotate, k_post, k_pre).to(self.kv_dtype), v.to(self.kv_dtype)]
        # 3. velocity and the Euler step (refine_stream's float32 order; x0 at sigma 0)
        vel = c.head(hs, emb_t).float().reshape(1, n, H, W, -1).permute(0, 4, 1, 2, 3)
        x = latents.float()
        s = sigma.reshape(1, 1, 1, 1, 1)
        x0 = x - vel * s
        step = x + dt.reshape(1, 1, 1, 1, 1) * ((x - x0) / torch.clamp(s, min=SIGMA_EPS))
        return (torch.where(s <= SIGMA_EPS, x0, step), *outs)
