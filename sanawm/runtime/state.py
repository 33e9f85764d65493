"""State buffers the runtime owns for the generator engines (engines are pure step functions).

Two kinds of carried state (see ``sanawm.spec.generator_step_io`` and sana-wm-streaming.md 2.2-2.5):

* **chained state**: GDN states, K short-conv tails and FFN temporal-conv tails. The t = 0 commit pass of
  chunk c returns ``<name>.out``; it becomes input ``<name>`` of chunk c + 1 (``StepIO.state_map``). Chunk 0
  starts from zeros.
* **softmax chunk K/V**: softmax block i returns this chunk's ``b{i}.{k,v,cam_k,cam_v}_chunk``
  ``[1, h, n*S, D]``. For chunk c the runtime concatenates the chunks of ``cfg.window_chunks(c)`` (oldest
  first) along the token axis, zero-pads to ``max_window_frames * S`` tokens and flags real tokens in
  ``window_valid``. Chunks that no future window needs are evicted, so memory stays flat in clip length.
"""

from __future__ import annotations

import numpy as np

from ..config import GeneratorConfig
from ..spec import StepIO, max_window_frames

KV_NAMES = ("k", "v", "cam_k", "cam_v")


class GeneratorState:
    """Carried state of one generation: chained state inputs and the softmax K/V of still-needed chunks."""

    def __init__(self, cfg: GeneratorConfig, first_io: StepIO, next_io: StepIO):
        self.cfg = cfg
        self.first_io, self.next_io = first_io, next_io
        # chained state: input name -> array; zeros before chunk 0 ("zero for chunk 0" in the release)
        self.chained: dict[str, np.ndarray] = {
            inp: np.zeros(first_io.input(inp).shape, dtype=first_io.input(inp).dtype)
            for inp in first_io.state_map.values()
        }
        # softmax K/V per committed chunk: chunk index -> {"b{i}.{k,v,cam_k,cam_v}": [1, h, n*S, D]}
        self.kv: dict[int, dict[str, np.ndarray]] = {}
        self.committed = 0  # number of chunks committed so far (= index of the next chunk)
        self.window_tokens = max_window_frames(cfg) * cfg.patch_tokens  # Wt

    # ---------------------------------------------------------------- reading
    def feeds(self, c: int) -> dict[str, np.ndarray]:
        """State inputs of chunk ``c``: chained state, plus window K/V and ``window_valid`` for c >= 1."""
        if c != self.committed:
            raise ValueError(f"state holds {self.committed} committed chunks; cannot feed chunk {c}")
        out = dict(self.chained)
        if c == 0 or self.window_tokens == 0:
            return out
        window = self.cfg.window_chunks(c)
        missing = [k for k in window if k not in self.kv]
        assert not missing, f"softmax K/V of chunks {missing} were evicted but chunk {c} needs them"
        Wt = self.window_tokens
        valid = np.zeros((Wt,), dtype=np.float32)
        for i in self.cfg.softmax_blocks:
            for nm in KV_NAMES:
                parts = [self.kv[k][f"b{i}.{nm}"] for k in window]  # each [1, h, n_k*S, D]
                cat = np.concatenate(parts, axis=2)
                used = cat.shape[2]
                if used > Wt:
                    raise ValueError(f"window of chunk {c} has {used} tokens, engine takes {Wt}")
                win = np.zeros(cat.shape[:2] + (Wt,) + cat.shape[3:], dtype=cat.dtype)  # [1, h, Wt, D]
                win[:, :, :used] = cat  # real tokens first, padding after
                out[f"b{i}.{nm}_win"] = win
                valid[:used] = 1.0
        out["window_valid"] = valid
        return out

    def window_token_count(self, c: int) -> int:
        """Real (unpadded) window tokens chunk ``c`` reads."""
        S = self.cfg.patch_tokens
        bounds_n = lambda k: self.cfg.first_chunk_size if k == 0 else self.cfg.chunk_size  # noqa: E731
        return sum(bounds_n(k) * S for k in self.cfg.window_chunks(c))

    # ---------------------------------------------------------------- writing
    def commit(self, c: int, outputs: dict[str, np.ndarray]) -> None:
        """Take the t = 0 pass outputs of chunk ``c`` as the new state and evict K/V no window needs."""
        if c != self.committed:
            raise ValueError(f"committing chunk {c} but the next chunk to commit is {self.committed}")
        io = self.first_io if c == 0 else self.next_io
        for out_name, in_name in io.state_map.items():
            self.chained[in_name] = np.array(outputs[out_name], dtype=np.float32, copy=True)
        if self.window_tokens:
            self.kv[c] = {
                f"b{i}.{nm}": np.array(outputs[f"b{i}.{nm}_chunk"], dtype=np.float32, copy=True)
                for i in self.cfg.softmax_blocks
                for nm in KV_NAMES
            }
        self.committed = c + 1
        # Windows only move forward (the sink plus a range whose lower end grows with c), so a chunk absent
        # from the next chunk's window is absent from every later one: evict it.
        keep = set(self.cfg.window_chunks(c + 1))
        for k in list(self.kv):
            if k not in keep:
                del self.kv[k]

    # ---------------------------------------------------------------- save / resume
    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat name -> array dict (npz-friendly): ``chained/<name>``, ``kv/<chunk>/<name>``, ``committed``."""
        d = {f"chained/{k}": v for k, v in self.chained.items()}
        for c, tensors in self.kv.items():
            d.update({f"kv/{c}/{k}": v for k, v in tensors.items()})
        d["committed"] = np.array(self.committed, dtype=np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        chained = {k[len("chained/"):]: np.asarray(v) for k, v in d.items() if k.startswith("chained/")}
        if set(chained) != set(self.chained):
            raise ValueError(
                "saved generator state does not match this bundle's engines: "
                f"missing {sorted(set(self.chained) - set(chained))}, unexpected {sorted(set(chained) - set(self.chained))}"
            )
        for k, v in chained.items():
            if v.shape != self.chained[k].shape:
                raise ValueError(f"saved state {k} has shape {v.shape}, the engine takes {self.chained[k].shape}")
        self.chained = {k: v.astype(np.float32) for k, v in chained.items()}
        self.kv = {}
        for k, v in d.items():
            if k.startswith("kv/"):
                _, c, name = k.split("/", 2)
                self.kv.setdefault(int(c), {})[name] = np.asarray(v, dtype=np.float32)
        self.committed = int(d["committed"])
