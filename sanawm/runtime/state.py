"""The generator's session state pool: every tensor the engine reads or writes, allocated once where it runs.

One ``GeneratorStatePool`` per session, in the engine's ``Memory`` (host arrays for ONNX Runtime CPU, device
memory for TensorRT). Nothing in it is re-allocated after the session starts, so the engine binds the same
addresses on every call (what CUDA graphs, snapshots and forks need). Three kinds of tensors
(``sanawm.spec.generator_engine_io``; sana-wm-streaming.md 2.2-2.5):

* **chained state** (GDN states, K short-conv and FFN tails): two slots per tensor (ping-pong). A call at
  parity p reads slot p and writes slot 1 - p; only the t = 0 commit pass flips the parity, so the four
  denoising passes read the state without changing it.
* **softmax windows**: per softmax block, ``{k, v, cam_k, cam_v}_win`` [1, h, Wt, D] are ring buffers. The
  sink chunk keeps slot 0; every later chunk's K/V goes into the slot of the chunk that just left the window.
  Keys carry their absolute RoPE / UCPE positions, so the order of slots inside the window does not change
  the attention; ``window_valid`` [Wt] (uploaded per chunk: Wt floats) masks empty slots. The commit pass
  writes this chunk's K/V to a scratch output, and a copy inside the pool (never through the host) moves it
  into its slot after the call: the engine may not read and write the same slot in one call.
* **per-call tensors**: the chunk's latents (two buffers: the engine's Euler output ``latents.out`` of one
  pass is the next pass's ``latents``), timestep, dt, frame indices, camera inputs; the prompt features are
  uploaded once per session.

Tensors whose size depends on the chunk length are allocated at the largest profile and bound as views of
the profile's shape at the same address. The refiner's pool (``sanawm.runtime.refiner_pool``) follows the same
design: its history is a ring of frame slots written in place by copies after the commit pass.
"""

from __future__ import annotations

import json

import numpy as np

from ..config import GeneratorConfig
from ..engines.memory import Buffer, Memory
from ..spec import EULER_INPUT, EULER_OUTPUT, StepIO, generator_profiles, max_window_frames

KV_NAMES = ("k", "v", "cam_k", "cam_v")
PER_CALL = ("latents", "timestep", "frame_index", "camera", "plucker", EULER_INPUT)
PER_SESSION = ("text", "text_mask")


class WindowRing:
    """Which chunk's K/V sits where in the softmax window (token offsets; no tensors)."""

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        S = cfg.patch_tokens
        self.tokens = max_window_frames(cfg) * S
        n = cfg.num_cached_chunks
        first = max(cfg.first_chunk_size, cfg.chunk_size) if not cfg.sink else cfg.first_chunk_size
        caps = [first * S] + [cfg.chunk_size * S] * max(n - 1, 0) if self.tokens else []
        offs = np.concatenate([[0], np.cumsum(caps)[:-1]]).astype(int).tolist() if caps else []
        if sum(caps) != self.tokens:
            raise ValueError(f"window ring slots {caps} do not add up to the engine's window of {self.tokens} tokens")
        self.slots = list(zip(offs, caps))  # (token offset, capacity)
        self.held: dict[int, int] = {}  # slot index -> chunk index

    def frames(self, chunk: int) -> int:
        return self.cfg.first_chunk_size if chunk == 0 else self.cfg.chunk_size

    def valid(self, c: int) -> np.ndarray:
        """``window_valid`` of chunk ``c``: 1 on the tokens of the chunks in its window, 0 elsewhere."""
        v = np.zeros((self.tokens,), dtype=np.float32)
        where = {chunk: slot for slot, chunk in self.held.items()}
        for k in self.cfg.window_chunks(c):
            if k not in where:
                raise RuntimeError(f"chunk {c} needs the K/V of chunk {k}, which the window ring no longer holds")
            off = self.slots[where[k]][0]
            v[off: off + self.frames(k) * self.cfg.patch_tokens] = 1.0
        return v

    def place(self, c: int) -> tuple[int, int]:
        """Evict what chunk ``c + 1`` no longer reads; return (token offset, tokens) of the slot chunk ``c`` takes."""
        keep = set(self.cfg.window_chunks(c + 1))
        self.held = {s: k for s, k in self.held.items() if k in keep}
        need = self.frames(c) * self.cfg.patch_tokens
        for s, (off, cap) in enumerate(self.slots):
            if s not in self.held and cap >= need:
                self.held[s] = c
                return off, need
        raise RuntimeError(f"no free window slot for chunk {c} (slots {self.slots}, held {self.held})")


