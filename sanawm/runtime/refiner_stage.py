"""Stage-2 refiner over the ONE ``refiner`` engine, its state in a pool where the engine runs (numpy only).

Alignment (sana-wm-streaming.md 5.1-5.3): refiner block k refines latent frames ``[sink + 3k, sink + 3k + 3)``,
i.e. stage-1 chunk k without its condition frame for k = 0. Per stage-1 chunk:

* chunk 0 (frames ``[0, 4)``): the raw frame(s) ``[0, sink)`` go once through the engine at profile ``sink``
  (pre-RoPE sink K/V, kept for the whole clip); frames ``[sink, 4)`` are block 0; the chunk passes on
  ``[raw frame 0 ; refined block 0]`` (what decoder chunk 0 decodes).
* later chunks: all their frames, one block per ``block_size`` frames.

Per block (profile ``block``): the clean block ``z`` is copied into the pool from where the generator left it,
``eps`` [1, C, block, H, W] drawn from this stage's seeded numpy ``Generator(PCG64(seed))`` in block order
(default seed 42 like the release's ``--refiner_seed``; NOT bit-identical to the release's torch CUDA RNG for the
same seed: inject noise for parity, see ``noise=``) is uploaded, and the first call starts from
``(1 - s0) z + s0 eps``; three denoising calls over the sigmas (0.909375, 0.725, 0.421875, 0) with the Euler step in the engine
(only timestep / sigma / dt cross per call); then a sigma-0 commit call whose post-RoPE K/V the pool copies into
the history ring (``sanawm.runtime.refiner_pool``). The sink is re-rotated at ``block_start - history_frames -
sink`` as ``sanawm.models.refiner.refine_stream`` (the torch oracle) does. The refined block stays in the pool:
the decoder binds it there (chunk 0 is assembled from the sink frame and the block by copies in the pool).

Everything the stage carries (sink K/V, history ring, RNG position, refiner text) is in ``state_dict``, read out
of the pool only when asked for, so a session saved between chunks resumes with identical refined latents.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..constants import REFINER
from ..refiner_layout import RefinerLayout
from ..spec import StepIO
from ..spec_refiner import BLOCK, SINK, layer_names
from .chunk import Chunk
from .refiner_pool import RefinerStatePool

DEFAULT_REFINER_SEED = 42  # the release's --refiner_seed default
REBUILD = f"rebuild it with `sanawm-export ... --engines {REFINER}`"


def refiner_text_from(value) -> tuple[np.ndarray, np.ndarray] | None:
    """The refiner's text (features [1, T, D], mask [1, T]) carried by prompt embeddings, or None.

    Accepts ``sanawm.text.embeddings.PromptEmbeddings`` (``refiner_features`` / ``refiner_mask``), any object with
    ``refiner_text`` / ``refiner_text_mask``, a dict or a prompt file (``.safetensors`` / ``.npz``) with the
    keys ``refiner.features`` / ``refiner.mask`` that ``sanawm encode-prompt --refiner-encoder`` writes.
    """
    feats = mask = None
    if isinstance(value, (str, Path)):
        p = Path(value)
        if p.suffix == ".safetensors" and p.is_file():
            from safetensors import safe_open  # numpy reader, no torch

            with safe_open(str(p), framework="numpy") as f:
                keys = set(f.keys())
                if "refiner.features" in keys:
                    feats = f.get_tensor("refiner.features")
                    mask = f.get_tensor("refiner.mask") if "refiner.mask" in keys else None
        elif p.suffix == ".npz" and p.is_file():
            with np.load(p, allow_pickle=False) as z:
                if "refiner.features" in z.files:
                    feats = z["refiner.features"]
                    mask = z["refiner.mask"] if "refiner.mask" in z.files else None
    elif isinstance(value, dict):
        feats, mask = value.get("refiner.features"), value.get("refiner.mask")
    else:
        for fa, ma in (("refiner_features", "refiner_mask"), ("refiner_text", "refiner_text_mask")):
            if getattr(value, fa, None) is not None:
                feats, mask = getattr(value, fa), getattr(value, ma, None)
                break
    if feats is None:
        return None
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim == 2:
        feats = feats[None]
    mask = np.ones(feats.shape[:2], np.float32) if mask is None else np.asarray(mask, dtype=np.float32).reshape(feats.shape[0], -1)
    return feats, mask


class RefinerStage:
    """Refines each stage-1 chunk block by block (see the module docstring)."""

    name = "refiner"

    def __init__(self, engine, layout: RefinerLayout | dict | None = None, seed: int = DEFAULT_REFINER_SEED,
                 noise: Sequence[np.ndarray] | None = None, memory=None):
        """``engine``: the bundle's ``refiner`` executor (profiles ``sink`` / ``block``, ``run_bound``).
        ``layout``: the manifest's ``refiner`` section (or a ``RefinerLayout``); shapes come from the engine and
        must agree with it. ``noise``: inject the per-block noise (block k -> [1, C, block, H, W]), e.g. the torch
        reference's, instead of drawing it (parity tests). ``memory``: where the pool lives (default: the
        engine's own, else host memory)."""
        if set(getattr(engine, "profiles", {}) or {}) != {SINK, BLOCK} or not hasattr(engine, "run_bound"):
            raise ValueError(f"engine {getattr(engine, 'name', '?')}: the refiner is one engine with profiles "
                             f"{SINK} / {BLOCK} bound to pool buffers; it has {sorted(getattr(engine, 'profiles', {}) or {})}; "
                             f"{REBUILD}")
        self.engine = engine
        info = layout if isinstance(layout, RefinerLayout) else RefinerLayout.from_manifest(layout)
        self.info = info
        io = StepIO(tuple(engine.inputs), tuple(engine.outputs), dict(engine.state_map or {}))
        names = {t.name for t in io.inputs}
        num_layers = sum(1 for t in io.inputs if t.name.endswith(".sink_k"))
        missing = [n for n in ("latents", "kv_valid", "text", "sigma", "dt", "kv_rotate", *layer_names(0))
                   if n not in names]
        if missing or not num_layers:
            raise ValueError(f"engine {engine.name}: no input(s) {missing or ['l0.sink_k']}; {REBUILD}")
        if memory is None:
            memory = getattr(engine, "memory", None)
        if memory is None:
            from ..engines.memory import HostMemory

            memory = HostMemory()
        self.memory = memory
        self.pool = RefinerStatePool(io, engine.profiles, num_layers, memory)
        p = self.pool
        self.C, self.block, self.H, self.W = p.C, p.block, p.H, p.W
        self.sink_frames, self.history_frames = p.sink_frames, p.history_frames
        got = (self.block, self.sink_frames, self.sink_frames + self.history_frames)
        want = (info.block_size, info.sink_frames, info.kv_max_frames)
        if got != want or p.hist_tokens != self.history_frames * p.S:
            raise ValueError(
                f"refiner engine is built for (block_size, sink_frames, kv_max_frames) = {got} but the manifest's "
                f"refiner layout says {want}; the engine and manifest come from different exports: {REBUILD}"
            )
        t = p.inputs["text"]
        self.caption_length, self.caption_channels = int(t.shape[1]), int(t.shape[2])
        self.sigmas = np.asarray(info.sigmas, dtype=np.float32)
        self.mult = float(info.timestep_scale_multiplier)
        self.seed = int(seed)
        self._noise = None if noise is None else [np.asarray(n, np.float32) for n in noise]
        self.text: np.ndarray | None = None
        self.text_mask: np.ndarray | None = None
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.blocks_done = 0
        self.hist_frames = 0

    @classmethod
    def from_executors(cls, executors: dict, layout=None, seed: int = DEFAULT_REFINER_SEED, **kw) -> "RefinerStage":
        return cls(executors[REFINER], layout, seed, **kw)

    # ------------------------------------------------------------------ state
    @property
    def sink_captured(self) -> bool:
        return self.pool.sink_ready

    @property
    def next_frame(self) -> int:
        """Absolute latent frame the next block starts at (0 while the sink is not captured)."""
        return 0 if not self.pool.sink_ready else self.sink_frames + self.blocks_done * self.block

    def set_text(self, text: tuple[np.ndarray, np.ndarray] | None) -> None:
        """The refiner's prompt (features [1, T, D], mask [1, T]); None: zeros (every token on), with a warning.
        Zeros are not "no text": a constant, out-of-distribution condition the refiner does not ignore."""
        L, D = self.caption_length, self.caption_channels
        if text is None:
            warnings.warn(
                "the prompt embeddings have no refiner text (refiner.features / refiner.mask); the refiner runs on an "
                "all-zero prompt. Encode the prompt with `sanawm encode-prompt ... --refiner-encoder <refiner folder> "
                f"--refiner-max-length {L}` (or run with --no-refiner)",
                stacklevel=2,
            )
            feats, mask = np.zeros((1, L, D), np.float32), np.ones((1, L), np.float32)
        else:
            feats, mask = (np.asarray(a, np.float32) for a in text)
            if feats.shape != (1, L, D):
                raise ValueError(
                    f"refiner text features are {list(feats.shape)}, the refiner engine takes [1, {L}, {D}]; re-encode "
                    f"the prompt with `sanawm encode-prompt ... --refiner-encoder <this refiner's folder> "
                    f"--refiner-max-length {L}`"
                )
            if mask.shape != (1, L):
                raise ValueError(f"refiner text mask is {list(mask.shape)}, expected [1, {L}]")
        self.text, self.text_mask = np.ascontiguousarray(feats), np.ascontiguousarray(mask)
        self.pool.set_prompt(self.text, self.text_mask)

    def state_dict(self) -> dict[str, np.ndarray]:
        d = {
            "blocks_done": np.array(self.blocks_done, np.int64),
            "hist_frames": np.array(self.hist_frames, np.int64),
            "seed": np.array(self.seed, np.int64),
            # PCG64 state holds 128-bit ints: JSON keeps them exact
            "rng": np.frombuffer(json.dumps(self.rng.bit_generator.state).encode(), dtype=np.uint8),
        }
        if self.text is not None:
            d["text"], d["text_mask"] = self.text, self.text_mask
        d.update({f"pool/{k}": v for k, v in self.pool.state_dict().items()})
        return d

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state = {k: np.asarray(v) for k, v in state.items()}
        if "rng" not in state or "blocks_done" not in state:
            raise ValueError(
                f"saved session has no refiner state ({sorted(state)[:4]}): it was saved without the refiner; resume "
                "with the same bundle and refiner setting (--no-refiner / refiner=False)"
            )
        pool = {k[5:]: v for k, v in state.items() if k.startswith("pool/")}
        if not pool:
            raise ValueError("saved refiner state holds no pool (sink / history ring): it was saved by the three-engine "
                             f"refiner of an older bundle; resume with the bundle the session was saved with, or {REBUILD}")
        self.pool.load_state_dict(pool)
        self.seed = int(state["seed"]) if "seed" in state else self.seed
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.rng.bit_generator.state = json.loads(bytes(state["rng"]).decode())
        self.blocks_done = int(state["blocks_done"])
        self.hist_frames = int(state["hist_frames"])
        if "text" in state:
            self.set_text((state["text"], state["text_mask"]))

    # ------------------------------------------------------------------ running
    def _draw_noise(self, b: int) -> np.ndarray:
        shape = (1, self.C, self.block, self.H, self.W)
        if self._noise is not None:
            if b >= len(self._noise):
                raise ValueError(f"injected refiner noise covers {len(self._noise)} blocks; block {b} was asked for")
            eps = self._noise[b]
            if eps.shape != shape:
                raise ValueError(f"injected refiner noise for block {b} is {list(eps.shape)}, expected {list(shape)}")
            return eps
        return self.rng.standard_normal(shape, dtype=np.float32)

    def _call(self, profile: str, sigma: float, dt: float, rotate: bool, mix: float = 0.0) -> None:
        one = lambda v: np.array([v], np.float32)  # noqa: E731
        # timestep: sigma x multiplier in double, then float32 (the oracle's torch.full)
        self.pool.upload_call(profile, mix=one(mix), timestep=one(sigma * self.mult), sigma=one(sigma), dt=one(dt),
                              kv_rotate=one(1.0 if rotate else 0.0))
        self.engine.run_bound(self.pool.bindings(profile), profile)

    def _capture_sink(self, src, host) -> None:
        sk = self.sink_frames
        p = self.pool
        p.load_latents(SINK, 0, sk, src, host)
        p.upload_call(SINK, frame_pos=np.arange(sk, dtype=np.int64), sink_pos=np.arange(sk, dtype=np.int64),
                      kv_valid=p.kv_valid())  # sink not captured yet: every prefix key masked
        self._call(SINK, 0.0, 0.0, rotate=False)
        p.commit_sink()

    def refine_block(self, f0: int, src=None, host: np.ndarray | None = None):
        """Refine the next block: frames ``[f0, f0 + block)`` of the chunk's stage-1 latents (the pool buffer
        ``src`` where the generator left them, else the host array ``host``); commit its K/V to the history ring.
        Returns the pool buffer holding the refined block (valid until the next block)."""
        start = self.next_frame
        n, sk, p = self.block, self.sink_frames, self.pool
        off = start - self.hist_frames - sk
        sig = self.sigmas
        p.load_latents(BLOCK, f0, n, src, host)
        p.upload_call(BLOCK, noise=self._draw_noise(self.blocks_done), frame_pos=np.arange(start, start + n, dtype=np.int64),
                      sink_pos=np.arange(off, off + sk, dtype=np.int64), kv_valid=p.kv_valid())
        for i in range(len(sig) - 1):  # the first call mixes the noise in: (1 - s0) z + s0 eps
            self._call(BLOCK, float(sig[i]), float(sig[i + 1] - sig[i]), rotate=True, mix=float(sig[0]) if i == 0 else 0.0)
            p.swap()
        self._call(BLOCK, 0.0, 0.0, rotate=True)  # commit pass: the refined block's K/V (latents.out unused)
        p.commit_block(start)
        self.hist_frames = min(self.hist_frames + n, self.history_frames)
        self.blocks_done += 1
        return p.current(BLOCK)

    def process(self, chunk: Chunk) -> Chunk:
        src = chunk.latents_buffer
        if src is not None and (src.memory.kind != self.memory.kind or src.dtype != "float32"):
            src = None  # not where this engine runs: through the host
        host = None if src is not None else np.ascontiguousarray(chunk.latents, dtype=np.float32)
        shape = tuple(src.shape) if src is not None else host.shape
        if len(shape) != 5 or shape[0] != 1 or shape[1] != self.C or shape[3:] != (self.H, self.W):
            raise ValueError(
                f"chunk {chunk.index} latents are {list(shape)}; the refiner engine takes [1, {self.C}, n, {self.H}, "
                f"{self.W}]: it was built for another generator config, rebuild it with the generator's --config"
            )
        if self.text is None:
            self.set_text(None)
        sk, n, p = self.sink_frames, self.block, self.pool
        whole = shape[2]
        if chunk.start == 0:
            if p.sink_ready:
                raise ValueError("refiner got clip frame 0 twice; start a new session for a new clip")
            if whole <= sk:
                raise ValueError(f"chunk 0 has {whole} latent frames; the refiner needs more than the {sk} sink frame(s)")
            head, start = sk, sk
        else:
            head, start = 0, chunk.start
        if head == 0 and start != self.next_frame:
            raise ValueError(
                f"refiner expected the chunk starting at latent frame {self.next_frame}, got chunk {chunk.index} at "
                f"frame {chunk.start}; chunks are refined in order from chunk 0 (to continue mid-clip, resume a saved session)"
            )
        if (whole - head) % n:
            raise ValueError(
                f"chunk {chunk.index} has {whole - head} latent frames to refine, not whole blocks of {n}; "
                "the refiner blocks must align with stage-1 chunks (chunk_size = block_size = 3)"
            )
        blocks = (whole - head) // n
        out = None if (blocks == 1 and not head) else p.output(whole)
        if head:
            self._capture_sink(src, host)
            p.copy_frames(out, 0, p.current(SINK), 0, sk)  # the raw sink frame(s), still in the latents buffer
        for j in range(blocks):
            refined = self.refine_block(head + j * n, src, host)
            if out is not None:
                p.copy_frames(out, head + j * n, refined, 0, n)
        chunk._refined, chunk.refined_buffer = None, (out if out is not None else refined)
        return chunk
