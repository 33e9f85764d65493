"""Stage-2 refiner (LTX-2 DiT) as export-friendly step modules with explicit K/V state.

The oracle is diffusers' ``SanaWMLTX2Refiner`` (AR mode, ``block_size`` 3, ``kv_max_frames`` 11). Its
transformer keeps the attention sink and the sliding history in a Python-side ``SanaWMRefinerKVCache``; here
every carried tensor is an explicit input/output so one fixed-shape graph serves every block:

* ``RefinerSinkCapture``: raw stage-1 latent frame(s) ``[0, sink)`` at sigma 0 -> per-layer **pre-RoPE** K and
  V of the sink (plain self-attention over the sink tokens, RoPE at ``sink_pos``).
* ``RefinerStep`` (``capture=False``): one active block at one timestep. Keys = [sink K re-rotated at
  ``sink_pos`` ; padded history K (post-RoPE, masked by ``hist_valid``) ; current K], queries = active block.
  Returns the flow velocity.
* ``RefinerStep`` (``capture=True``): the clean sigma-0 forward under the same prefix; returns the history
  window shifted by one block with this block's **post-RoPE** K/V appended (``hist_*.out`` -> ``hist_*``).

The history buffer holds ``kv_max_frames - sink`` latent frames, right-aligned (oldest first, padding at the
front); shifting it left by one block and appending keeps exactly the oracle's "last N frames" trim.
Positions (block frames and the sliding sink offset ``block_start - history_frames - sink``) are int64
inputs; RoPE cos/sin are computed in the graph with the same float32 operation order as diffusers.

Layer maths reuses the diffusers block's submodules (linears, norms, FFN, tables); attention, RoPE and the
K/V plumbing are written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import StepIO, TensorSpec

STAGE_2_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875, 0.0)
MASK_NEG = -3.0e4  # additive bias for padded history keys (finite so FP16 engines stay NaN-free)


# ----------------------------------------------------------------------------------------------------------
# configuration and loading
# ----------------------------------------------------------------------------------------------------------


def tiny_refiner_config(**overrides) -> dict:
    """Config kwargs of a tiny ``SanaWMLTX2RefinerTransformer3DModel`` for tests (2 layers, 2 heads x 16)."""
    cfg = dict(
        in_channels=16,
        out_channels=16,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=24,
        num_layers=2,
        audio_in_channels=8,
        audio_out_channels=8,
        audio_num_attention_heads=2,
        audio_attention_head_dim=8,
        audio_cross_attention_dim=16,
        rope_type="split",
        gated_attn=False,
        cross_attn_mod=False,
    )
    cfg.update(overrides)
    return cfg


def make_tiny_refiner_transformer(seed: int = 0, **overrides):
    """Random-weight tiny diffusers refiner transformer (float32, eval mode)."""
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel

    torch.manual_seed(seed)
    model = SanaWMLTX2RefinerTransformer3DModel(**tiny_refiner_config(**overrides))
    # randomise the zero-ish tables a little more so every path carries signal
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table"):
                p.normal_(0.0, 0.2)
    return model.float().eval()


def load_refiner_transformer(path: str, dtype: torch.dtype = torch.bfloat16, subfolder: str | None = None):
    """Load ``SanaWMLTX2RefinerTransformer3DModel`` from a local diffusers folder (``config.json`` + weights).

    ``path`` is the refiner's ``transformer/`` folder, or the repo root with ``subfolder="transformer"``.
    """
    import os

    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel

    where = os.path.join(path, subfolder) if subfolder else path
    if not os.path.isfile(os.path.join(where, "config.json")):
        raise FileNotFoundError(
            f"no config.json in {where!r}: pass the refiner's diffusers 'transformer' folder "
            "(or the repo root with subfolder='transformer')"
        )
    kw = {"subfolder": subfolder} if subfolder else {}
    return SanaWMLTX2RefinerTransformer3DModel.from_pretrained(path, torch_dtype=dtype, **kw).eval()


@dataclass(frozen=True)
class RefinerLayout:
    """Fixed shapes of the exported graphs (batch 1)."""

    latent_height: int
    latent_width: int
    caption_length: int
    block_size: int = 3
    kv_max_frames: int = 11
    sink_frames: int = 1

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_height * self.latent_width

    @property
    def history_frames(self) -> int:
        return self.kv_max_frames - self.sink_frames

    @property
    def history_tokens(self) -> int:
        return self.history_frames * self.tokens_per_frame

    def __post_init__(self):
        if self.history_frames < 1:
            raise ValueError(
                f"kv_max_frames={self.kv_max_frames} leaves no history after {self.sink_frames} sink frame(s); "
                "use kv_max_frames >= sink_frames + 1"
            )


# ----------------------------------------------------------------------------------------------------------
# RoPE (LTX-2 video RoPE at explicit absolute frame positions)
# ----------------------------------------------------------------------------------------------------------


class RefinerRope(nn.Module):
    """cos/sin tables ``[1, heads, n*H*W, r]`` from int64 frame positions, as diffusers builds them.

    Mirrors ``build_rotary_emb_for_absolute_positions`` + ``SanaWMLTX2AudioVideoRotaryPosEmbed.forward`` with
    the same float32 operation order (the products reach ~1e4 rad, so the order matters at 1e-4).
    """

    def __init__(self, rope, fps: float):
        super().__init__()
        if rope.patch_size != 1 or rope.patch_size_t != 1:
            raise NotImplementedError("refiner step modules support patch_size = patch_size_t = 1 (LTX-2) only")
        self.dim = rope.dim
        self.heads = rope.num_attention_heads
        self.rope_type = rope.rope_type
        self.scale = tuple(int(s) for s in rope.scale_factors)
        self.causal_offset = float(rope.causal_offset)
        self.base = (float(rope.base_num_frames), float(rope.base_height), float(rope.base_width))
        self.fps = float(fps)
        n = self.dim // 6
        fdt = torch.float64 if rope.double_precision else torch.float32
        pw = torch.pow(rope.theta, torch.linspace(0.0, 1.0, steps=n, dtype=fdt))
        self.register_buffer("freqs", (pw * torch.pi / 2.0).to(torch.float32), persistent=False)

    def forward(self, frame_pos: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        s_t, s_h, s_w = self.scale
        f = frame_pos.to(torch.float32)
        # temporal: pixel-space [start, end) -> causal shift, clamp, / fps -> midpoint / base
        t0 = ((f * s_t + self.causal_offset - s_t).clamp(min=0) / self.fps)
        t1 = (((f + 1.0) * s_t + self.causal_offset - s_t).clamp(min=0) / self.fps)
        t = (t0 + t1) / 2.0 / self.base[0]  # [n]
        gh = torch.arange(height, dtype=torch.float32, device=f.device)
        gw = torch.arange(width, dtype=torch.float32, device=f.device)
        hh = ((gh * s_h) + ((gh + 1.0) * s_h)) / 2.0 / self.base[1]  # [H]
        ww = ((gw * s_w) + ((gw + 1.0) * s_w)) / 2.0 / self.base[2]  # [W]
        n, H, W = f.shape[0], height, width
        grid = torch.stack(
            [
                t[:, None, None].expand(n, H, W),
                hh[None, :, None].expand(n, H, W),
                ww[None, None, :].expand(n, H, W),
            ],
            dim=-1,
        ).reshape(n * H * W, 3)
        fr = (grid.unsqueeze(-1) * 2 - 1) * self.freqs  # [N, 3, F]
        fr = fr.transpose(-1, -2).flatten(1)  # [N, 3F]
        N = fr.shape[0]
        if self.rope_type == "split":
            pad = self.dim // 2 - fr.shape[-1]
            cos, sin = fr.cos(), fr.sin()
            if pad:
                cos = torch.cat([torch.ones_like(cos[:, :pad]), cos], dim=-1)
                sin = torch.cat([torch.zeros_like(sin[:, :pad]), sin], dim=-1)
        else:
            cos = fr.cos().repeat_interleave(2, dim=-1)
            sin = fr.sin().repeat_interleave(2, dim=-1)
            pad = self.dim % 6
            if pad:
                cos = torch.cat([torch.ones_like(cos[:, :pad]), cos], dim=-1)
                sin = torch.cat([torch.zeros_like(sin[:, :pad]), sin], dim=-1)
        cos = cos.reshape(N, self.heads, -1).transpose(0, 1).unsqueeze(0)  # [1, h, N, r]
        sin = sin.reshape(N, self.heads, -1).transpose(0, 1).unsqueeze(0)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_type: str) -> torch.Tensor:
    """Rotate ``x`` [1, h, N, D] (float32 maths, like diffusers)."""
    dt = x.dtype
    x = x.float()
    if rope_type == "split":
        r = x.shape[-1] // 2
        x1, x2 = x[..., :r], x[..., r:]
        out = torch.cat([x1 * cos - sin * x2, x2 * cos + sin * x1], dim=-1)
    else:
        xr, xi = x[..., 0::2], x[..., 1::2]
        rot = torch.stack([-xi, xr], dim=-1).flatten(-2)
        out = x * cos + rot * sin
    return out.to(dt)


# ----------------------------------------------------------------------------------------------------------
# one transformer layer with explicit K/V
# ----------------------------------------------------------------------------------------------------------


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:  # [1, N, h*D] -> [1, h, N, D]
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:  # [1, h, N, D] -> [1, N, h*D]
    return x.transpose(1, 2).flatten(2)


def _attend(q, k, v, bias):
    # SDPA: fused kernels in torch on GPU; the ONNX exporter (opset <= 22) decomposes it to MatMul/Softmax
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class RefinerLayer(nn.Module):
    """Video path of ``SanaWMLTX2RefinerTransformerBlock`` (self-attn over [sink; history; current], prompt
    cross-attn, FFN) with every K/V passed explicitly. Holds references to the diffusers submodules only, so the
    audio branches are not part of this module (nor of an exported graph)."""

    def __init__(self, block, rope_type: str):
        super().__init__()
        if getattr(block, "video_cross_attn_adaln", False):
            raise NotImplementedError("cross_attn_mod=True (LTX-2.3 prompt AdaLN) is not supported by the refiner")
        self.norm1, self.attn1 = block.norm1, block.attn1
        self.norm2, self.attn2 = block.norm2, block.attn2
        self.norm3, self.ff = block.norm3, block.ff
        self.scale_shift_table = block.scale_shift_table
        self.heads = block.attn1.heads
        self.rope_type = rope_type

    def mod_params(self, temb: torch.Tensor):
        # temb [1, 1, 6*dim] -> six [1, 1, dim]
        t = self.scale_shift_table[None, None] + temb.reshape(1, 1, self.scale_shift_table.shape[0], -1)
        return t.unbind(dim=2)

    def self_kv(self, x: torch.Tensor):
        """Pre-RoPE K (after qk-norm) and V of ``x`` [1, N, dim] -> [1, h, N, D] each."""
        a = self.attn1
        return _heads(a.norm_k(a.to_k(x)), self.heads), _heads(a.to_v(x), self.heads)

    def text_kv(self, ctx: torch.Tensor):
        """Prompt cross-attention K (after qk-norm) and V of the projected prompt ``ctx`` -> [1, h, L, D]."""
        b = self.attn2
        return _heads(b.norm_k(b.to_k(ctx)), self.heads), _heads(b.to_v(ctx), self.heads)

    def _gate_out(self, a, x_in, o):
        if a.to_gate_logits is not None:
            g = 2.0 * torch.sigmoid(a.to_gate_logits(x_in))  # [1, N, h]
            o = o * g.transpose(1, 2).unsqueeze(-1)
        return a.to_out[0](_merge(o))

    def forward(self, hs, temb, ctx, text_bias, rope, prefix_k, prefix_v, key_bias, capture_only: bool = False):
        """hs [1,N,dim]; ctx: projected prompt [1,L,dim] or its precomputed (text_k, text_v); rope (cos, sin)
        of the active tokens; prefix_k/v [1,h,P,D] post-RoPE (or None).

        Returns (hidden, k_post, v) with this layer's post-RoPE K and V of the active tokens.
        """
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.mod_params(temb)
        x = self.norm1(hs) * (1 + scale_msa) + shift_msa
        a = self.attn1
        q = _heads(a.norm_q(a.to_q(x)), self.heads)
        k, v = self.self_kv(x)
        q = apply_rope(q, *rope, self.rope_type)
        k = apply_rope(k, *rope, self.rope_type)
        if capture_only:
            return hs, k, v
        if prefix_k is not None:
            kk, vv = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
        else:
            kk, vv = k, v
        o = _attend(q, kk, vv, key_bias)
        hs = hs + self._gate_out(a, x, o) * gate_msa

        x = self.norm2(hs)
        b = self.attn2
        q2 = _heads(b.norm_q(b.to_q(x)), self.heads)
        k2, v2 = ctx if isinstance(ctx, tuple) else self.text_kv(ctx)
        hs = hs + self._gate_out(b, x, _attend(q2, k2.to(q2.dtype), v2.to(q2.dtype), text_bias))

        x = self.norm3(hs) * (1 + scale_mlp) + shift_mlp
        hs = hs + self.ff(x) * gate_mlp
        return hs, k, v


class RefinerCore(nn.Module):
    """Video-only refiner transformer with explicit K/V (shared by the step modules)."""

    # precision policy (read by sanawm.export.quantize): fnmatch patterns of module names
    # (norms have no Linear; per-head gate logits are tiny and stay FP32 by not being listed)
    fp8_quantizable = tuple(
        f"layers.*.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")
    ) + ("layers.*.ff.net.0.proj", "layers.*.ff.net.2")
    fp8_skip = ("proj_in", "proj_out", "time_embed.*", "caption_projection.*")

    def __init__(self, transformer, fps: float = 16.0):
        super().__init__()
        cfg = transformer.config
        self.proj_in, self.proj_out = transformer.proj_in, transformer.proj_out
        self.time_embed = transformer.time_embed
        self.caption_projection = transformer.caption_projection
        self.norm_out = transformer.norm_out
        self.scale_shift_table = transformer.scale_shift_table
        self.rope = RefinerRope(transformer.rope, fps)
        self.layers = nn.ModuleList(RefinerLayer(b, cfg.rope_type) for b in transformer.transformer_blocks)
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.attention_head_dim
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.caption_channels = cfg.caption_channels
        self.timestep_scale_multiplier = float(cfg.timestep_scale_multiplier)
        self.rope_type = cfg.rope_type
        self.fps = float(fps)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # -- shared pieces ------------------------------------------------------------------------------------
    def tokens(self, latents: torch.Tensor) -> torch.Tensor:  # [1,C,n,H,W] -> [1, n*H*W, C]
        return latents.permute(0, 2, 3, 4, 1).flatten(1, 3)

    def text(self, text: torch.Tensor, text_mask: torch.Tensor, dtype):
        ctx = self.caption_projection(text.to(dtype))
        bias = ((1 - text_mask.to(dtype)) * -10000.0)[:, None, None, :]  # [1,1,1,L]
        return ctx, bias

    def temb(self, timestep: torch.Tensor, dtype):
        temb, emb_t = self.time_embed(timestep.reshape(-1)[:1], batch_size=1, hidden_dtype=dtype)
        return temb.view(1, 1, -1), emb_t.view(1, 1, -1)

    def head(self, hs, emb_t):
        ss = self.scale_shift_table[None, None] + emb_t[:, :, None]
        shift, scale = ss[:, :, 0], ss[:, :, 1]
        return self.proj_out(self.norm_out(hs) * (1 + scale) + shift)


# ----------------------------------------------------------------------------------------------------------
# step modules (positional inputs in StepIO order, tuple outputs in StepIO order)
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# the AR loop in torch over the step modules
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# one layer alone (full-size export checks without allocating the 48-layer model)
# ----------------------------------------------------------------------------------------------------------


def make_refiner_layer(
    dim: int = 4096,
    heads: int = 32,
    cross_attention_dim: int = 4096,
    rope_type: str = "split",
    gated_attn: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    latent_height: int = 2,
    latent_width: int = 3,
) -> "RefinerLayerGraph":
    """A single refiner layer with random weights built from the diffusers submodules (no audio, no model)."""
    from types import SimpleNamespace

    from diffusers.models.attention import FeedForward
    from diffusers.models.normalization import RMSNorm
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2Attention

    torch.manual_seed(seed)
    d = dim // heads
    blk = nn.Module()
    blk.norm1 = RMSNorm(dim, eps=1e-6, elementwise_affine=False)
    blk.norm2 = RMSNorm(dim, eps=1e-6, elementwise_affine=False)
    blk.norm3 = RMSNorm(dim, eps=1e-6, elementwise_affine=False)
    blk.attn1 = SanaWMLTX2Attention(dim, heads=heads, kv_heads=heads, dim_head=d, rope_type=rope_type,
                                    apply_gated_attention=gated_attn)
    blk.attn2 = SanaWMLTX2Attention(dim, heads=heads, kv_heads=heads, dim_head=d, rope_type=rope_type,
                                    cross_attention_dim=cross_attention_dim, apply_gated_attention=gated_attn)
    blk.ff = FeedForward(dim, activation_fn="gelu-approximate", bias=True)
    blk.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
    rope = SimpleNamespace(dim=dim, num_attention_heads=heads, rope_type=rope_type, scale_factors=(8, 32, 32),
                           causal_offset=1, base_num_frames=20, base_height=2048, base_width=2048, theta=10000.0,
                           double_precision=True, patch_size=1, patch_size_t=1)
    layer = RefinerLayer(blk, rope_type)
    return RefinerLayerGraph(layer, RefinerRope(rope, 16.0), latent_height, latent_width).to(dtype).eval()


class RefinerLayerGraph(nn.Module):
    """One layer as a graph: (hidden, temb, ctx, text_mask, frame_pos, sink_pos, hist_valid, sink_k, sink_v,
    hist_k, hist_v) -> (hidden.out, k, v) with k post-RoPE. ``ctx`` is the caption-projected prompt."""

    fp8_quantizable = tuple(
        f"layer.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")
    ) + ("layer.ff.net.0.proj", "layer.ff.net.2")

    def __init__(self, layer: RefinerLayer, rope: RefinerRope, latent_height: int, latent_width: int):
        super().__init__()
        self.layer, self.rope = layer, rope
        self._hw = (int(latent_height), int(latent_width))

    def io(self, caption_length: int, block_size: int = 3, history_frames: int = 10, sink_frames: int = 1,
           dtype: str = "float32") -> StepIO:
        latent_height, latent_width = self._hw
        dim = self.layer.scale_shift_table.shape[1]
        h = self.layer.heads
        D = dim // h
        S = latent_height * latent_width
        N, Hm, Sk = block_size * S, history_frames * S, sink_frames * S
        ins = (
            TensorSpec("hidden", dtype, (1, N, dim)),
            TensorSpec("temb", dtype, (1, 1, 6 * dim)),
            TensorSpec("ctx", dtype, (1, caption_length, dim)),
            TensorSpec("text_mask", "float32", (1, caption_length)),
            TensorSpec("frame_pos", "int64", (block_size,)),
            TensorSpec("sink_pos", "int64", (sink_frames,)),
            TensorSpec("hist_valid", "float32", (Hm,)),
            TensorSpec("sink_k", dtype, (1, h, Sk, D)),
            TensorSpec("sink_v", dtype, (1, h, Sk, D)),
            TensorSpec("hist_k", dtype, (1, h, Hm, D)),
            TensorSpec("hist_v", dtype, (1, h, Hm, D)),
        )
        outs = (
            TensorSpec("hidden.out", dtype, (1, N, dim)),
            TensorSpec("k", dtype, (1, h, N, D)),
            TensorSpec("v", dtype, (1, h, N, D)),
        )
        return StepIO(ins, outs, {})

    def forward(self, hidden, temb, ctx, text_mask, frame_pos, sink_pos, hist_valid, sink_k, sink_v, hist_k, hist_v):
        H, W = self._hw
        dt = hidden.dtype
        rope = tuple(t.to(dt) for t in self.rope(frame_pos, H, W))
        srope = tuple(t.to(dt) for t in self.rope(sink_pos, H, W))
        n_cur = hidden.shape[1]
        one = torch.ones(sink_k.shape[2], dtype=hist_valid.dtype, device=hist_valid.device)
        valid = torch.cat([one, hist_valid, torch.ones(n_cur, dtype=hist_valid.dtype, device=hist_valid.device)])
        key_bias = ((1.0 - valid) * MASK_NEG).to(dt)[None, None, None, :]
        tb = ((1 - text_mask.to(dt)) * -10000.0)[:, None, None, :]
        pk = torch.cat([apply_rope(sink_k, *srope, self.layer.rope_type), hist_k], dim=2)
        pv = torch.cat([sink_v, hist_v], dim=2)
        return self.layer(hidden, temb, ctx, tb, rope, pk, pv, key_bias)


# ----------------------------------------------------------------------------------------------------------
# ONNX Runtime adapter: an exported graph as a drop-in for a step module in refine_stream
# ----------------------------------------------------------------------------------------------------------


class OnnxStep:
    """Call an exported graph positionally with torch tensors (StepIO input order); returns a tuple of tensors."""

    def __init__(self, path, io: StepIO, threads: int = 0):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.io = io
        self.out_names = [t.name for t in io.outputs]

    def __call__(self, *args):
        if len(args) != len(self.io.inputs):
            raise ValueError(f"graph takes {len(self.io.inputs)} inputs, got {len(args)}")
        feeds = {t.name: a.detach().cpu().numpy().astype(t.dtype) for t, a in zip(self.io.inputs, args)}
        return tuple(torch.from_numpy(o) for o in self.sess.run(self.out_names, feeds))
