"""Causal VAE decode of each chunk, with the decoder's caches in a pool where the engine runs (numpy only).

Contract (``sanawm.models.vae.dynamic.vae_decoder_io_dynamic`` + ``frames_out``, the exported LTX-2 decoder): ONE
``vae_decoder`` engine, profiles ``first`` (chunk 0: 4 latent frames, the condition frame dropped, caches not
read) and ``next`` (3 latent frames + ``cache.{i}``); outputs the chunk's frames (uint8 [24, H, W, 3], or float
[1, 3, 24, H, W] in [-1, 1] from a float graph) and ``cache.{i}.out``, which feed ``cache.{i}`` of the next call.
The torch reference and the test fakes come as two fixed-shape step functions (``vae_decoder_first`` without
cache inputs, ``vae_decoder_next``); ``DecoderStage(first, next_)`` drives them with the same code.

The caches ping-pong between two slots each (a call reads slot p and writes slot 1 - p; no copy), allocated
once per session in the engine's memory. The chunk's latents are bound where the generator left them when they
live in the same memory (no host round trip); only the frames cross, as uint8 when the engine makes them.
"""

from __future__ import annotations

import numpy as np

from ..constants import TEMPORAL_STRIDE, VAE_DECODER
from ..engines.host import bound
from .chunk import Chunk, state_pairs
from .frames import to_uint8

REBUILD = f"rebuild it with `sanawm-export ... --engines {VAE_DECODER}`"


