"""TensorRT / TensorRT-RTX executor over cuda-python (torch-free, import-safe without a GPU).

One ``TensorRTEngine`` serves both products; the Python module is chosen by backend name
(``tensorrt`` -> ``import tensorrt``, ``tensorrt_rtx`` -> ``import tensorrt_rtx``) and imported lazily.
Device memory comes from ``cuda.bindings.runtime``; every CUDA call goes through ``cuda_check``.

Lifecycle (trt-demo ``Engine``; trt-llm ``Session``)::

    eng = TensorRTEngine(name, plan_path, inputs, outputs, state_map, backend="tensorrt_rtx")
    eng.load()        # read + deserialize the plan, check its I/O against the manifest
    eng.activate()    # execution context + stream
    eng.allocate()    # one device arena: a buffer per tensor, two (ping-pong) per state pair
    out = eng.run(feeds)                       # host numpy in/out (debug/CPU-parity path)
    eng.upload_state(state); eng.step(feeds, commit=True)   # state stays on the device

State ping-pong: state pair k (output ``o`` -> input ``i``) owns slots A/B. At parity p the engine reads
``i`` from slot p and writes ``o`` into slot 1-p; ``commit=True`` flips the parity, so the next call reads
what this one wrote with no copy. Addresses are therefore fixed per parity, and one CUDA graph per parity
is captured on first use (``use_cuda_graph=True``) and replayed after (fixed shapes only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..spec import TensorSpec
from .base import Executor, ExecutorError, check_feeds, check_outputs

ALIGN = 256  # device buffer alignment (bytes)
_TRT_MODULES = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt_rtx"}
_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
    "FP8": "float8_e4m3fn",
}


# ------------------------------------------------------------------------------------ imports
def import_trt(backend: str):
    """The TensorRT Python module for ``backend`` ("tensorrt" or "tensorrt_rtx"), imported on demand."""
    if backend not in _TRT_MODULES:
        raise ExecutorError(f"unknown TensorRT backend {backend!r}; choose 'tensorrt' or 'tensorrt_rtx'")
    try:
        return importlib.import_module(_TRT_MODULES[backend])
    except ImportError as e:
        how = "pip install tensorrt-rtx" if backend == "tensorrt_rtx" else "pip install tensorrt (NVIDIA's wheels)"
        raise ImportError(f"backend {backend!r} needs the {_TRT_MODULES[backend]} package ({e}): {how}, or use "
                          "backend 'onnxruntime'") from None


def cuda_runtime():
    """``cuda.bindings.runtime`` (cuda-python), imported on demand."""
    try:
        from cuda.bindings import runtime
    except ImportError as e:
        raise ImportError(f"TensorRT engines need cuda-python ({e}): pip install 'cuda-python>=13'") from None
    return runtime


class CudaError(RuntimeError):
    def __init__(self, what: str, name: str, code: int):
        super().__init__(f"{what} failed: {name} (code {code})")
        self.name, self.code = name, code


def cuda_check(result: Any, what: str, rt: Any = None):
    """Check a cuda-python return tuple ``(err, *values)``; raise ``CudaError`` with the error name and code.

    Returns None, the single value, or the tuple of values.
    """
    if isinstance(result, tuple):
        err, vals = result[0], result[1:]
    else:
        err, vals = result, ()
    code = int(getattr(err, "value", err))
    if code != 0:
        name = getattr(err, "name", None)
        if name is None:
            try:
                rt = rt or cuda_runtime()
                e2, nm = rt.cudaGetErrorName(err)
                name = nm.decode() if isinstance(nm, bytes) else str(nm)
            except Exception:  # noqa: BLE001 - naming the error must not hide it
                name = "cudaError"
        raise CudaError(what, str(name), code)
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else vals


# ------------------------------------------------------------------------------- buffer planning
def nbytes(t: TensorSpec) -> int:
    itemsize = 1 if t.dtype == "float8_e4m3fn" else (2 if t.dtype == "bfloat16" else np.dtype(t.dtype).itemsize)
    return int(np.prod(t.shape, dtype=np.int64)) * itemsize


@dataclass(frozen=True)
class Slot:
    offset: int
    nbytes: int


@dataclass(frozen=True)
class BufferPlan:
    """Offsets in one device arena: ``single[name]`` for plain tensors, ``pair[input_name] = (A, B)`` for state.

    ``address(name, parity)`` gives the slot of any engine tensor at a parity.
    """

    single: dict
    pair: dict  # state input name -> (Slot A, Slot B)
    out_to_in: dict  # state output name -> state input name
    total: int

    def slot(self, name: str, parity: int) -> Slot:
        if name in self.single:
            return self.single[name]
        if name in self.pair:  # state input reads slot[parity]
            return self.pair[name][parity]
        if name in self.out_to_in:  # state output writes slot[1 - parity]
            return self.pair[self.out_to_in[name]][1 - parity]
        raise KeyError(name)


def plan_buffers(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], state_map: Mapping[str, str], align: int = ALIGN) -> BufferPlan:
    """Lay out every engine tensor in one arena; each state pair gets two slots (ping-pong)."""
    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}
    for o, i in state_map.items():
        if o not in outs or i not in ins:
            raise ExecutorError(f"state_map {o!r} -> {i!r} names a tensor the engine does not have")
        if nbytes(outs[o]) != nbytes(ins[i]):
            raise ExecutorError(f"state {o!r} ({nbytes(outs[o])} B) cannot feed {i!r} ({nbytes(ins[i])} B)")
    off = 0

    def take(n: int) -> Slot:
        nonlocal off
        s = Slot(off, n)
        off += (n + align - 1) // align * align
        return s

    state_in = set(state_map.values())
    single, pair = {}, {}
    for t in inputs:
        if t.name in state_in:
            pair[t.name] = (take(nbytes(t)), take(nbytes(t)))
        else:
            single[t.name] = take(nbytes(t))
    for t in outputs:
        if t.name not in state_map:
            single[t.name] = take(nbytes(t))
    return BufferPlan(single, pair, dict(state_map), max(off, align))


def trt_dtype_name(dt: Any) -> str:
    """numpy dtype name of a TensorRT DataType (``DataType.FLOAT`` -> ``float32``)."""
    key = str(dt).split(".")[-1].upper()
    if key not in _TRT_DTYPES:
        raise ExecutorError(f"TensorRT dtype {dt} has no numpy equivalent in sanawm")
    return _TRT_DTYPES[key]


def check_engine_io(name: str, engine_io: Mapping[str, tuple[str, str, tuple]], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Compare a deserialized engine's I/O {name: (mode, dtype, shape)} with the manifest's specs."""
    want = {t.name: ("INPUT", t.dtype, tuple(t.shape)) for t in inputs}
    want.update({t.name: ("OUTPUT", t.dtype, tuple(t.shape)) for t in outputs})
    problems = []
    for n in sorted(set(want) | set(engine_io)):
        if n not in engine_io:
            problems.append(f"{n!r} missing from the plan")
        elif n not in want:
            problems.append(f"plan has extra tensor {n!r}")
        else:
            got = engine_io[n]
            if (got[0], got[1]) != want[n][:2] or tuple(int(x) for x in got[2]) != want[n][2]:
                problems.append(f"{n!r}: plan {got[0].lower()} {got[1]}{list(got[2])}, manifest {want[n][1]}{list(want[n][2])}")
    if problems:
        raise ExecutorError(f"engine {name!r}: plan does not match its manifest entry ({'; '.join(problems)}); rebuild it")


