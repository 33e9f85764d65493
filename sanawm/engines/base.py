"""Executor interface shared by every backend (torch-free).

An executor runs one engine graph: a pure step function whose inputs and outputs are fixed by its
``TensorSpec`` tuples (from the bundle manifest). Two ways to call it:

* ``run_bound(bindings, profile)``: the runtime's path. Every input and output is a ``Buffer`` the session
  pool owns, in the executor's memory (``memory_kind``: host arrays for ONNX Runtime CPU, device pointers for
  TensorRT); the executor binds them and enqueues the engine. Nothing is copied.
* ``run(feeds)``: numpy in, numpy out (tests, debugging, one-off calls). ``run`` checks the feeds against the
  spec before anything reaches a backend, so a wrong name, dtype or shape fails with a message that says
  which tensor and why.

A dynamic engine (one engine for several call shapes, e.g. the generator's 4-frame first chunk and 3-frame
later chunks) declares ``profiles``: profile name -> sizes of its symbolic dims (``"n"``); every call names
the profile it runs at.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import numpy as np

from ..spec import StepIO, TensorSpec


class ExecutorError(ValueError):
    """Bad feeds or an engine that does not match its manifest entry."""


class MissingBackendError(ImportError):
    """A backend library (onnxruntime, tensorrt, tensorrt_rtx) is not installed; the message has the install
    command. A user error (the CLIs print it in one line), unlike any other ImportError."""


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


def profile_of(name: str, profiles: Mapping[str, dict], inputs: tuple[TensorSpec, ...], feeds: Mapping[str, np.ndarray]) -> str | None:
    """The profile whose concrete input shapes match ``feeds`` (None for a fixed-shape engine)."""
    if not profiles:
        return None
    for prof, dims in profiles.items():
        if all(tuple(np.shape(feeds[t.name])) == t.concrete(dims).shape for t in inputs if t.name in feeds):
            return prof
    raise ExecutorError(f"engine {name!r}: the feeds' shapes match none of its profiles {sorted(profiles)}")


class Executor(ABC):
    """One engine graph on one backend. Every call is a pure step: no hidden state between calls."""

    backend: str = ""
    memory_kind: str = "host"  # where bound buffers must live: "host" or "cuda"

    def __init__(self, name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], state_map: dict | None = None,
                 profiles: Mapping[str, dict] | None = None):
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.state_map = dict(state_map or {})
        self.profiles = {k: dict(v) for k, v in (profiles or {}).items()}

    def contract(self, profile: str | None = None) -> StepIO:
        """The engine's tensors at ``profile`` (fixed-shape engines: ``None``)."""
        io = StepIO(self.inputs, self.outputs, self.state_map)
        if not self.profiles:
            return io
        if profile not in self.profiles:
            raise ExecutorError(f"engine {self.name!r} has profiles {sorted(self.profiles)}; got {profile!r}")
        return io.concrete(self.profiles[profile])

    def run(self, feeds: Mapping[str, np.ndarray], profile: str | None = None) -> dict[str, np.ndarray]:
        """Run one step: ``feeds`` {input name: array} -> {output name: array} (new arrays)."""
        if profile is None:
            profile = profile_of(self.name, self.profiles, self.inputs, feeds)
        io = self.contract(profile)
        checked = check_feeds(self.name, io.inputs, feeds)
        return check_outputs(self.name, io.outputs, self._run(checked, profile))

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray], profile: str | None = None) -> dict[str, np.ndarray]:
        """Backend-specific execution on already-checked feeds."""

    def run_bound(self, bindings: Mapping, profile: str | None = None) -> None:
        """Run one step on pool buffers (``sanawm.engines.memory.Buffer``), outputs written in place.

        This default serves host-memory executors that only implement ``_run``: it reads the input arrays and
        copies the results into the bound output arrays. Backends with zero-copy binding override it.
        """
        io = self.contract(profile)
        feeds = {t.name: bindings[t.name].handle for t in io.inputs}
        res = self._run(check_feeds(self.name, io.inputs, feeds), profile)
        for t in io.outputs:
            np.copyto(bindings[t.name].handle, res[t.name])

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
