"""Step modules (positional inputs in StepIO order, tuple outputs in StepIO order) and their I/O specs."""

from __future__ import annotations

import torch
from torch import nn

from ...spec import StepIO, TensorSpec
from .layer import MASK_NEG, RefinerCore
from ...refiner_layout import RefinerLayout
from .rope import apply_rope

def _layer_names(i: int) -> tuple[str, str, str, str]:
    return f"l{i}.sink_k", f"l{i}.sink_v", f"l{i}.hist_k", f"l{i}.hist_v"


def refiner_io(core_or_dims, layout: RefinerLayout, kind: str, text_kv: bool = False) -> StepIO:
    """Tensor contract of a refiner graph (batch 1, float32 unless stated).

    ``text_kv=True`` (step/capture): the ``text`` input is replaced by per-layer ``l{i}.text_k``,
    ``l{i}.text_v`` [1,h,L,D] (from the ``"text"`` graph, ``RefinerTextKV``), appended after each layer's
    four sink/history tensors; ``text_mask`` stays.

    ``kind``:
      * ``"text"`` (``RefinerTextKV``): input ``text``; outputs ``l{i}.text_k``, ``l{i}.text_v``.
      * ``"sink"`` (``RefinerSinkCapture``): inputs ``latents [1,C,sink,H,W]`` (raw stage-1 frames),
        ``sink_pos [sink] int64``, ``text [1,L,Ct]``, ``text_mask [1,L]``; outputs ``l{i}.sink_k``,
        ``l{i}.sink_v [1,h,sink*S,D]`` (pre-RoPE K after qk-norm, and V).
      * ``"step"`` (``RefinerStep``): inputs ``latents [1,C,n,H,W]``, ``timestep [1]`` (sigma x
        timestep_scale_multiplier), ``frame_pos [n] int64``, ``sink_pos [sink] int64`` (= block_start -
        history_frames - sink + arange(sink)), ``text``, ``text_mask``, ``hist_valid [Hmax]`` (1 = real history
        token; right-aligned), then per layer ``l{i}.sink_k``, ``l{i}.sink_v`` [1,h,sink*S,D], ``l{i}.hist_k``,
        ``l{i}.hist_v`` [1,h,Hmax,D] (post-RoPE); output ``velocity [1,C,n,H,W]``.
      * ``"capture"`` (``RefinerStep(capture=True)``): the step inputs without ``timestep`` (sigma 0 is built
        in); outputs ``hist_valid.out`` and per layer ``l{i}.hist_k.out``, ``l{i}.hist_v.out``: the window
        shifted left by one block with this block's post-RoPE K/V appended; ``state_map`` feeds them back.
    """
    c = core_or_dims
    L, h, D = c.num_layers, c.heads, c.head_dim
    C, Ct, Co = c.in_channels, c.caption_channels, c.out_channels
    H, W, S = layout.latent_height, layout.latent_width, layout.tokens_per_frame
    n, sk, Lt = layout.block_size, layout.sink_frames, layout.caption_length
    Hm = layout.history_tokens
    f32, i64 = "float32", "int64"
    text = (
        TensorSpec("text", f32, (1, Lt, Ct), "connector prompt embeddings"),
        TensorSpec("text_mask", f32, (1, Lt), "1 = token, 0 = padding"),
    )
    if kind == "text":
        outs = []
        for i in range(L):
            outs += [
                TensorSpec(f"l{i}.text_k", f32, (1, h, Lt, D), "prompt cross-attention K (after qk-norm)"),
                TensorSpec(f"l{i}.text_v", f32, (1, h, Lt, D), "prompt cross-attention V"),
            ]
        return StepIO((text[0],), tuple(outs), {})
    if kind == "sink":
        ins = (
            TensorSpec("latents", f32, (1, C, sk, H, W), "raw stage-1 sink latent frames"),
            TensorSpec("sink_pos", i64, (sk,), "sink frame positions (0..sink-1)"),
        ) + text
        outs = []
        for i in range(L):
            outs += [
                TensorSpec(f"l{i}.sink_k", f32, (1, h, sk * S, D), "pre-RoPE sink K (after qk-norm)"),
                TensorSpec(f"l{i}.sink_v", f32, (1, h, sk * S, D), "sink V"),
            ]
        return StepIO(ins, tuple(outs), {})
    if kind not in ("step", "capture"):
        raise ValueError(f"kind must be 'text', 'sink', 'step' or 'capture', got {kind!r}")
    ins = [TensorSpec("latents", f32, (1, C, n, H, W), "active block latents")]
    if kind == "step":
        ins.append(TensorSpec("timestep", f32, (1,), "sigma x timestep_scale_multiplier"))
    ins += [
        TensorSpec("frame_pos", i64, (n,), "absolute latent frame indices of the block"),
        TensorSpec("sink_pos", i64, (sk,), "re-rotation positions of the sink (block_start - hist - sink + i)"),
        *(text[1:] if text_kv else text),
        TensorSpec("hist_valid", f32, (Hm,), "1 = history token, 0 = padding (right-aligned)"),
    ]
    for i in range(L):
        sk_n, sv_n, hk_n, hv_n = _layer_names(i)
        ins += [
            TensorSpec(sk_n, f32, (1, h, sk * S, D), "pre-RoPE sink K"),
            TensorSpec(sv_n, f32, (1, h, sk * S, D), "sink V"),
            TensorSpec(hk_n, f32, (1, h, Hm, D), "post-RoPE history K (padded)"),
            TensorSpec(hv_n, f32, (1, h, Hm, D), "history V (padded)"),
        ]
        if text_kv:
            ins += [
                TensorSpec(f"l{i}.text_k", f32, (1, h, Lt, D), "prompt cross-attention K"),
                TensorSpec(f"l{i}.text_v", f32, (1, h, Lt, D), "prompt cross-attention V"),
            ]
    if kind == "step":
        return StepIO(tuple(ins), (TensorSpec("velocity", f32, (1, Co, n, H, W), "flow velocity"),), {})
    outs = [TensorSpec("hist_valid.out", f32, (Hm,), "history validity after this block")]
    smap = {"hist_valid.out": "hist_valid"}
    for i in range(L):
        _, _, hk_n, hv_n = _layer_names(i)
        outs += [
            TensorSpec(hk_n + ".out", f32, (1, h, Hm, D), "history K after this block"),
            TensorSpec(hv_n + ".out", f32, (1, h, Hm, D), "history V after this block"),
        ]
        smap[hk_n + ".out"] = hk_n
        smap[hv_n + ".out"] = hv_n
    return StepIO(tuple(ins), tuple(outs), smap)


