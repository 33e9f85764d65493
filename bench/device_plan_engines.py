"""Engine contracts and emulated plans for the device plan (torch-free).

* generator: the runtime's own ``sanawm.spec.generator_engine_io`` with ``generator_profiles``.
* VAE decoder (PLANNED contract; the lead is making it device-resident now): ``vae_decoder_io`` of the later
  chunks with the latent frame axis symbolic (profile ``first`` n = 4, ``next`` n = 3; chunk 0 binds the
  zeroed caches, which its profile ignores), every conv cache as chained state, and ``frames`` converted to
  uint8 [F, H, W, 3] in the graph (issue 11: decoded frames leave the decoder as uint8).
* refiner: the runtime's own contract (``sanawm.spec_refiner.refiner_engine_io``: one engine, profiles ``sink``
  and ``block``), run by the runtime's own ``RefinerStage`` / ``RefinerStatePool`` (sink and history ring in the
  pool at the K/V dtype, this call's K/V as scratch ``l{i}.k_new`` / ``l{i}.v_new`` copied into the sink or the
  ring's frame slots on the device, the Euler step and the noise mix inside the engine).

``emulated_plan`` turns a contract into an emulated TensorRT plan with the given weight and workspace bytes.
"""

from __future__ import annotations

from sanawm.spec import StepIO, TensorSpec, _symbolic


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
    """The runtime's own one-engine refiner contract (``sanawm.spec_refiner``) and its profiles."""
    from sanawm.spec_refiner import refiner_engine_io as contract, refiner_profiles

    return contract(dims, layout, kv_dtype), refiner_profiles(layout)


def emulated_plan(emu, name: str, io: StepIO, profiles: dict, weight_bytes: int, workspace: dict) -> bytes:
    """An emulated plan of contract ``io`` (profiles in order) with these weight and per-profile workspace bytes."""
    trip = lambda ts: [(t.name, t.dtype, t.shape) for t in ts]  # noqa: E731
    profs = []
    for dims in profiles.values():
        conc = io.concrete(dims)
        profs.append({t.name: (c.shape, c.shape, c.shape) for t, c in zip(io.inputs, conc.inputs) if t.is_dynamic})
    return emu.spec_plan(name, trip(io.inputs), trip(io.outputs), profs, int(weight_bytes),
                         [int(workspace[p]) for p in profiles])
