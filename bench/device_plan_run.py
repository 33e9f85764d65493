"""The device plan's emulated run: the real TensorRT executor, CudaMemory and generator runtime over a counting
device (``sanawm.emulation`` with ``backing=False``: addresses and byte counts, no memory, engine executes are
counted no-ops). This is an emulation, not a GPU run.

``run_pipeline(variant, ...)`` loads every engine of the variant (``stage1``, ``stage1+vae``, ``full``) with
``TensorRTEngine.load`` / ``activate`` on one shared activation arena, builds the session pools, and runs
chunks 0..N-1 with the runtime's own call schedule for stage 1 (``GeneratorRunner.run_chunk``) and the PLANNED
device-resident schedules of ``device_plan_engines`` for the decoder and the refiner. Per chunk it records the
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


class RefinerPool:
    """Planned device-resident refiner session (``device_plan_engines.refiner_engine_io``)."""

    def __init__(self, engine, memory, layout, sigmas, rng):
        self.engine, self.memory, self.layout, self.sigmas, self.rng = engine, memory, layout, sigmas, rng
        io = engine.contract("block")
        alloc = memory.alloc_spec
        self.lat = (alloc(io.input("latents"), "latents#0"), alloc(io.input("latents"), "latents#1"))
        self.ins = {t.name: alloc(t) for t in io.inputs if t.name != "latents"}
        self.outs = {t.name: alloc(t) for t in io.outputs if t.name != "latents.out"}
        self.held: list[int] = []  # frame slot -> ring order (oldest first)
        self.block = 0

    def _bind(self, n: int, profile: str, src: int) -> dict:
        io = self.engine.contract(profile)
        b = {}
        for t in io.inputs + io.outputs:
            buf = {"latents": self.lat[src], "latents.out": self.lat[1 - src]}.get(t.name) or self.ins.get(t.name) or self.outs[t.name]
            b[t.name] = buf if tuple(t.shape) == buf.shape else buf.view(t.name, t.shape)
        return b

    def _scalars(self, mode: float, mix: float, t: float, dt: float) -> None:
        for name, v in (("mode", mode), ("mix", mix), ("timestep", t), ("dt", dt)):
            self.memory.upload(self.ins[name], np.array([v], np.float32))

    def _stash(self, dst_prefix: str, frames: int, first_slot: int | None) -> None:
        """Device copies of this call's K/V scratch into the sink (``first_slot`` None) or ring frame slots."""
        S, Hm = self.layout.tokens_per_frame, self.layout.history_tokens
        for name, buf in self.outs.items():
            if not name.endswith("_chunk"):
                continue
            layer, kind = name.split(".")
            dst = self.ins[f"{layer}.{dst_prefix}_{kind[0]}"]
            _, h, _, D = dst.shape
            item = dst.nbytes // (h * dst.shape[2] * D)
            n_tok = frames * S
            for head in range(h):
                src = buf.view(f"{name}[{head}]", (n_tok, D), head * n_tok * D * item)  # the bound [1,h,n*S,D] view
                if first_slot is None:
                    self.memory.copy(dst.view(f"{dst.name}[{head}]", (n_tok, D), head * n_tok * D * item), src)
                    continue
                for f in range(frames):  # one ring frame slot per frame (slots wrap)
                    slot = (first_slot + f) % self.layout.history_frames
                    d = dst.view(f"{dst.name}[{head},{slot}]", (S, D), (head * Hm + slot * S) * D * item)
                    self.memory.copy(d, src.view(f"{src.name}[{f}]", (S, D), f * S * D * item))

    def sink(self, clean, text, text_mask) -> None:
        """Chunk 0: capture the sink frame(s); upload the prompt once."""
        sk = self.layout.sink_frames
        self.memory.upload(self.ins["text"], text)
        self.memory.upload(self.ins["text_mask"], text_mask)
        self._copy_frames(clean, 0, sk)
        self.memory.upload(self.ins["frame_pos"].view("frame_pos", (sk,)), np.arange(sk, dtype=np.int64))
        self.memory.upload(self.ins["sink_pos"], np.arange(sk, dtype=np.int64))
        self._scalars(0.0, 0.0, 0.0, 0.0)
        self.engine.run_bound(self._bind(sk, "sink", 0), "sink")
        self._stash("sink", sk, None)

    def _copy_frames(self, clean, start: int, n: int) -> None:
        """Stage-1 latents frames [start, start + n) -> latents#0, per channel (frames are not contiguous)."""
        C = clean.shape[1]
        per = int(np.prod(clean.shape[3:])) * 4
        dst = self.lat[0]
        for c in range(C):
            s = clean.view(f"clean[{c}]", (n * per // 4,), (c * clean.shape[2] + start) * per)
            self.memory.copy(dst.view(f"latents[{c}]", (n * per // 4,), c * n * per), s)

    def refine_block(self, clean, start: int, first_frame: int) -> object:
        """One block of ``block_size`` frames of ``clean`` from frame ``start``: 3 steps + history capture."""
        lay, n = self.layout, self.layout.block_size
        self._copy_frames(clean, start, n)
        shape = self.lat[0].shape
        self.memory.upload(self.ins["noise"], self.rng.standard_normal(shape, dtype=np.float32))
        pos = np.arange(first_frame, first_frame + n, dtype=np.int64)
        self.memory.upload(self.ins["frame_pos"], pos)
        self.memory.upload(self.ins["sink_pos"], np.arange(lay.sink_frames, dtype=np.int64) + first_frame
                           - lay.history_frames - lay.sink_frames)
        valid = np.zeros((lay.history_tokens,), np.float32)
        valid[: len(self.held) * lay.tokens_per_frame] = 1.0  # slots fill in order, then all stay valid
        self.memory.upload(self.ins["hist_valid"], valid)
        src = 0
        for i in range(len(self.sigmas) - 1):
            s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
            self._scalars(1.0, s if i == 0 else 0.0, s * 1000.0, s_next - s)
            self.engine.run_bound(self._bind(n, "block", src), "block")
            src = 1 - src
        self._scalars(2.0, 0.0, 0.0, 0.0)
        self.engine.run_bound(self._bind(n, "block", src), "block")
        slot = (self.block * n) % lay.history_frames
        self._stash("hist", n, slot)
        self.held = (self.held + list(range(n)))[-lay.history_frames:]
        self.block += 1
        return self.lat[src]


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
        ref = (RefinerPool(engines["refiner"], mem["refiner"], refiner_layout, refiner_sigmas, rng)
               if "refiner" in engines else None)
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
                if c == 0:
                    lay = refiner_layout
                    ref.sink(latents, np.zeros(ref.ins["text"].shape, np.float32), np.ones(ref.ins["text_mask"].shape, np.float32))
                    refined = ref.refine_block(latents, lay.sink_frames, lay.sink_frames)
                else:
                    refined = ref.refine_block(latents, 0, s)
            if dec is not None:
                prof = "first" if c == 0 else "next"
                view = dec.latents if n == dec.latents.shape[2] else dec.latents.view("latents", (1, C, n, H, W))
                if ref is None:
                    _cross_copy(view, latents)
                else:  # [raw sink frame(s) ; refined block] (chunk 0), the refined block after
                    _cross_copy_frames(view, latents, refined, refiner_layout.sink_frames if c == 0 else 0)
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


STATE_MARKS = {"generator": ("#0", "#1", "_win"), "vae_decoder": ("cache.",), "refiner": ("sink_", "hist_")}


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


def _cross_copy_frames(dst, raw, refined, sink: int) -> None:
    """Decoder latents = frames [0, sink) of the stage-1 latents, then the refined block (per channel)."""
    C, n = dst.shape[1], dst.shape[2]
    per = dst.shape[3] * dst.shape[4]
    nb = refined.shape[2]
    for c in range(C):
        if sink:
            d = dst.view(f"dec[{c},:sink]", (sink * per,), c * n * per * 4)
            _cross_copy(d, raw.view(f"raw[{c},:sink]", (sink * per,), c * raw.shape[2] * per * 4))
        d = dst.view(f"dec[{c},block]", (nb * per,), (c * n + sink) * per * 4)
        _cross_copy(d, refined.view(f"ref[{c}]", (nb * per,), c * nb * per * 4))
