"""Contract of the ONE ``refiner`` engine (bundle schema 2, issue 11): torch-free, shared by export and runtime.

One graph, one weight set, two optimization profiles on a symbolic latent-frame axis ``n``:

* ``sink`` (``n = sink_frames``): the raw stage-1 sink frame(s) at sigma 0 with every prefix key masked
  (``kv_valid`` all 0) and ``kv_rotate = 0``: the ``k_new`` outputs are the **pre-RoPE** sink K (the sink is
  re-rotated at a sliding position on every block), ``v_new`` its V. The pool copies them into the sink buffers.
* ``block`` (``n = block_size``): one block under [sink ; history ; block] attention. The three denoising calls
  read ``sigma`` / ``dt`` and return ``latents.out`` (the Euler update runs in the graph, so the block's latents
  stay where the engine runs); the sigma-0 commit call (``kv_rotate = 1``) returns the block's **post-RoPE** K/V
  in ``k_new`` / ``v_new``, which the pool copies into the history ring where it lives.

Inputs (batch 1, float32 unless stated; the K/V tensors in ``kv_dtype``, an export choice):
    latents [1,C,n,H,W]; noise [1,C,n,H,W] and mix [1] (the first denoising call starts from
    (1 - mix) latents + mix noise, so the clean stage-1 block is copied in where it lives and only the noise
    crosses; mix = 0 otherwise); timestep [1] (sigma x timestep_scale_multiplier); sigma [1]; dt [1] (sigma_next - sigma);
    kv_rotate [1] (1 = post-RoPE K out, 0 = pre-RoPE); frame_pos [n] int64; sink_pos [sink] int64
    (block_start - history_frames - sink + arange(sink)); text [1,L,Ct]; text_mask [1,L];
    kv_valid [sink*S + Hm] (1 = real prefix key: the sink tokens, then the history ring's tokens);
    per layer i: l{i}.sink_k, l{i}.sink_v [1,h,sink*S,D] (pre-RoPE K, V), l{i}.hist_k, l{i}.hist_v [1,h,Hm,D]
    (post-RoPE K, V; a ring of history frames in any order: every key carries its absolute RoPE position).
Outputs:
    latents.out [1,C,n,H,W] = the Euler step of ``sanawm.models.refiner.refine_stream`` (x0 when sigma = 0);
    per layer: l{i}.k_new, l{i}.v_new [1,h,n*S,D].
There is no ``state_map``: the carried state (sink, history ring, its mask) lives in the runtime's
``RefinerStatePool`` and is written by copies inside the engine's memory, never through the host.
"""

from __future__ import annotations

from .refiner_layout import RefinerLayout
from .spec import EULER_OUTPUT, StepIO, TensorSpec

FRAME_DIM = "n"
SINK, BLOCK = "sink", "block"  # the engine's optimization profiles
KV_IN = ("sink_k", "sink_v", "hist_k", "hist_v")


def layer_names(i: int) -> tuple[str, str, str, str]:
    """Layer ``i``'s carried K/V inputs: sink K, sink V, history K, history V."""
    return tuple(f"l{i}.{k}" for k in KV_IN)


def new_kv_names(i: int) -> tuple[str, str]:
    """Layer ``i``'s per-call K/V outputs (scratch the pool copies from)."""
    return f"l{i}.k_new", f"l{i}.v_new"


def refiner_profiles(layout: RefinerLayout) -> dict[str, dict[str, int]]:
    """Optimization profiles of the refiner engine (sink pass first, so the plan's profile 0 is the smaller)."""
    return {SINK: {FRAME_DIM: layout.sink_frames}, BLOCK: {FRAME_DIM: layout.block_size}}


def refiner_engine_io(dims, layout: RefinerLayout, kv_dtype: str = "float32") -> StepIO:
    """The engine's contract (see the module docstring). ``dims``: anything with ``num_layers``, ``heads``,
    ``head_dim``, ``in_channels``, ``out_channels``, ``caption_channels`` (``RefinerCore`` or the manifest's
    ``refiner`` section as a namespace)."""
    L, h, D = int(dims.num_layers), int(dims.heads), int(dims.head_dim)
    C, Ct, Co = int(dims.in_channels), int(dims.caption_channels), int(dims.out_channels)
    if Co != C:
        raise ValueError(f"the refiner engine updates its latents in place: out_channels {Co} must equal in_channels {C}")
    H, W, S = layout.latent_height, layout.latent_width, layout.tokens_per_frame
    sk, Lt, Hm = layout.sink_frames, layout.caption_length, layout.history_tokens
    n, f32, i64, kv = FRAME_DIM, "float32", "int64", kv_dtype
    ins = [
        TensorSpec("latents", f32, (1, C, n, H, W), "the call's latents (sink frames, or the block)"),
        TensorSpec("noise", f32, (1, C, n, H, W), "the block's noise eps (read when mix > 0)"),
        TensorSpec("mix", f32, (1,), "first step: sigma_0, latents := (1 - mix) latents + mix noise; else 0"),
        TensorSpec("timestep", f32, (1,), "sigma x timestep_scale_multiplier"),
        TensorSpec("sigma", f32, (1,), "this step's sigma (0: sink and commit passes)"),
        TensorSpec("dt", f32, (1,), "sigma_next - sigma (0: sink and commit passes)"),
        TensorSpec("kv_rotate", f32, (1,), "1: k_new is post-RoPE (history), 0: pre-RoPE (sink)"),
        TensorSpec("frame_pos", i64, (n,), "absolute latent frame indices of the call's frames"),
        TensorSpec("sink_pos", i64, (sk,), "re-rotation positions of the sink"),
        TensorSpec("text", f32, (1, Lt, Ct), "connector prompt embeddings"),
        TensorSpec("text_mask", f32, (1, Lt), "1 = token, 0 = padding"),
        TensorSpec("kv_valid", f32, (sk * S + Hm,), "1 = real prefix key (sink tokens, then history ring)"),
    ]
    outs = [TensorSpec(EULER_OUTPUT, f32, (1, C, n, H, W), "latents after this call's Euler step")]
    for i in range(L):
        sk_n, sv_n, hk_n, hv_n = layer_names(i)
        ins += [
            TensorSpec(sk_n, kv, (1, h, sk * S, D), "pre-RoPE sink K"),
            TensorSpec(sv_n, kv, (1, h, sk * S, D), "sink V"),
            TensorSpec(hk_n, kv, (1, h, Hm, D), "post-RoPE history K (ring)"),
            TensorSpec(hv_n, kv, (1, h, Hm, D), "history V (ring)"),
        ]
        k_n, v_n = new_kv_names(i)
        outs += [
            TensorSpec(k_n, kv, (1, h, f"{n}*{S}", D), "this call's K (kv_rotate: post- or pre-RoPE)"),
            TensorSpec(v_n, kv, (1, h, f"{n}*{S}", D), "this call's V"),
        ]
    return StepIO(tuple(ins), tuple(outs), {})
