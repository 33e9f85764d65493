"""Executor interface shared by every backend (numpy in, numpy out; torch-free).

An executor runs one engine graph: a pure step function whose inputs and outputs are fixed by its
``TensorSpec`` tuples (from the bundle manifest). ``run`` checks the feeds against the spec before anything
reaches a backend, so a wrong name, dtype or shape fails with a message that says which tensor and why.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import numpy as np

from ..spec import TensorSpec


class ExecutorError(ValueError):
    """Bad feeds or an engine that does not match its manifest entry."""


def check_feeds(name: str, inputs: tuple[TensorSpec, ...], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check ``feeds`` against ``inputs`` (names, dtypes, shapes); returns them as contiguous arrays.

    Raises:
        ExecutorError naming the engine, the tensor, what was expected and what came in.
    """
    want = {t.name for t in inputs}
    missing = [t.name for t in inputs if t.name not in feeds]
    extra = sorted(set(feeds) - want)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing inputs {missing}")
        if extra:
            parts.append(f"unknown inputs {extra}")
        raise ExecutorError(f"engine {name!r}: {'; '.join(parts)} (it takes {[t.name for t in inputs]})")
    out = {}
    for t in inputs:
        a = feeds[t.name]
        if not isinstance(a, np.ndarray):
            raise ExecutorError(f"engine {name!r}: input {t.name!r} must be a numpy array, got {type(a).__name__}")
        if a.dtype != np.dtype(t.dtype):
            raise ExecutorError(
                f"engine {name!r}: input {t.name!r} has dtype {a.dtype}, expected {t.dtype} "
                f"(convert with .astype(np.{t.dtype}))"
            )
        if tuple(a.shape) != tuple(t.shape):
            raise ExecutorError(
                f"engine {name!r}: input {t.name!r} has shape {list(a.shape)}, expected {list(t.shape)}"
            )
        out[t.name] = np.ascontiguousarray(a)
    return out


def check_outputs(name: str, outputs: tuple[TensorSpec, ...], got: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check a backend's results against the spec (an engine that disagrees with its manifest is a bug)."""
    res = {}
    for t in outputs:
        if t.name not in got:
            raise ExecutorError(f"engine {name!r}: backend returned no output {t.name!r}; rebuild the engine")
        a = got[t.name]
        if a.dtype != np.dtype(t.dtype) or tuple(a.shape) != tuple(t.shape):
            raise ExecutorError(
                f"engine {name!r}: output {t.name!r} is {a.dtype}{list(a.shape)}, the manifest says "
                f"{t.dtype}{list(t.shape)}; the engine file does not match its manifest entry, rebuild it"
            )
        res[t.name] = a
    return res


class Executor(ABC):
    """One engine graph on one backend. ``run`` is a pure step: no hidden state between calls."""

    backend: str = ""

    def __init__(self, name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], state_map: dict | None = None):
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.state_map = dict(state_map or {})

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one step: ``feeds`` {input name: array} -> {output name: array} (new arrays)."""
        checked = check_feeds(self.name, self.inputs, feeds)
        return check_outputs(self.name, self.outputs, self._run(checked))

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Backend-specific execution on already-checked feeds."""

    def next_state(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next call's state inputs from this call's outputs (by ``state_map``)."""
        return {inp: outputs[out] for out, inp in self.state_map.items()}

    def close(self) -> None:
        """Release backend resources (device memory, sessions)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self.inputs)} inputs, {len(self.outputs)} outputs)"