# ------------------------------------------------------------------------------------ environment
def detect_environment(backend: str):
    """``BackendEnv`` of this machine: library version + current GPU name and compute capability."""
    from ..bundle.env import BackendEnv

    trt = import_trt(backend)
    rt = cuda_runtime()
    dev = cuda_check(rt.cudaGetDevice(), "cudaGetDevice")
    prop = cuda_check(rt.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    gpu = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return BackendEnv(backend, trt.__version__, f"sm_{prop.major}{prop.minor}", gpu)


# ------------------------------------------------------------------------------------ weight streaming
def check_budget_spec(name: str, budget) -> None:
    """Reject a malformed ``weight_streaming_budget`` before any GPU work."""
    if budget is None or (isinstance(budget, str) and budget == "auto"):
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ExecutorError(
            f"engine {name!r}: weight_streaming_budget must be bytes (int), a fraction in (0, 1] (float) or 'auto'; "
            f"got {budget!r}"
        )
    if isinstance(budget, float) and not 0.0 < budget <= 1.0:
        raise ExecutorError(
            f"engine {name!r}: a fractional weight_streaming_budget must lie in (0, 1] (share of the streamable "
            f"weights kept on the device); got {budget}; pass bytes as an int"
        )
    if isinstance(budget, int) and budget < 0:
        raise ExecutorError(f"engine {name!r}: weight_streaming_budget must be >= 0 bytes; got {budget}")


def parse_budget(text: str) -> int | float | str:
    """CLI spelling of a budget: ``auto``, ``0.5`` (fraction), ``50%``, ``2G`` / ``512M`` / ``1048576`` (bytes)."""
    t = str(text).strip().lower()
    if t == "auto":
        return "auto"
    if t.endswith("%"):
        return float(t[:-1]) / 100.0
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    if "." in t:
        return float(t)
    return int(t)


def apply_weight_streaming_budget(name: str, engine, budget) -> int:
    """Set ``engine.weight_streaming_budget_v2`` from a budget spec; returns the bytes set.

    Must run after deserialization and before ``create_execution_context`` (TensorRT reads the budget when
    the context is created). A plan built without weight streaming has no streamable weights: that is an
    error naming the fix, not a silent no-op.
    """
    check_budget_spec(name, budget)
    total = int(getattr(engine, "streamable_weights_size", 0) or 0)
    if total <= 0:
        raise ExecutorError(
            f"engine {name!r}: weight_streaming_budget={budget!r} was given but the plan has no streamable weights "
            "(built without weight streaming); rebuild it with `sanawm-export ... --weight-streaming` or drop the budget"
        )
    if budget == "auto":
        nbytes = int(engine.get_weight_streaming_automatic_budget())
    elif isinstance(budget, float):
        nbytes = int(total * budget)
    else:
        nbytes = min(int(budget), total)
    engine.weight_streaming_budget_v2 = nbytes
    return nbytes


# ------------------------------------------------------------------------------------------ engine
class TensorRTEngine(Executor):
    """A TensorRT or TensorRT-RTX plan with device buffers from cuda-python."""

    def __init__(
        self,
        name: str,
        plan_path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        state_map: dict | None = None,
        *,
        backend: str = "tensorrt",
        use_cuda_graph: bool = False,
        weight_streaming_budget: int | float | str | None = None,
    ):
        """``weight_streaming_budget``: device bytes of streamable weights to keep resident (int), a fraction
        of the plan's streamable weights (float in (0, 1]), ``"auto"`` (TensorRT's automatic budget), or
        None (everything resident: TensorRT's default). Only for plans built with weight streaming
        (``sanawm-export --weight-streaming``); applied through ``engine.weight_streaming_budget_v2`` in
        ``activate`` before the execution context is created. The plumbing is unit-tested with a fake
        engine; the real TensorRT behaviour (speed, memory) is untested here (no GPU on the build machine)."""
        super().__init__(name, tuple(inputs), tuple(outputs), state_map)
        if backend not in _TRT_MODULES:
            raise ExecutorError(f"unknown TensorRT backend {backend!r}; choose 'tensorrt' or 'tensorrt_rtx'")
        check_budget_spec(name, weight_streaming_budget)
        self.weight_streaming_budget = weight_streaming_budget
        self.weight_streaming_bytes: int | None = None  # what was applied (None: not streaming)
        self.backend = backend
        self.plan_path = Path(plan_path)
        self.use_cuda_graph = use_cuda_graph
        self.plan = plan_buffers(self.inputs, self.outputs, self.state_map)
        self.parity = 0
        self._trt = self._rt = self._runtime = self.engine = self.context = None
        self.stream = self.arena = None
        self._graphs: dict[int, Any] = {}
        self._bound_parity: int | None = None

    # ----------------------------------------------------------- lifecycle
    def load(self) -> "TensorRTEngine":
        """Read and deserialize the plan; check its tensors against the manifest."""
        self._trt = trt = import_trt(self.backend)
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        data = self.plan_path.read_bytes()
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ExecutorError(
                f"engine {self.name!r}: {self.backend} could not deserialize {self.plan_path} (built by another "
                f"version or for another GPU?); rebuild it with `sanawm-export ... --backends {self.backend} --engines {self.name}`"
            )
        io = {}
        for i in range(self.engine.num_io_tensors):
            n = self.engine.get_tensor_name(i)
            mode = "INPUT" if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else "OUTPUT"
            io[n] = (mode, trt_dtype_name(self.engine.get_tensor_dtype(n)), tuple(self.engine.get_tensor_shape(n)))
        check_engine_io(self.name, io, self.inputs, self.outputs)
        return self

    def activate(self) -> "TensorRTEngine":
        """Create the execution context and a non-blocking stream."""
        if self.engine is None:
            self.load()
        self._rt = rt = cuda_runtime()
        if self.weight_streaming_budget is not None:
            self.weight_streaming_bytes = apply_weight_streaming_budget(self.name, self.engine, self.weight_streaming_budget)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ExecutorError(f"engine {self.name!r}: create_execution_context failed (out of device memory?)")
        self.stream = cuda_check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        for t in self.inputs:
            if not self.context.set_input_shape(t.name, tuple(t.shape)):
                raise ExecutorError(f"engine {self.name!r}: set_input_shape({t.name!r}, {list(t.shape)}) rejected by the plan")
        return self

    def allocate(self) -> "TensorRTEngine":
        """One device arena laid out by ``plan_buffers`` (two slots per state pair)."""
        if self.context is None:
            self.activate()
        self.arena = cuda_check(self._rt.cudaMalloc(self.plan.total), f"cudaMalloc({self.plan.total} B)")
        cuda_check(self._rt.cudaMemset(self.arena, 0, self.plan.total), "cudaMemset")
        return self

    def address(self, name: str, parity: int | None = None) -> int:
        return int(self.arena) + self.plan.slot(name, self.parity if parity is None else parity).offset

    def _bind(self, parity: int) -> None:
        if self._bound_parity == parity:
            return
        for t in self.inputs + self.outputs:
            if not self.context.set_tensor_address(t.name, self.address(t.name, parity)):
                raise ExecutorError(f"engine {self.name!r}: set_tensor_address({t.name!r}) failed")
        self._bound_parity = parity

    def _h2d(self, name: str, a: np.ndarray, parity: int) -> None:
        rt = self._rt
        cuda_check(
            rt.cudaMemcpyAsync(self.address(name, parity), a.ctypes.data, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream),
            f"cudaMemcpyAsync H2D {name}",
        )

    def _d2h(self, t: TensorSpec, parity: int) -> np.ndarray:
        rt = self._rt
        a = np.empty(t.shape, dtype=t.dtype)
        cuda_check(
            rt.cudaMemcpyAsync(a.ctypes.data, self.address(t.name, parity), a.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream),
            f"cudaMemcpyAsync D2H {t.name}",
        )
        return a

    def _enqueue(self, parity: int) -> None:
        """Run the engine at ``parity`` on the stream (graph replay when captured)."""
        rt = self._rt
        self._bind(parity)
        if not self.use_cuda_graph:
            if not self.context.execute_async_v3(int(self.stream)):
                raise ExecutorError(f"engine {self.name!r}: execute_async_v3 failed (see the TensorRT log)")
            return
        g = self._graphs.get(parity)
        if g is None:
            # first run un-captured flushes deferred setup; then capture one graph for this parity
            if not self.context.execute_async_v3(int(self.stream)):
                raise ExecutorError(f"engine {self.name!r}: execute_async_v3 failed (see the TensorRT log)")
            cuda_check(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
            cuda_check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture")
            ok = self.context.execute_async_v3(int(self.stream))
            graph = cuda_check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            if not ok:
                raise ExecutorError(f"engine {self.name!r}: execute_async_v3 failed during CUDA graph capture")
            g = cuda_check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            cuda_check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
            self._graphs[parity] = g
        cuda_check(rt.cudaGraphLaunch(g, self.stream), "cudaGraphLaunch")

    # ---------------------------------------------------------------- runs
    def _ensure(self) -> None:
        if self.arena is None:
            self.allocate()

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host path: copy every feed in (state into the current parity's slots), run, copy every output out."""
        self._ensure()
        p = self.parity
        for n, a in feeds.items():
            self._h2d(n, a, p)
        self._enqueue(p)
        res = {t.name: self._d2h(t, p) for t in self.outputs}
        cuda_check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return res

    def upload_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy host state (state input name -> array) into the current parity's slots."""
        self._ensure()
        specs = {t.name: t for t in self.inputs}
        for n, a in state.items():
            if n not in self.plan.pair:
                raise ExecutorError(f"engine {self.name!r}: {n!r} is not a state input ({sorted(self.plan.pair)})")
            a = check_feeds(self.name, (specs[n],), {n: a})[n]
            self._h2d(n, a, self.parity)

    def step(self, feeds: Mapping[str, np.ndarray], *, commit: bool, fetch: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Device-resident step: ``feeds`` are the non-state inputs; state stays on the device.

        ``commit=True`` flips the ping-pong parity so the next call reads this call's state outputs.
        Returns the outputs named in ``fetch`` (copied to the host).
        """
        self._ensure()
        non_state = tuple(t for t in self.inputs if t.name not in self.plan.pair)
        feeds = check_feeds(self.name, non_state, feeds)
        p = self.parity
        for n, a in feeds.items():
            self._h2d(n, a, p)
        self._enqueue(p)
        specs = {t.name: t for t in self.outputs}
        res = {n: self._d2h(specs[n], p) for n in fetch}
        cuda_check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        if commit:
            self.parity = 1 - p
        return res

    def close(self) -> None:
        rt = self._rt
        if rt is not None:
            for g in self._graphs.values():
                rt.cudaGraphExecDestroy(g)
            if self.arena is not None:
                rt.cudaFree(self.arena)
            if self.stream is not None:
                rt.cudaStreamDestroy(self.stream)
        self._graphs, self.arena, self.stream = {}, None, None
        self.context = self.engine = None
        self._bound_parity = None
