"""Causal VAE decode of each chunk, with the decoder's caches in a pool where the engines run (numpy only).

Contract (``sanawm.models.vae.vae_decoder_io``, the exported LTX-2 decoder):
    ``vae_decoder_first``: input ``latents`` [1, C, 4, h, w] (normalised; un-normalised inside the engine), no
        cache inputs (its causal convs replicate their first frame); outputs the chunk's frames (float
        [1, 3, 24, 32h, 32w] in [-1, 1], or uint8 [24, H, W, 3] when the export converts in the graph; the
        condition frame already dropped) and ``cache.{i}.out``.
    ``vae_decoder_next``: inputs ``latents`` [1, C, 3, h, w] and ``cache.{i}``; outputs frames and ``cache.{i}.out``.
    ``cache.{i}.out`` feeds ``cache.{i}`` of the *next* call (``state_map``, or for a first graph whose manifest
    entry has none, the ``X.out`` -> ``X`` naming rule).

The caches ping-pong between two slots each (a call reads slot p and writes slot 1 - p; no copy), allocated
once per session in the engines' memory. The chunk's latents are bound where the generator left them when
they live in the same memory (no host round trip); only the frames cross, as uint8 when the engine makes them.
"""

from __future__ import annotations

import numpy as np

from .frames import to_uint8
from ..engines.host import bound
from ..constants import TEMPORAL_STRIDE
from ..constants import VAE_DECODER_ENGINES as DECODER_ENGINES
from .chunk import Chunk, state_pairs
REBUILD = f"rebuild both with `sanawm-export ... --engines {','.join(DECODER_ENGINES)}`"


class DecoderStage:
    """Decodes every chunk through ``vae_decoder_first`` (chunk 0) / ``vae_decoder_next`` (see module docstring)."""

    name = "decoder"

    def __init__(self, first, next_, memory=None):
        first, next_ = bound(first), bound(next_)
        self.first, self.next = first, next_
        for ex in (first, next_):
            if not any(t.name == "latents" for t in ex.inputs):
                raise ValueError(
                    f"engine {ex.name}: no 'latents' input (it takes {[t.name for t in ex.inputs]}); "
                    f"this is not a VAE decoder graph: {REBUILD}"
                )
        outs = {t.name: t for t in first.outputs}
        self.output_name = "frames" if "frames" in outs else first.outputs[0].name
        self._next_specs = {t.name: t for t in next_.inputs if t.name != "latents"}
        self._maps = {}
        for ex in (first, next_):
            pairs = {o: i for o, i in state_pairs(ex, self._next_specs).items() if i in self._next_specs}
            unfed = sorted(set(self._next_specs) - set(pairs.values()))
            if unfed:
                raise ValueError(
                    f"engine {ex.name}: its state_map feeds none of {unfed[:4]}{' ...' if len(unfed) > 4 else ''} "
                    f"that {next_.name} reads, so the decoder caches cannot be chained; the two decoder graphs "
                    f"come from different exports: {REBUILD}"
                )
            self._maps[ex.name] = pairs
        if memory is None:
            memory = getattr(first, "memory", None)
        if memory is None:
            from ..engines.memory import HostMemory

            memory = HostMemory()
        self.memory = memory
        # the pool: cache slots, each engine's own latents input (used when the latents arrive from the host),
        # each engine's non-cache outputs
        self.cache = {n: (memory.alloc_spec(t, n + "#0"), memory.alloc_spec(t, n + "#1")) for n, t in self._next_specs.items()}
        self.parity = 0
        self.decoded = 0  # chunks decoded so far
        self._own = {}
        for ex in (first, next_):
            lat = next(t for t in ex.inputs if t.name == "latents")
            own = {"latents": memory.alloc_spec(lat, f"{ex.name}.latents")}
            for t in ex.outputs:
                if t.name not in self._maps[ex.name]:
                    own[t.name] = memory.alloc_spec(t, f"{ex.name}.{t.name}")
            extra = [t for t in ex.inputs if t.name != "latents" and t.name not in self._next_specs]
            if extra:
                raise ValueError(f"engine {ex.name}: inputs {[t.name for t in extra]} are neither latents nor caches; {REBUILD}")
            self._own[ex.name] = own

    def process(self, chunk: Chunk) -> Chunk:
        first = chunk.index == 0
        if not first and not self.decoded:
            raise ValueError(
                f"chunk {chunk.index} needs the decoder caches of the chunks before it, and none was decoded yet: "
                "chunks are decoded in order from chunk 0 (to continue mid-clip, resume a saved session)"
            )
        ex = self.first if first else self.next
        own = self._own[ex.name]
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
        for t in ex.inputs:
            if t.name in self.cache:
                bindings[t.name] = self.cache[t.name][p]
        for o, i in self._maps[ex.name].items():
            bindings[o] = self.cache[i][1 - p]
        ex.run_bound(bindings, None)
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
                f"saved decoder cache does not match engine {self.next.name}: missing {missing[:4]}, unexpected "
                f"{extra[:4]}; resume with the bundle the session was saved with"
            )
        for k, v in state.items():
            t = self._next_specs[k]
            if v.shape != tuple(t.shape) or v.dtype != np.dtype(t.dtype):
                raise ValueError(
                    f"saved decoder cache {k!r} is {v.dtype}{list(v.shape)}, engine {self.next.name} takes "
                    f"{t.dtype}{list(t.shape)}; resume with the bundle the session was saved with"
                )
            self.memory.upload(self.cache[k][self.parity], v)
        self.decoded = max(self.decoded, 1)  # caches of earlier chunks are present