class GeneratorStatePool:
    """All generator tensors of one session in ``memory`` (see the module docstring)."""

    def __init__(self, cfg: GeneratorConfig, io: StepIO, memory: Memory):
        self.cfg, self.io, self.memory = cfg, io, memory
        self.profiles = generator_profiles(cfg)
        big = max(self.profiles.values(), key=lambda d: d["n"])
        full = io.concrete(big)
        self.ring = WindowRing(cfg)
        self.parity = 0
        self.committed = 0
        alloc = memory.alloc_spec
        ins = {t.name: t for t in full.inputs}
        state_in = set(io.state_map.values())
        self.pairs = {name: (alloc(ins[name], name + "#0"), alloc(ins[name], name + "#1")) for name in state_in}
        self.windows = {t.name: alloc(t) for t in full.inputs if t.name.endswith("_win")}
        self.latents = (alloc(ins["latents"], "latents#0"), alloc(ins["latents"], "latents#1"))
        self.inputs = {t.name: alloc(t) for t in full.inputs
                       if t.name not in state_in and t.name not in self.windows and t.name != "latents"}
        state_out = set(io.state_map)
        self.outputs = {t.name: alloc(t) for t in full.outputs if t.name not in state_out and t.name != EULER_OUTPUT}
        self.latent_index = 0  # which latents buffer holds the chunk's current latents
        self.prompt_set = False

    # ------------------------------------------------------------------ per session / per chunk inputs
    def set_prompt(self, text: np.ndarray, text_mask: np.ndarray) -> None:
        self.memory.upload(self.inputs["text"], text)
        self.memory.upload(self.inputs["text_mask"], text_mask)
        self.prompt_set = True

    def _view(self, buf: Buffer, dims: dict, spec_name: str | None = None) -> Buffer:
        spec = next(t for t in self.io.inputs + self.io.outputs if t.name == (spec_name or buf.name.split("#")[0]))
        shape = spec.concrete(dims).shape
        return buf if tuple(shape) == buf.shape else buf.view(spec.name, shape)

    def current_latents(self, n: int) -> Buffer:
        return self._view(self.latents[self.latent_index], {"n": n}, "latents")

    def upload_chunk(self, c: int, n: int, host: dict[str, np.ndarray]) -> None:
        """Latents (noise + condition frame) and camera inputs of chunk ``c``; its window mask."""
        if c != self.committed:
            raise ValueError(f"the pool holds {self.committed} committed chunks; cannot start chunk {c}")
        dims = {"n": n}
        self.latent_index = 0
        self.memory.upload(self.current_latents(n), host["latents"])
        for name in ("frame_index", "camera", "plucker"):
            self.memory.upload(self._view(self.inputs[name], dims), host[name])
        if "window_valid" in self.inputs:
            self.memory.upload(self.inputs["window_valid"], self.ring.valid(c))

    def upload_pass(self, n: int, timestep: np.ndarray, dt: np.ndarray) -> None:
        dims = {"n": n}
        self.memory.upload(self._view(self.inputs["timestep"], dims), timestep)
        self.memory.upload(self._view(self.inputs[EULER_INPUT], dims), dt)

    # ------------------------------------------------------------------ bindings
    def bindings(self, n: int, commit: bool) -> dict[str, Buffer]:
        """Every engine tensor of one call at chunk length ``n``: state read at the current parity, written to
        the other slot; latents in one buffer, ``latents.out`` into the other."""
        dims = {"n": n}
        b: dict[str, Buffer] = {}
        for name, buf in self.inputs.items():
            b[name] = self._view(buf, dims)
        for name, buf in self.outputs.items():
            b[name] = self._view(buf, dims)
        b.update(self.windows)
        p = self.parity
        for out, inp in self.io.state_map.items():
            b[inp] = self.pairs[inp][p]
            b[out] = self.pairs[inp][1 - p]
        b["latents"] = self._view(self.latents[self.latent_index], dims, "latents")
        b[EULER_OUTPUT] = self._view(self.latents[1 - self.latent_index], dims, EULER_OUTPUT)
        return b

    def after_pass(self) -> None:
        """The Euler output becomes the next pass's latents (no copy: the two buffers swap roles)."""
        self.latent_index = 1 - self.latent_index

    def commit(self, c: int, n: int) -> None:
        """After the t = 0 pass of chunk ``c``: flip the state parity, move this chunk's K/V into its slot."""
        self.parity = 1 - self.parity
        if self.ring.tokens:
            off, used = self.ring.place(c)
            for i in self.cfg.softmax_blocks:
                for nm in KV_NAMES:
                    win = self.windows[f"b{i}.{nm}_win"]
                    scratch = self._view(self.outputs[f"b{i}.{nm}_chunk"], {"n": n})
                    self._copy_tokens(win, scratch, off, used)
        self.committed = c + 1

    def _copy_tokens(self, win: Buffer, chunk: Buffer, off: int, used: int) -> None:
        """chunk [1, h, used, D] -> win[:, :, off:off+used] per head (one contiguous run per head)."""
        _, h, Wt, D = win.shape
        item = win.nbytes // (h * Wt * D)
        for head in range(h):
            dst = win.view(f"{win.name}[{head}]", (used, D), ((head * Wt) + off) * D * item)
            src = chunk.view(f"{chunk.name}[{head}]", (used, D), head * used * D * item)
            self.memory.copy(dst, src)

    # ------------------------------------------------------------------ save / resume / fork
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue: chained state, windows, ring layout (read out of the pool)."""
        d = {f"chained/{name}": self.memory.download(slots[self.parity]) for name, slots in self.pairs.items()}
        d.update({f"window/{name}": self.memory.download(buf) for name, buf in self.windows.items()})
        ring = json.dumps({str(s): k for s, k in self.ring.held.items()}).encode()
        d["ring"] = np.frombuffer(ring, dtype=np.uint8).copy()
        d["committed"] = np.array(self.committed, dtype=np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        want = {f"chained/{n}" for n in self.pairs} | {f"window/{n}" for n in self.windows}
        have = {k for k in d if k.startswith(("chained/", "window/"))}
        if want != have:
            raise ValueError(
                "saved generator state does not match this bundle's engine: "
                f"missing {sorted(want - have)[:4]}, unexpected {sorted(have - want)[:4]}"
            )
        for name, slots in self.pairs.items():
            self.memory.upload(slots[self.parity], d[f"chained/{name}"])
        for name, buf in self.windows.items():
            self.memory.upload(buf, d[f"window/{name}"])
        self.ring.held = {int(s): int(k) for s, k in json.loads(bytes(np.asarray(d["ring"], np.uint8))).items()}
        self.committed = int(d["committed"])

    def copy_from(self, other: "GeneratorStatePool") -> None:
        """Fork: take ``other``'s committed state with copies inside the memory (same memory kind)."""
        for name, slots in self.pairs.items():
            self.memory.copy(slots[self.parity], other.pairs[name][other.parity])
        for name, buf in self.windows.items():
            self.memory.copy(buf, other.windows[name])
        for name in ("text", "text_mask"):
            self.memory.copy(self.inputs[name], other.inputs[name])
        self.ring.held = dict(other.ring.held)
        self.committed = other.committed
        self.prompt_set = other.prompt_set
