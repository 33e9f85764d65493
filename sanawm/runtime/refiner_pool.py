"""The refiner's session state pool: every tensor of the ``refiner`` engine, allocated once where it runs.

One ``RefinerStatePool`` per session in the engine's ``Memory`` (host arrays for ONNX Runtime CPU, device memory
for TensorRT); nothing is re-allocated after the session starts (the chunk-0 output buffer is the one lazy
allocation, made at chunk 0). Contract: ``sanawm.spec_refiner.refiner_engine_io``.

* **sink** ``l{i}.sink_{k,v}`` [1, h, sink*S, D]: written once per clip by a copy of the sink pass's
  ``k_new`` / ``v_new`` (pre-RoPE K).
* **history ring** ``l{i}.hist_{k,v}`` [1, h, Hm, D] with Hm = history_frames x S: frame slots filled in
  order, wrapping; a committed block's ``k_new`` / ``v_new`` (post-RoPE) is copied into the slots of the
  frames that left the window, inside the memory (one contiguous run per head, two when the block wraps).
  Keys carry their absolute RoPE positions, so slot order does not change the attention (up to float
  summation order); ``kv_valid`` (uploaded per block: sink*S + Hm floats) masks empty slots. The engine never
  reads and writes the same slot in one call: ``k_new`` / ``v_new`` are scratch outputs.
* **latents**: two buffers; a denoising call reads one and writes ``latents.out`` into the other (swap, no copy).
  The block's clean stage-1 frames are copied in from the generator's pool (per channel when they are a part
  of the chunk), the block's noise is uploaded into ``noise`` and mixed in by the first call (``mix``).
* **per-call inputs**: mix, timestep, sigma, dt, kv_rotate ([1] each), frame / sink positions; the prompt is
  uploaded once per session.

Tensors whose size depends on the call's frame count are allocated at the ``block`` profile and bound as views
of the ``sink`` profile's shape at the same address.
"""

from __future__ import annotations

import json

import numpy as np

from ..engines.memory import Buffer, Memory
from ..spec import StepIO
from ..spec_refiner import BLOCK, EULER_OUTPUT, FRAME_DIM, SINK, layer_names, new_kv_names