class DecoderStage:
    """Decodes every chunk through the decoder engine (see module docstring)."""

    name = "decoder"

    def __init__(self, engine, next_=None, memory=None):
        if next_ is None:  # one engine, profiles first / next
            engine = bound(engine)
            if set(getattr(engine, "profiles", {})) != {"first", "next"}:
                raise ValueError(f"engine {engine.name}: a decoder engine has profiles first / next, it has "
                                 f"{sorted(getattr(engine, 'profiles', {}))}; {REBUILD}")
            self.calls = {True: (engine, "first"), False: (engine, "next")}
        else:  # two fixed-shape step functions
            self.calls = {True: (bound(engine), None), False: (bound(next_), None)}
        first, nxt = self.calls[True][0], self.calls[False][0]
        ios = {k: ex.contract(prof) for k, (ex, prof) in self.calls.items()}
        for k, io in ios.items():
            if not any(t.name == "latents" for t in io.inputs):
                raise ValueError(f"engine {self.calls[k][0].name}: no 'latents' input (it takes "
                                 f"{[t.name for t in io.inputs]}); this is not a VAE decoder graph: {REBUILD}")
        self.output_name = "frames" if any(t.name == "frames" for t in ios[True].outputs) else ios[True].outputs[0].name
        self._next_specs = {t.name: t for t in ios[False].inputs if t.name != "latents"}
        self._maps = {}
        for k, io in ios.items():
            ex = self.calls[k][0]
            pairs = {o: i for o, i in state_pairs(ex, self._next_specs).items() if i in self._next_specs}
            unfed = sorted(set(self._next_specs) - set(pairs.values()))
            if unfed:
                raise ValueError(
                    f"engine {ex.name}: its state_map feeds none of {unfed[:4]}{' ...' if len(unfed) > 4 else ''} "
                    f"that the next chunk reads, so the decoder caches cannot be chained; {REBUILD}"
                )
            self._maps[k] = pairs
        if memory is None:
            memory = getattr(first, "memory", None)
        if memory is None:
            from ..engines.memory import HostMemory

            memory = HostMemory()
        self.memory = memory
        # the pool: cache slots; each call shape's latents input (used when the latents come from the host) and
        # non-cache outputs; same-shaped outputs of the two call shapes share one buffer (the frames)
        self.cache = {n: (memory.alloc_spec(t, n + "#0"), memory.alloc_spec(t, n + "#1")) for n, t in self._next_specs.items()}
        self.parity = 0
        self.decoded = 0  # chunks decoded so far (after a resume: at least 1)
        self._own = {}
        shared: dict[tuple, object] = {}
        for k, io in ios.items():
            lat = next(t for t in io.inputs if t.name == "latents")
            own = {"latents": memory.alloc_spec(lat, f"decoder.latents.{'first' if k else 'next'}")}
            for t in io.outputs:
                if t.name not in self._maps[k]:
                    key = (t.name, t.dtype, tuple(t.shape))
                    if key not in shared:
                        shared[key] = memory.alloc_spec(t, f"decoder.{t.name}")
                    own[t.name] = shared[key]
            extra = [t.name for t in io.inputs if t.name != "latents" and t.name not in self._next_specs]
            if extra:
                raise ValueError(f"engine {self.calls[k][0].name}: inputs {extra} are neither latents nor caches; {REBUILD}")
            self._own[k] = own

    def process(self, chunk: Chunk) -> Chunk:
        first = chunk.index == 0
        if not first and not self.decoded:
            raise ValueError(
                f"chunk {chunk.index} needs the decoder caches of the chunks before it, and none was decoded yet: "
                "chunks are decoded in order from chunk 0 (to continue mid-clip, resume a saved session)"
            )
        ex, profile = self.calls[first]
        own = self._own[first]
        lat_spec = own["latents"].spec
        src = chunk.refined_buffer
        if src is not None and src.memory is self.memory and src.shape == lat_spec.shape and src.dtype == lat_spec.dtype:
            latents = src  # where the generator (or refiner) left it
        else:
            lat = np.ascontiguousarray(chunk.refined, dtype=np.float32)
            if lat.shape != tuple(lat_spec.shape):
                raise ValueError(
                    f"engine {ex.name} decodes latents {list(lat_spec.shape)}, chunk {chunk.index} has {list(lat.shape)}; "
                    "the VAE engines were built for another generator config: rebuild them with the generator's --config"
                )
            latents = own["latents"]
            self.memory.upload(latents, lat)
        p = self.parity
        bindings = {"latents": latents, **{k: v for k, v in own.items() if k != "latents"}}
        for t in ex.contract(profile).inputs:
            if t.name in self.cache:
                bindings[t.name] = self.cache[t.name][p]  # chunk 0: present, never read
        for o, i in self._maps[first].items():
            bindings[o] = self.cache[i][1 - p]
        ex.run_bound(bindings, profile)
        self.parity = 1 - p
        self.decoded += 1
        frames = self.memory.download(own[self.output_name])
        if frames.dtype != np.uint8:
            frames = to_uint8(frames)
        n = lat_spec.shape[2]
        want = TEMPORAL_STRIDE * (n - 1 if first else n)
        if first and frames.shape[0] == want + 1:
            frames = frames[1:]  # a first graph that kept the condition frame: the caller already has it
        if frames.shape[0] != want:
            raise ValueError(
                f"engine {ex.name} returned {frames.shape[0]} frames for {n} latent frames, expected {want}"
                f"{' (or ' + str(want + 1) + ' with the condition frame)' if first else ''}; rebuild the VAE engines"
            )
        chunk.frames = frames
        return chunk

    def state_dict(self) -> dict[str, np.ndarray]:
        if not self.decoded:
            return {}
        return {n: self.memory.download(slots[self.parity]) for n, slots in self.cache.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state = {k: np.asarray(v) for k, v in state.items()}
        if not state:  # saved before chunk 0 was decoded
            self.decoded, self.parity = 0, 0
            return
        if set(state) != set(self._next_specs):
            missing, extra = sorted(set(self._next_specs) - set(state)), sorted(set(state) - set(self._next_specs))
            raise ValueError(
                f"saved decoder cache does not match engine {self.calls[False][0].name}: missing {missing[:4]}, unexpected "
                f"{extra[:4]}; resume with the bundle the session was saved with"
            )
        for k, v in state.items():
            t = self._next_specs[k]
            if v.shape != tuple(t.shape) or v.dtype != np.dtype(t.dtype):
                raise ValueError(
                    f"saved decoder cache {k!r} is {v.dtype}{list(v.shape)}, engine {self.calls[False][0].name} takes "
                    f"{t.dtype}{list(t.shape)}; resume with the bundle the session was saved with"
                )
            self.memory.upload(self.cache[k][self.parity], v)
        self.decoded = max(self.decoded, 1)  # caches of earlier chunks are present
