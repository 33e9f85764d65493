"""Test/bench helpers for the refiner, kept out of the library.

* ``make_refiner_layer`` / ``RefinerLayerGraph``: one full-size layer alone, so export checks run without
  allocating the 48-layer model.
* ``OnnxStep``: an exported graph on ONNX Runtime as a drop-in for a step module in ``refine_stream``
  (``bench/refiner.py`` imports it from here too).
"""

from __future__ import annotations

import torch
from torch import nn

from sanawm.models.refiner import MASK_NEG, RefinerLayer, RefinerRope, apply_rope
from sanawm.spec import StepIO, TensorSpec

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