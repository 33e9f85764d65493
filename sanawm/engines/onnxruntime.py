"""ONNX Runtime executor: CPU everywhere, CUDA where onnxruntime-gpu is installed (torch-free).

``run_bound`` binds the session pool's buffers with I/O binding, so ONNX Runtime reads inputs and writes
outputs where they live and no tensor is copied per call:

* host memory (ONNX Runtime CPU): every buffer is a numpy array wrapped as an ``OrtValue`` over the same memory;
* device memory (onnxruntime-gpu, CUDA execution provider): every buffer is a device pointer of the session's
  ``CudaMemory`` pool (the same pool TensorRT uses), bound by address on device "cuda". The pool's stream is
  synchronised before the run (its uploads and copies precede it) and ONNX Runtime synchronises its own stream
  before ``run_with_iobinding`` returns, so the two streams never race.

The bindings are cached per set of addresses (a session binds the same few sets over and over: two latents
buffers x two state parities x two profiles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..spec import TensorSpec
from .base import Executor, ExecutorError, MissingBackendError


def import_ort():
    """The onnxruntime module, imported on demand; a missing package is named with its install command."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingBackendError(
            "backend 'onnxruntime' needs the onnxruntime package: pip install 'sanawm[onnxruntime]' "
            "(or onnxruntime-gpu for CUDA)"
        ) from None
    return ort


def default_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device``: "cpu", "cuda" or "auto" (CUDA when available, else CPU)."""
    avail = import_ort().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in avail:
            raise ExecutorError(
                f"device 'cuda' asked for but onnxruntime offers {avail}; install onnxruntime-gpu or use device='cpu'"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ExecutorError(f"unknown device {device!r}; choose 'auto', 'cpu' or 'cuda'")
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def options_device_id(providers) -> int:
    """The CUDA device id in an explicit provider list (``("CUDAExecutionProvider", {"device_id": N})``), else 0."""
    for p in providers:
        if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider":
            return int(p[1].get("device_id", 0))
    return 0


class OnnxRuntimeExecutor(Executor):
    """Runs an ONNX engine graph with onnxruntime.

    Args:
        onnx_path: the ONNX file (its external data must sit beside it, as in a bundle).
        providers: explicit provider list; default from ``device``.
        threads: intra-op threads (0 = onnxruntime's default).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        name: str,
        onnx_path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        state_map: dict | None = None,
        *,
        profiles: dict | None = None,
        device: str = "auto",
        providers: list[str] | None = None,
        threads: int = 0,
    ):
        super().__init__(name, tuple(inputs), tuple(outputs), state_map, profiles)
        ort = import_ort()
        self._ort = ort
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.providers = providers or default_providers(device)
        first = self.providers[0] if isinstance(self.providers[0], str) else self.providers[0][0]
        if first not in ("CPUExecutionProvider", "CUDAExecutionProvider"):
            raise ExecutorError(f"engine {name!r}: execution provider {first} is not supported; use the CPU or CUDA one")
        # where the session pool must live for this engine: "cuda" -> CudaMemory device pointers
        self.memory_kind = "cuda" if first == "CUDAExecutionProvider" else "host"
        self.device_id = int(options_device_id(self.providers))
        self.session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=self.providers)
        got_in = {i.name for i in self.session.get_inputs()}
        got_out = {o.name for o in self.session.get_outputs()}
        want_in, want_out = {t.name for t in self.inputs}, {t.name for t in self.outputs}
        if got_in != want_in or got_out != want_out:
            raise ExecutorError(
                f"engine {name!r}: {onnx_path} has inputs {sorted(got_in)} / outputs {sorted(got_out)}, the "
                f"manifest says {sorted(want_in)} / {sorted(want_out)}; rebuild the engine"
            )
        self._out_names = [t.name for t in self.outputs]
        self._in_names = [t.name for t in self.inputs]
        self._bindings: dict[tuple, object] = {}
        self.binding_builds = 0  # how many distinct binding sets were built (tests: bounded per session)

    def _run(self, feeds: dict[str, np.ndarray], profile: str | None = None) -> dict[str, np.ndarray]:
        res = self.session.run(self._out_names, feeds)
        return dict(zip(self._out_names, res))

    def run_bound(self, bindings, profile: str | None = None) -> None:
        """Bind pool buffers (host arrays) in place and run; outputs land in the bound output arrays."""
        key = tuple((n, bindings[n].address(), bindings[n].shape) for n in self._in_names + self._out_names)
        io = self._bindings.get(key)
        if io is None:
            io = self._bind(bindings, profile)
            self._bindings[key] = io
        bindings[self._in_names[0]].memory.synchronize()  # the pool's uploads / copies come first
        self.session.run_with_iobinding(io)

    def _bind(self, bindings, profile):
        want = self.contract(profile)
        io = self.session.io_binding()
        for t in want.inputs + want.outputs:
            buf = bindings[t.name]
            if isinstance(buf.handle, (int, np.integer)):  # a pointer of a pointer-addressed pool (CUDA)
                self._bind_pointer(io, t, buf, is_input=t in want.inputs, profile=profile)
                continue
            arr = buf.handle
            if self.memory_kind == "cuda":
                raise ExecutorError(
                    f"engine {self.name!r} runs on the CUDA execution provider but {t.name!r} is host memory; "
                    "load it through Runtime.load, which puts the session pool in device memory"
                )
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(t.dtype) or tuple(arr.shape) != t.shape:
                raise ExecutorError(
                    f"engine {self.name!r}: bound {t.name!r} is {getattr(arr, 'dtype', type(arr).__name__)}"
                    f"{list(getattr(arr, 'shape', []))}, the engine takes {t.dtype}{list(t.shape)} at profile {profile!r}"
                )
            value = self._ort.OrtValue.ortvalue_from_numpy(arr)  # same memory, no copy
            if t in want.inputs:
                io.bind_ortvalue_input(t.name, value)
            else:
                io.bind_ortvalue_output(t.name, value)
        self.binding_builds += 1
        return io

    def _bind_pointer(self, io, t: TensorSpec, buf, *, is_input: bool, profile) -> None:
        """Bind a buffer by address: device "cuda" on the CUDA execution provider, "cpu" for a host pointer."""
        if buf.dtype != t.dtype or buf.shape != tuple(t.shape):
            raise ExecutorError(
                f"engine {self.name!r}: bound {t.name!r} is {buf.dtype}{list(buf.shape)}, the engine takes "
                f"{t.dtype}{list(t.shape)} at profile {profile!r}"
            )
        where = "cuda" if self.memory_kind == "cuda" else "cpu"
        bind = io.bind_input if is_input else io.bind_output
        bind(t.name, where, self.device_id, np.dtype(t.dtype), list(t.shape), int(buf.handle))

    def close(self) -> None:
        self._bindings = {}
        self.session = None
