"""Engine contracts and emulated plans for the device plan (torch-free).

* generator: the runtime's own ``sanawm.spec.generator_engine_io`` with ``generator_profiles``.
* VAE decoder (PLANNED contract; the lead is making it device-resident now): ``vae_decoder_io`` of the later
  chunks with the latent frame axis symbolic (profile ``first`` n = 4, ``next`` n = 3; chunk 0 binds the
  zeroed caches, which its profile ignores), every conv cache as chained state, and ``frames`` converted to
  uint8 [F, H, W, 3] in the graph (issue 11: decoded frames leave the decoder as uint8).
* refiner (PLANNED contract, device-resident; today's runtime runs it on the host path): one engine for sink
  capture, denoise steps and history capture, selected by the small ``mode`` input (profile ``sink`` n =
  sink frames, ``block`` n = block size). Sink and history K/V live in the pool at the K/V dtype; history is
  a ring of ``history_frames`` frame slots masked by ``hist_valid``; the engine returns this call's K/V as
  scratch ``l{i}.k_chunk`` / ``l{i}.v_chunk`` that a device copy moves into the sink or a history slot, and
  does the Euler step inside (``dt``; ``mix`` blends the uploaded noise on the first step).

``emulated_plan`` turns a contract into an emulated TensorRT plan with the given weight and workspace bytes.
"""

from __future__ import annotations

from sanawm.spec import EULER_INPUT, EULER_OUTPUT, StepIO, TensorSpec, _symbolic


def merge_profiles(a: StepIO, b: StepIO, na: int, nb: int) -> StepIO:
    """Two fixed-shape contracts (n = na, n = nb) as one with a symbolic frame axis (``sanawm.spec`` rule)."""
    def merge(ta, tb):
        return tuple(TensorSpec(x.name, x.dtype, _symbolic(x.shape, y.shape, na, nb), x.doc) for x, y in zip(ta, tb))
    return StepIO(merge(a.inputs, b.inputs), merge(a.outputs, b.outputs), dict(b.state_map))


def decoder_engine_io(vae_config: dict, latent_hw: tuple[int, int]) -> tuple[StepIO, dict]:
    from sanawm.models.vae import vae_decoder_io

    first, nxt = (vae_decoder_io(vae_config, False, latent_hw, n) for n in (4, 3))
    io = merge_profiles(first, nxt, 4, 3)
    frames = next(t for t in vae_decoder_io(vae_config, False, latent_hw, 3).outputs if t.name == "frames")
    _, ch, F, H, W = frames.shape
    outs = tuple(TensorSpec("frames", "uint8", (F, H, W, ch), "decoded RGB frames, uint8 NHWC (in-graph)")
                 if t.name == "frames" else t for t in io.outputs)
    return StepIO(io.inputs, outs, io.state_map), {"first": {"n": 4}, "next": {"n": 3}}


def refiner_engine_io(dims, layout, kv_dtype: str) -> tuple[StepIO, dict]:
    """``dims``: anything with ``num_layers, heads, head_dim, in_channels, caption_channels`` (RefinerCore)."""
    L, h, D, C = dims.num_layers, dims.heads, dims.head_dim, dims.in_channels
    H, W, S = layout.latent_height, layout.latent_width, layout.tokens_per_frame
    sk, Hm = layout.sink_frames, layout.history_tokens
    f32 = "float32"
    ins = [
        TensorSpec("latents", f32, (1, C, "n", H, W), "current latents (clean stage-1 latents before step 1)"),
        TensorSpec("noise", f32, (1, C, "n", H, W), "refiner noise eps (blended in by mix)"),
        TensorSpec("mix", f32, (1,), "sigma0 on the first step, else 0"),
        TensorSpec("mode", f32, (1,), "0 sink capture, 1 denoise step, 2 history capture"),
        TensorSpec("timestep", f32, (1,), "sigma x timestep_scale_multiplier"),
        TensorSpec(EULER_INPUT, f32, (1,), "sigma_next - sigma (0 on captures)"),
        TensorSpec("frame_pos", "int64", ("n",), "absolute latent frame indices"),
        TensorSpec("sink_pos", "int64", (sk,), "sink re-rotation positions"),
        TensorSpec("text", f32, (1, layout.caption_length, dims.caption_channels), "prompt features"),
        TensorSpec("text_mask", f32, (1, layout.caption_length), "1 = token"),
        TensorSpec("hist_valid", f32, (Hm,), "1 = history token held in the ring slot"),
    ]
    outs = [TensorSpec(EULER_OUTPUT, f32, (1, C, "n", H, W), "latents + dt * velocity")]
    for i in range(L):
        for nm in ("sink_k", "sink_v"):
            ins.append(TensorSpec(f"l{i}.{nm}", kv_dtype, (1, h, sk * S, D), "sink K/V (pre-RoPE K)"))
        for nm in ("hist_k", "hist_v"):
            ins.append(TensorSpec(f"l{i}.{nm}", kv_dtype, (1, h, Hm, D), "history ring (post-RoPE K)"))
        for nm in ("k_chunk", "v_chunk"):
            outs.append(TensorSpec(f"l{i}.{nm}", kv_dtype, (1, h, f"n*{S}", D), "this call's K/V (scratch)"))
    return StepIO(tuple(ins), tuple(outs), {}), {"sink": {"n": sk}, "block": {"n": layout.block_size}}


def emulated_plan(emu, name: str, io: StepIO, profiles: dict, weight_bytes: int, workspace: dict) -> bytes:
    """An emulated plan of contract ``io`` (profiles in order) with these weight and per-profile workspace bytes."""
    trip = lambda ts: [(t.name, t.dtype, t.shape) for t in ts]  # noqa: E731
    profs = []
    for dims in profiles.values():
        conc = io.concrete(dims)
        profs.append({t.name: (c.shape, c.shape, c.shape) for t, c in zip(io.inputs, conc.inputs) if t.is_dynamic})
    return emu.spec_plan(name, trip(io.inputs), trip(io.outputs), profs, int(weight_bytes),
                         [int(workspace[p]) for p in profiles])