class RefinerSinkCapture(nn.Module):
    """Raw sink latents -> per-layer pre-RoPE sink K/V (the oracle's ``capture_pre_rope`` pass at sigma 0)."""

    fp8_quantizable = tuple("core." + p for p in RefinerCore.fp8_quantizable)
    fp8_skip = tuple("core." + p for p in RefinerCore.fp8_skip)

    def __init__(self, core: RefinerCore):
        super().__init__()
        self.core = core

    def forward(self, latents, sink_pos, text, text_mask):
        c = self.core
        H, W = latents.shape[-2:]
        dt = c.proj_in.weight.dtype
        hs = c.proj_in(c.tokens(latents).to(dt))
        temb, _ = c.temb(torch.zeros(1, dtype=torch.float32, device=latents.device), dt)
        ctx, tb = c.text(text, text_mask, dt)
        rope = c.rope(sink_pos, H, W)
        outs = []
        for i, layer in enumerate(c.layers):
            # pre-RoPE K/V of this layer's input (what capture_pre_rope stores)
            shift_msa, scale_msa = layer.mod_params(temb)[:2]
            x = layer.norm1(hs) * (1 + scale_msa) + shift_msa
            k_pre, v = layer.self_kv(x)
            outs += [k_pre.float(), v.float()]
            if i + 1 < len(c.layers):
                hs, _, _ = layer(hs, temb, ctx, tb, rope, None, None, None)
        return tuple(outs)


