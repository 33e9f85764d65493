"""Stage-2 refiner over the ``refiner_sink`` / ``refiner_step`` / ``refiner_capture`` engines (numpy only).

Alignment (sana-wm-streaming.md 5.1-5.3): refiner block k refines latent frames ``[sink + 3k, sink + 3k + 3)``,
i.e. stage-1 chunk k without its condition frame for k = 0. Per stage-1 chunk:

* chunk 0 (frames ``[0, 4)``): the raw frame(s) ``[0, sink)`` go once through ``refiner_sink`` (pre-RoPE sink
  K/V, kept for the whole clip); frames ``[sink, 4)`` are block 0; the chunk passes on
  ``[raw frame 0 ; refined block 0]`` (what decoder chunk 0 decodes).
* later chunks: all their frames, one block per ``block_size`` frames.

Per block: ``x = (1 - s0) z + s0 eps`` with ``eps`` [1, C, block, H, W] drawn from this stage's seeded numpy
``Generator(PCG64(seed))`` in block order (default seed 42 like the release's ``--refiner_seed``; NOT
bit-identical to the release's torch CUDA RNG for the same seed: inject noise for parity, see ``noise=``);
Euler over the sigmas (0.909375, 0.725, 0.421875, 0) with ``refiner_step`` (timestep = sigma x
``timestep_scale_multiplier``); then ``refiner_capture`` appends the refined block's post-RoPE K/V to the
history window. The window is a runtime-owned fixed-size buffer (``hist_valid`` + per-layer ``hist_k/v``,
right-aligned, shifted by the graph) chained through the capture engine's ``state_map``; the sink is re-rotated
at ``block_start - history_frames - sink`` as ``sanawm.models.refiner.refine_stream`` (the torch oracle) does.

Everything the stage carries (sink K/V, history, RNG position, refiner text) is in ``state_dict``, so a
session saved between chunks resumes with identical refined latents.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..constants import REFINER_CAPTURE, REFINER_ENGINES, REFINER_SINK, REFINER_STEP
from ..refiner_layout import RefinerLayout
from .chunk import Chunk, state_pairs

DEFAULT_REFINER_SEED = 42  # the release's --refiner_seed default
REBUILD = f"rebuild them with `sanawm-export ... --engines {','.join(REFINER_ENGINES)}`"


def _spec(ex, name: str):
    for t in ex.inputs:
        if t.name == name:
            return t
    raise ValueError(f"engine {ex.name}: no input {name!r} (it takes {[t.name for t in ex.inputs][:8]} ...); {REBUILD}")


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

    def __init__(self, sink, step, capture, layout: RefinerLayout | dict | None = None, seed: int = DEFAULT_REFINER_SEED,
                 noise: Sequence[np.ndarray] | None = None):
        """``layout``: the manifest's ``refiner`` section (or a ``RefinerLayout``); shapes come from the
        engines and must agree with it. ``noise``: inject the per-block noise (block k -> [1, C, block, H, W]),
        e.g. the torch reference's, instead of drawing it (parity tests)."""
        self.sink, self.step, self.capture = sink, step, capture
        info = layout if isinstance(layout, RefinerLayout) else RefinerLayout.from_manifest(layout)
        self.info = info
        lat = _spec(step, "latents")
        _, self.C, self.block, self.H, self.W = (int(d) for d in lat.shape)
        self.sink_frames = int(_spec(sink, "latents").shape[2])
        S = self.H * self.W
        hm = int(_spec(step, "hist_valid").shape[0])
        if hm % S:
            raise ValueError(f"engine {step.name}: hist_valid has {hm} tokens, not whole {self.H}x{self.W} frames; {REBUILD}")
        self.history_frames = hm // S
        got = (self.block, self.sink_frames, self.sink_frames + self.history_frames)
        want = (info.block_size, info.sink_frames, info.kv_max_frames)
        if got != want:
            raise ValueError(
                f"refiner engines are built for (block_size, sink_frames, kv_max_frames) = {got} but the manifest's "
                f"refiner layout says {want}; the engines and manifest come from different exports: {REBUILD}"
            )
        if any(t.name.endswith(".text_k") for t in step.inputs):
            raise ValueError(f"engine {step.name} takes precomputed prompt K/V (text_kv graphs); this stage runs the "
                             f"'text' form: {REBUILD}")
        t = _spec(step, "text")
        self.caption_length, self.caption_channels = int(t.shape[1]), int(t.shape[2])
        for ex in (sink, capture):
            e = tuple(_spec(ex, "text").shape)
            if e != tuple(t.shape):
                raise ValueError(f"engine {ex.name} takes text {list(e)}, {step.name} {list(t.shape)}; {REBUILD}")
        self.sigmas = np.asarray(info.sigmas, dtype=np.float32)
        self.mult = float(info.timestep_scale_multiplier)
        # history chaining: capture outputs -> the (shared) step/capture inputs
        self.pairs = state_pairs(capture)
        hist_inputs = {n for n in self.pairs.values()}
        need = {x.name for x in capture.inputs if x.name == "hist_valid" or x.name.endswith((".hist_k", ".hist_v"))}
        if need - hist_inputs:
            raise ValueError(f"engine {capture.name}: its state_map does not feed {sorted(need - hist_inputs)[:4]}; {REBUILD}")
        self._hist_specs = {x.name: x for x in capture.inputs if x.name in hist_inputs}
        self._sink_names = [o.name for o in sink.outputs]
        missing = [n for n in self._sink_names if n not in {x.name for x in step.inputs}]
        if missing:
            raise ValueError(f"engine {sink.name} outputs {missing[:3]} that {step.name} does not take; {REBUILD}")
        self.seed = int(seed)
        self._noise = None if noise is None else [np.asarray(n, np.float32) for n in noise]
        self.text: np.ndarray | None = None
        self.text_mask: np.ndarray | None = None
        self.reset()

    @classmethod
    def from_executors(cls, executors: dict, layout=None, seed: int = DEFAULT_REFINER_SEED, **kw) -> "RefinerStage":
        return cls(executors[REFINER_SINK], executors[REFINER_STEP], executors[REFINER_CAPTURE], layout, seed, **kw)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.blocks_done = 0
        self.hist_frames = 0
        self.sink_kv: dict[str, np.ndarray] | None = None
        self.hist = {n: np.zeros(t.shape, dtype=t.dtype) for n, t in self._hist_specs.items()}

    @property
    def next_frame(self) -> int:
        """Absolute latent frame the next block starts at (0 while the sink is not captured)."""
        return 0 if self.sink_kv is None else self.sink_frames + self.blocks_done * self.block

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
            self.text, self.text_mask = np.zeros((1, L, D), np.float32), np.ones((1, L), np.float32)
            return
        feats, mask = (np.asarray(a, np.float32) for a in text)
        if feats.shape != (1, L, D):
            raise ValueError(
                f"refiner text features are {list(feats.shape)}, the refiner engines take [1, {L}, {D}]; re-encode the "
                f"prompt with `sanawm encode-prompt ... --refiner-encoder <this refiner's folder> --refiner-max-length {L}`"
            )
        if mask.shape != (1, L):
            raise ValueError(f"refiner text mask is {list(mask.shape)}, expected [1, {L}]")
        self.text, self.text_mask = np.ascontiguousarray(feats), np.ascontiguousarray(mask)

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
        if self.sink_kv is not None:
            d.update({f"sink/{k}": v for k, v in self.sink_kv.items()})
        d.update({f"hist/{k}": v for k, v in self.hist.items()})
        return d

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state = {k: np.asarray(v) for k, v in state.items()}
        if "rng" not in state or "blocks_done" not in state:
            raise ValueError(
                f"saved session has no refiner state ({sorted(state)[:4]}): it was saved without the refiner; resume "
                "with the same bundle and refiner setting (--no-refiner / refiner=False)"
            )
        sink = {k[5:]: v for k, v in state.items() if k.startswith("sink/")}
        hist = {k[5:]: v for k, v in state.items() if k.startswith("hist/")}
        if set(hist) != set(self._hist_specs) or (sink and set(sink) != set(self._sink_names)):
            raise ValueError("saved refiner state does not match these refiner engines (history / sink tensors differ); "
                             "resume with the bundle the session was saved with")
        for k, v in hist.items():
            t = self._hist_specs[k]
            if v.shape != tuple(t.shape):
                raise ValueError(f"saved refiner history {k!r} is {list(v.shape)}, engine takes {list(t.shape)}; "
                                 "resume with the bundle the session was saved with")
        self.seed = int(state["seed"]) if "seed" in state else self.seed
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.rng.bit_generator.state = json.loads(bytes(state["rng"]).decode())
        self.blocks_done = int(state["blocks_done"])
        self.hist_frames = int(state["hist_frames"])
        self.sink_kv = {k: v.astype(np.float32) for k, v in sink.items()} or None
        self.hist = {k: v.astype(self._hist_specs[k].dtype) for k, v in hist.items()}
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

    def _feeds(self, ex, values: dict) -> dict[str, np.ndarray]:
        out = {}
        for t in ex.inputs:
            if t.name not in values:
                raise ValueError(f"engine {ex.name}: no value for input {t.name!r}; {REBUILD}")
            out[t.name] = values[t.name]
        return out

    def _capture_sink(self, raw: np.ndarray) -> None:
        vals = {"latents": np.ascontiguousarray(raw, np.float32), "sink_pos": np.arange(self.sink_frames, dtype=np.int64),
                "text": self.text, "text_mask": self.text_mask}
        out = self.sink.run(self._feeds(self.sink, vals))
        self.sink_kv = {n: np.asarray(out[n], np.float32) for n in self._sink_names}

    def refine_block(self, clean: np.ndarray) -> np.ndarray:
        """Refine the next block ``clean`` [1, C, block, H, W] and append its K/V to the history."""
        start = self.next_frame
        n, sk = self.block, self.sink_frames
        off = start - self.hist_frames - sk
        common = {
            "frame_pos": np.arange(start, start + n, dtype=np.int64),
            "sink_pos": np.arange(off, off + sk, dtype=np.int64),
            "text": self.text,
            "text_mask": self.text_mask,
            **self.sink_kv,
            **self.hist,
        }
        sig = self.sigmas
        s0 = float(sig[0])
        eps = self._draw_noise(self.blocks_done)
        x = ((1.0 - s0) * clean.astype(np.float32) + s0 * eps).astype(np.float32)
        for i in range(len(sig) - 1):
            s = float(sig[i])
            ts = np.array([s * self.mult], dtype=np.float32)
            v = self.step.run(self._feeds(self.step, {**common, "latents": x, "timestep": ts}))["velocity"]
            x0 = (x - v.astype(np.float32) * sig[i]).astype(np.float32)
            if s <= 1.0e-6:
                x = x0
            else:
                vel = (x - x0) / np.float32(s)
                x = (x + (sig[i + 1] - sig[i]) * vel).astype(np.float32)
        out = self.capture.run(self._feeds(self.capture, {**common, "latents": x}))
        self.hist = {i: np.array(out[o], dtype=self._hist_specs[i].dtype, copy=True) for o, i in self.pairs.items()
                     if i in self._hist_specs}
        self.hist_frames = min(self.hist_frames + n, self.history_frames)
        self.blocks_done += 1
        return x

    def process(self, chunk: Chunk) -> Chunk:
        lat = np.ascontiguousarray(chunk.latents, dtype=np.float32)
        if lat.ndim != 5 or lat.shape[0] != 1 or lat.shape[1] != self.C or lat.shape[3:] != (self.H, self.W):
            raise ValueError(
                f"chunk {chunk.index} latents are {list(lat.shape)}; the refiner engines take [1, {self.C}, n, {self.H}, "
                f"{self.W}]: they were built for another generator config, rebuild them with the generator's --config"
            )
        if self.text is None:
            self.set_text(None)
        parts = []
        if chunk.start == 0:
            if self.sink_kv is not None:
                raise ValueError("refiner got clip frame 0 twice; start a new session for a new clip")
            sk = self.sink_frames
            if lat.shape[2] <= sk:
                raise ValueError(f"chunk 0 has {lat.shape[2]} latent frames; the refiner needs more than the {sk} sink frame(s)")
            raw = lat[:, :, :sk]
            self._capture_sink(raw)
            parts.append(raw)
            body, start = lat[:, :, sk:], sk
        else:
            body, start = lat, chunk.start
        if start != self.next_frame:
            raise ValueError(
                f"refiner expected the chunk starting at latent frame {self.next_frame if self.sink_kv is not None else 0}, "
                f"got chunk {chunk.index} at frame {chunk.start}; chunks are refined in order from chunk 0 "
                "(to continue mid-clip, resume a saved session)"
            )
        if body.shape[2] % self.block:
            raise ValueError(
                f"chunk {chunk.index} has {body.shape[2]} latent frames to refine, not whole blocks of {self.block}; "
                "the refiner blocks must align with stage-1 chunks (chunk_size = block_size = 3)"
            )
        for j in range(body.shape[2] // self.block):
            parts.append(self.refine_block(body[:, :, j * self.block:(j + 1) * self.block]))
        chunk.refined = np.ascontiguousarray(np.concatenate(parts, axis=2), dtype=np.float32)
        return chunk