class RefinerStatePool:
    """All refiner tensors of one session in ``memory`` (see the module docstring)."""

    def __init__(self, io: StepIO, profiles: dict, num_layers: int, memory: Memory):
        self.io, self.profiles, self.layers, self.memory = io, profiles, num_layers, memory
        block = io.concrete(profiles[BLOCK])
        ins = {t.name: t for t in block.inputs}
        outs = {t.name: t for t in block.outputs}
        alloc = memory.alloc_spec
        lat = ins["latents"]
        _, self.C, self.block, self.H, self.W = lat.shape
        self.S = self.H * self.W
        self.sink_frames = int(profiles[SINK][FRAME_DIM])
        self.hist_tokens = int(ins[layer_names(0)[2]].shape[2])
        self.history_frames = self.hist_tokens // self.S
        carried = {n for i in range(num_layers) for n in layer_names(i)}
        self.kv = {n: alloc(ins[n]) for n in sorted(carried)}  # zero-filled: masked keys must be finite
        self.new = {n: alloc(outs[n]) for i in range(num_layers) for n in new_kv_names(i)}
        self.latents = (alloc(lat, "refiner.latents#0"), alloc(lat, "refiner.latents#1"))
        self.inputs = {n: alloc(t) for n, t in ins.items() if n not in carried and n != "latents"}
        self.cur = 0  # which latents buffer holds the current latents
        self.slots = [-1] * self.history_frames  # ring slot -> absolute latent frame held (-1: empty)
        self.write = 0  # the ring slot the next committed frame goes to
        self.sink_ready = False
        self.prompt_set = False
        self._out: dict[int, Buffer] = {}

    # ------------------------------------------------------------------ views and inputs
    def _view(self, buf: Buffer, spec_name: str, profile: str) -> Buffer:
        spec = next(t for t in self.io.inputs + self.io.outputs if t.name == spec_name)
        shape = spec.concrete(self.profiles[profile]).shape
        return buf if tuple(shape) == buf.shape else buf.view(spec_name, shape)

    def set_prompt(self, text: np.ndarray, text_mask: np.ndarray) -> None:
        self.memory.upload(self.inputs["text"], text)
        self.memory.upload(self.inputs["text_mask"], text_mask)
        self.prompt_set = True

    def current(self, profile: str = BLOCK) -> Buffer:
        return self._view(self.latents[self.cur], "latents", profile)

    def load_latents(self, profile: str, f0: int, frames: int, src: Buffer | None = None,
                     host: np.ndarray | None = None) -> None:
        """Frames ``[f0, f0 + frames)`` of the chunk's stage-1 latents into the first latents buffer: copied inside
        the memory from ``src`` (where the generator left them), else uploaded from ``host``."""
        self.cur = 0
        dst = self.current(profile)
        if src is not None:
            self.copy_frames(dst, 0, src, f0, frames)
        else:
            self.memory.upload(dst, np.ascontiguousarray(host[:, :, f0:f0 + frames], dtype=np.float32))

    def upload_call(self, profile: str, **values: np.ndarray) -> None:
        for name, value in values.items():
            self.memory.upload(self._view(self.inputs[name], name, profile), value)

    def kv_valid(self) -> np.ndarray:
        """1 on the sink tokens (once captured) and on the ring slots that hold a frame."""
        sink = np.full(self.sink_frames * self.S, 1.0 if self.sink_ready else 0.0, np.float32)
        hist = np.repeat(np.array([s >= 0 for s in self.slots], np.float32), self.S)
        return np.concatenate([sink, hist])

    def bindings(self, profile: str) -> dict[str, Buffer]:
        """Every engine tensor of one call: latents in one buffer, ``latents.out`` into the other."""
        b = {n: self._view(buf, n, profile) for n, buf in self.inputs.items()}
        b.update(self.kv)
        b.update({n: self._view(buf, n, profile) for n, buf in self.new.items()})
        b["latents"] = self._view(self.latents[self.cur], "latents", profile)
        b[EULER_OUTPUT] = self._view(self.latents[1 - self.cur], EULER_OUTPUT, profile)
        return b

    def swap(self) -> None:
        """The Euler output becomes the next call's latents."""
        self.cur = 1 - self.cur

    # ------------------------------------------------------------------ commits (copies inside the memory)
    def commit_sink(self) -> None:
        """After the sink pass: its K/V become the clip's sink."""
        for i in range(self.layers):
            sk, sv = layer_names(i)[:2]
            for dst, src in zip((sk, sv), new_kv_names(i)):
                self.memory.copy(self.kv[dst], self._view(self.new[src], src, SINK))
        self.sink_ready = True

    def commit_block(self, start: int) -> None:
        """After a block's sigma-0 pass: its frames ``[start, start + block)`` enter the history ring."""
        runs, j, left = [], 0, self.block  # (ring slot, block frame, frames) contiguous runs
        while left:
            slot = (self.write + j) % self.history_frames
            take = min(left, self.history_frames - slot)
            runs.append((slot, j, take))
            j, left = j + take, left - take
        for i in range(self.layers):
            _, _, hk, hv = layer_names(i)
            for dst, src in zip((hk, hv), new_kv_names(i)):
                for slot, f0, nf in runs:
                    self._copy_tokens(self.kv[dst], self.new[src], slot * self.S, f0 * self.S, nf * self.S)
        for f in range(self.block):
            self.slots[(self.write + f) % self.history_frames] = start + f
        self.write = (self.write + self.block) % self.history_frames

    def _copy_tokens(self, ring: Buffer, new: Buffer, dst_tok: int, src_tok: int, used: int) -> None:
        """new[:, :, src_tok:src_tok+used] -> ring[:, :, dst_tok:dst_tok+used], one contiguous run per head."""
        _, h, Hm, D = ring.shape
        N = new.shape[2]
        item = ring.nbytes // (h * Hm * D)
        for head in range(h):
            dst = ring.view(f"{ring.name}[{head}]", (used, D), (head * Hm + dst_tok) * D * item)
            src = new.view(f"{new.name}[{head}]", (used, D), (head * N + src_tok) * D * item)
            self.memory.copy(dst, src)

    def output(self, frames: int) -> Buffer:
        """The [1, C, frames, H, W] buffer a multi-part chunk (sink frames + blocks) is assembled in."""
        if frames not in self._out:
            self._out[frames] = self.memory.alloc("refiner.refined", "float32", (1, self.C, frames, self.H, self.W))
        return self._out[frames]

    def copy_frames(self, dst: Buffer, d0: int, src: Buffer, s0: int, frames: int) -> None:
        """src[:, :, s0:s0+frames] -> dst[:, :, d0:d0+frames] (one contiguous run per channel)."""
        nd, ns, hw = dst.shape[2], src.shape[2], self.S
        if nd == ns == frames:  # whole tensors: one copy
            self.memory.copy(dst, src if src.shape == dst.shape else src.view(dst.name, dst.shape))
            return
        item = dst.nbytes // (self.C * nd * hw)
        for ch in range(self.C):
            a = dst.view(f"{dst.name}[{ch}]", (frames, hw), (ch * nd + d0) * hw * item)
            b = src.view(f"{src.name}[{ch}]", (frames, hw), (ch * ns + s0) * hw * item)
            self.memory.copy(a, b)

    # ------------------------------------------------------------------ save / resume
    def state_dict(self) -> dict[str, np.ndarray]:
        """The sink and the ring with its layout, read out of the pool (only when asked for)."""
        d = {f"kv/{n}": self.memory.download(buf) for n, buf in self.kv.items()}
        ring = {"slots": self.slots, "write": self.write, "sink_ready": self.sink_ready}
        d["ring"] = np.frombuffer(json.dumps(ring).encode(), dtype=np.uint8).copy()
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        want, have = {f"kv/{n}" for n in self.kv}, {k for k in d if k.startswith("kv/")}
        if want != have or "ring" not in d:
            raise ValueError(f"saved refiner state does not match this bundle's refiner engine: missing "
                             f"{sorted(want - have)[:4]}, unexpected {sorted(have - want)[:4]}; resume with the bundle "
                             "the session was saved with")
        for n, buf in self.kv.items():
            v = np.asarray(d[f"kv/{n}"])
            if v.shape != buf.shape or v.dtype != np.dtype(buf.dtype):
                raise ValueError(f"saved refiner tensor {n!r} is {v.dtype}{list(v.shape)}, the engine takes "
                                 f"{buf.dtype}{list(buf.shape)}; resume with the bundle the session was saved with")
            self.memory.upload(buf, v)
        ring = json.loads(bytes(np.asarray(d["ring"], np.uint8)).decode())
        if len(ring["slots"]) != self.history_frames:
            raise ValueError(f"saved refiner history has {len(ring['slots'])} frames, this engine {self.history_frames}; "
                             "resume with the bundle the session was saved with")
        self.slots, self.write, self.sink_ready = [int(s) for s in ring["slots"]], int(ring["write"]), bool(ring["sink_ready"])