class RefinerTextKV(nn.Module):
    """(text, text_mask) -> per-layer prompt cross-attention K/V, computed once per video (``kind="text"``).

    Feeding them to ``RefinerStep(text_kv=True)`` saves the caption projection and 2 x layers prompt K/V
    projections on every forward (~11% of a full-size step at 480p with 1024 prompt tokens), for
    2 x layers x [1, h, L, D] of extra state. The prompt mask is applied in the step graph.
    """

    fp8_quantizable = RefinerSinkCapture.fp8_quantizable
    fp8_skip = RefinerSinkCapture.fp8_skip

    def __init__(self, core: RefinerCore):
        super().__init__()
        self.core = core

    def forward(self, text):
        c = self.core
        ctx = c.caption_projection(text.to(c.proj_in.weight.dtype))
        outs = []
        for layer in c.layers:
            k, v = layer.text_kv(ctx)
            outs += [k.float(), v.float()]
        return tuple(outs)


class RefinerStep(nn.Module):
    """One active block under [sink ; history ; current] attention (see ``refiner_io`` for the I/O)."""

    fp8_quantizable = RefinerSinkCapture.fp8_quantizable
    fp8_skip = RefinerSinkCapture.fp8_skip

    def __init__(self, core: RefinerCore, capture: bool = False, text_kv: bool = False):
        super().__init__()
        self.core = core
        self.capture = capture
        self.text_kv = text_kv  # prompt K/V precomputed once per video (RefinerTextKV) instead of `text`

    def forward(self, latents, *args):
        c = self.core
        if self.capture:
            timestep = torch.zeros(1, dtype=torch.float32, device=latents.device)
        else:
            timestep, args = args[0], args[1:]
        if self.text_kv:
            frame_pos, sink_pos, text_mask, hist_valid = args[:4]
            text, kv = None, args[4:]
        else:
            frame_pos, sink_pos, text, text_mask, hist_valid = args[:5]
            kv = args[5:]
        per = 6 if self.text_kv else 4
        if len(kv) != per * c.num_layers:
            raise ValueError(
                f"expected {per * c.num_layers} per-layer K/V inputs ({per} per layer, text_kv={self.text_kv}), "
                f"got {len(kv)}; build the inputs in refiner_io(...) order"
            )
        n, H, W = latents.shape[2:]
        dt = c.proj_in.weight.dtype
        hs = c.proj_in(c.tokens(latents).to(dt))
        temb, emb_t = c.temb(timestep, dt)
        if text is None:
            tb = ((1 - text_mask.to(dt)) * -10000.0)[:, None, None, :]
        else:
            ctx, tb = c.text(text, text_mask, dt)
        rope = c.rope(frame_pos, H, W)
        srope = c.rope(sink_pos, H, W)
        n_sink = kv[0].shape[2]
        n_cur = hs.shape[1]
        valid = torch.cat(
            [torch.ones(n_sink, dtype=hist_valid.dtype, device=hist_valid.device), hist_valid,
             torch.ones(n_cur, dtype=hist_valid.dtype, device=hist_valid.device)]
        )
        key_bias = ((1.0 - valid) * MASK_NEG).to(dt)[None, None, None, :]
        outs = []
        for i, layer in enumerate(c.layers):
            sk, sv, hk, hv = kv[per * i: per * i + 4]
            if self.text_kv:
                ctx = (kv[per * i + 4], kv[per * i + 5])
            pk = torch.cat([apply_rope(sk.to(dt), *srope, c.rope_type), hk.to(dt)], dim=2)
            pv = torch.cat([sv.to(dt), hv.to(dt)], dim=2)
            last_capture = self.capture and i + 1 == len(c.layers)
            hs_new, k, v = layer(hs, temb, ctx, tb, rope, pk, pv, key_bias, capture_only=last_capture)
            if self.capture:
                outs += [
                    torch.cat([hk.float(), k.float()], dim=2)[:, :, n_cur:],
                    torch.cat([hv.float(), v.float()], dim=2)[:, :, n_cur:],
                ]
            hs = hs_new
        if self.capture:
            ones = torch.ones(n_cur, dtype=hist_valid.dtype, device=hist_valid.device)
            return (torch.cat([hist_valid, ones])[n_cur:], *outs)
        out = c.head(hs, emb_t).float()  # [1, N, C]
        return (out.reshape(1, n, H, W, -1).permute(0, 4, 1, 2, 3),)
