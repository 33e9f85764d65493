"""The device plan's emulated run: the real TensorRT executor, CudaMemory and generator runtime over a counting
device (``sanawm.emulation`` with ``backing=False``: addresses and byte counts, no memory, engine executes are
counted no-ops). This is an emulation, not a GPU run.

``run_pipeline(variant, ...)`` loads every engine of the variant (``stage1``, ``stage1+vae``, ``full``) with
``TensorRTEngine.load`` / ``activate`` on one shared activation arena, builds the session pools, and runs
chunks 0..N-1 with the runtime's own call schedules for stage 1 (``GeneratorRunner.run_chunk``) and the refiner
(``RefinerStage``, its ``RefinerStatePool`` on the device) and the PLANNED device-resident decoder schedule of
``device_plan_engines``. Per chunk it records the
host-device bytes per component (``Memory.traffic``) and the device's own counters.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device_plan_engines import emulated_plan

BACKEND = "tensorrt_rtx"
HUGE = 1 << 50  # "device memory" of the counting device: never the limit; the plan reports what is used


@dataclass
class EnginePlan:
    """What the planner knows of one engine before loading it."""

    name: str
    io: object  # StepIO
    profiles: dict
    weight_bytes: int
    workspace: dict  # profile -> activation bytes (estimate)


@dataclass
class ChunkRecord:
    chunk: int
    frames: int
    traffic: dict = field(default_factory=dict)  # component -> {h2d, d2h, d2d, by_name}
    device: dict = field(default_factory=dict)  # copy bytes per direction, allocations, live / peak bytes


class DecoderPool:
    """Planned device-resident decoder session: latents in, ping-pong conv caches, uint8 frames out."""

    def __init__(self, engine, memory):
        self.engine, self.memory = engine, memory
        big = engine.contract("first")  # the larger latents profile
        io = engine.contract("next")
        self.latents = memory.alloc_spec(big.input("latents"))
        caches = [t for t in io.inputs if t.name != "latents"]
        self.pairs = {t.name: (memory.alloc_spec(t, t.name + "#0"), memory.alloc_spec(t, t.name + "#1")) for t in caches}
        self.frames = memory.alloc_spec(io.output("frames"))
        self.parity = 0

    def decode(self, n: int, profile: str) -> np.ndarray:
        spec = self.engine.contract(profile).input("latents")
        b = {"latents": self.latents if tuple(spec.shape) == self.latents.shape else self.latents.view("latents", spec.shape),
             "frames": self.frames}
        for name, slots in self.pairs.items():
            b[name], b[name + ".out"] = slots[self.parity], slots[1 - self.parity]
        self.engine.run_bound(b, profile)
        self.parity = 1 - self.parity
        return self.memory.download(self.frames)  # the only thing that leaves: uint8 frames


def _load(emu, plan: EnginePlan, tmp: Path):
    from sanawm.engines.tensorrt import TensorRTEngine

    path = tmp / f"{plan.name}.plan"
    path.write_bytes(emulated_plan(emu, plan.name, plan.io, plan.profiles, plan.weight_bytes, plan.workspace))
    return TensorRTEngine(plan.name, path, plan.io.inputs, plan.io.outputs, plan.io.state_map, backend=BACKEND,
                          profiles=plan.profiles).load()


def _device_counters(dev) -> dict:
    return {"copy_bytes": dict(dev.copy_bytes), "copy_calls": dict(dev.copy_calls), "alloc_calls": dev.alloc_calls,
            "alloc_bytes": dev.alloc_bytes, "live_bytes": dev.live_bytes, "peak_bytes": dev.peak_bytes,
            "memset_bytes": dev.memset_bytes, "executes": dev.events["trt_execute"]}


def _diff(after: dict, before: dict) -> dict:
    out = {}
    for k, v in after.items():
        if isinstance(v, dict):
            out[k] = {d: v[d] - before[k][d] for d in v}
        elif k in ("live_bytes", "peak_bytes"):
            out[k] = v
        else:
            out[k] = v - before[k]
    return out


def run_pipeline(variant: str, cfg, plans: dict, chunks: int, refiner_layout=None, refiner_sigmas=None) -> dict:
    """Load the variant's engines on a counting device and run ``chunks`` chunks; see the module docstring."""
    from sanawm.emulation import install
    from sanawm.engines.cuda_memory import CudaMemory
    from sanawm.runtime.scheduler import Conditioning, GeneratorRunner

    names = {"stage1": ["generator"], "stage1+vae": ["generator", "vae_decoder"],
             "full": ["generator", "refiner", "vae_decoder"]}[variant]
    rng = np.random.default_rng(0)
    with install(BACKEND, total_memory=HUGE, backing=False) as emu, tempfile.TemporaryDirectory() as tmp:
        dev = emu.device
        engines = {n: _load(emu, plans[n], Path(tmp)) for n in names}
        weights_h2d = dev.copy_bytes["h2d"]  # every plan's weights went up once, at load
        weight_events = dev.events["trt_weights"]
        first = CudaMemory()  # one stream for every engine and copy (they never run at the same time)
        mem = {n: first if i == 0 else CudaMemory(stream=first.stream) for i, n in enumerate(names)}
        arena_mem = CudaMemory(stream=first.stream)
        arena_bytes = max(e.workspace_bytes for e in engines.values())
        arena = arena_mem.alloc_bytes("activations", arena_bytes)
        for n, e in engines.items():
            e.activate(mem[n], arena, arena_bytes)
        runner = GeneratorRunner(cfg, engines["generator"], memory=mem["generator"])
        # the pool follows the planned contract (K/V windows at the plan's dtype); the runtime's own
        # generator_engine_io is FP32 today, and run_bound checks shapes, not dtypes
        runner.io = plans["generator"].io
        state = runner.new_state()
        dec = DecoderPool(engines["vae_decoder"], mem["vae_decoder"]) if "vae_decoder" in engines else None
        ref = None
        if "refiner" in engines:  # the runtime's own refiner stage and pool (sanawm.runtime.refiner_stage)
            from sanawm.refiner_layout import RefinerLayout
            from sanawm.runtime.refiner_stage import RefinerStage

            lay = RefinerLayout(refiner_layout.latent_height, refiner_layout.latent_width, refiner_layout.caption_length,
                                refiner_layout.block_size, refiner_layout.kv_max_frames, refiner_layout.sink_frames,
                                tuple(refiner_sigmas))
            ref = RefinerStage(engines["refiner"], lay, memory=mem["refiner"])
            ref.set_text((np.zeros((1, ref.caption_length, ref.caption_channels), np.float32),
                          np.ones((1, ref.caption_length), np.float32)))
        pools = {n: m.traffic.allocated_bytes for n, m in mem.items()}
        kinds = {n: _by_kind(n, m.buffers) for n, m in mem.items()}
        T = cfg.first_chunk_size + (chunks - 1) * cfg.chunk_size
        H, W, C = cfg.latent_height, cfg.latent_width, cfg.in_channels
        cond = Conditioning(np.zeros((1, C, 1, H, W), np.float32), np.zeros((1, cfg.caption_length, cfg.caption_channels), np.float32),
                            np.ones((1, cfg.caption_length), np.float32), np.zeros((T, 20), np.float32),
                            np.zeros((cfg.plucker_channels, T, H, W), np.float32))
        records = []
        bounds = cfg.chunk_bounds(T)
        for c, (s, e) in enumerate(bounds):
            for m in mem.values():
                m.traffic.reset()
            allocs = {name: m.traffic.allocations for name, m in mem.items()}
            before = _device_counters(dev)
            res = runner.run_chunk(c, s, e, rng.standard_normal((1, C, e - s, H, W), dtype=np.float32), cond, state)
            latents, n = res.buffer, e - s
            if ref is not None:
                from sanawm.runtime.chunk import Chunk

                refined = ref.process(Chunk(c, s, e, buffer=latents)).refined_buffer  # stays on the device
            if dec is not None:
                prof = "first" if c == 0 else "next"
                view = dec.latents if n == dec.latents.shape[2] else dec.latents.view("latents", (1, C, n, H, W))
                _cross_copy(view, latents if ref is None else refined)  # chunk 0 refined: [raw sink ; block]
                dec.decode(n, prof)
            rec = ChunkRecord(c, n)
            for name, m in mem.items():
                t = m.traffic
                rec.traffic[name] = {"h2d": t.h2d_bytes, "d2h": t.d2h_bytes, "d2d": t.d2d_bytes,
                                     "h2d_calls": t.h2d_calls, "d2h_calls": t.d2h_calls, "d2d_calls": t.d2d_calls,
                                     # host crossings by tensor (device copies are thousands of per-head views)
                                     "by_name": {k: v for k, v in t.by_name.items() if not k.startswith("d2d:")},
                                     "allocations": t.allocations - allocs[name]}
            rec.device = _diff(_device_counters(dev), before)
            records.append(rec)
        out = {
            "variant": variant, "engines": names, "weights_h2d_at_load": weights_h2d, "weight_loads": weight_events,
            "weight_bytes": {n: plans[n].weight_bytes for n in names},
            "workspace_bytes": {n: engines[n].workspace_bytes for n in names}, "arena_bytes": arena_mem.traffic.allocated_bytes,
            "pool_bytes": pools, "pool_by_kind": kinds, "pool_buffers": {"generator": sum(b.nbytes for b in _state_buffers(state))},
            "device_live_bytes": dev.live_bytes, "device_peak_bytes": dev.peak_bytes,
            "chunks": [vars(r) for r in records],
        }
        for e in engines.values():
            e.close()
        for m in [arena_mem] + list(mem.values())[::-1]:  # the stream's owner (the first) last
            m.release()
        return out


# carried-state buffer names per component (refiner: l{i}.sink_k ..., not the sink_pos input)
STATE_MARKS = {"generator": ("#0", "#1", "_win"), "vae_decoder": ("cache.",), "refiner": (".sink_", ".hist_")}


def _by_kind(component: str, buffers) -> dict:
    """Pool bytes split into carried state and per-call I/O (scratch included), by buffer name."""
    out = {"state": 0, "io": 0}
    for b in buffers:
        state = any(m in b.name for m in STATE_MARKS[component]) and not b.name.startswith("latents")
        out["state" if state else "io"] += b.nbytes
    return out


def _state_buffers(state) -> list:
    """Every buffer of a GeneratorStatePool (what the pool allocated)."""
    bufs = [b for pair in state.pairs.values() for b in pair] + list(state.windows.values()) + list(state.latents)
    return bufs + list(state.inputs.values()) + list(state.outputs.values())


def _cross_copy(dst, src) -> None:
    """Device-to-device copy between two components' memories (same device; ordered on dst's stream)."""
    dst.memory.copy(dst, type(dst)(dst.spec.__class__(src.name, src.dtype, src.shape), src.handle, dst.memory))
