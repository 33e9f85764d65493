"""An emulated TensorRT / TensorRT-RTX Python module whose engines run their ONNX with ONNX Runtime (CPU).

The runtime surface a deployment runtime uses (Runtime, ICudaEngine, IExecutionContext, profiles, tensor
addresses, execute_async_v3, context memory strategies, and for TensorRT-RTX IRuntimeConfig with its runtime
cache and CUDA-graph strategy) over the emulated CUDA device of ``cuda.py``. Plans come from
``plan.build_plan``. Deserializing uploads the plan's weight bytes to the device (cudaMalloc + one
host-to-device copy), so tests can count weights loaded per engine; their content is not used, since
execution reads the ONNX file. execute_async_v3 reads each input at its bound device address, runs ONNX
Runtime, and writes each output at its bound address, all on the given stream (recorded into the graph
when that stream is capturing). Errors go to the Logger's ``messages`` (nothing is printed).
"""

from __future__ import annotations

import enum
import types
from typing import Any

import numpy as np

from .plan import read_plan

DEFAULT_VERSION = {"tensorrt": "10.16.0.72", "tensorrt_rtx": "1.7.1.116"}
_ELEM = {1: "FLOAT", 10: "HALF", 16: "BF16", 7: "INT64", 6: "INT32", 3: "INT8", 2: "UINT8", 9: "BOOL", 17: "FP8"}
_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT64": "int64", "INT32": "int32", "INT8": "int8",
          "UINT8": "uint8", "BOOL": "bool", "BF16": "bfloat16", "FP8": "float8_e4m3fn"}

DataType = enum.Enum("DataType", [(n, i) for i, n in enumerate(
    ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4", "FP4", "E8M0"))])
TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT", start=0)
ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED", start=0)
CudaGraphStrategy = enum.Enum("CudaGraphStrategy", "DISABLED WHOLE_GRAPH_CAPTURE", start=0)
DynamicShapesKernelSpecializationStrategy = enum.Enum("DynamicShapesKernelSpecializationStrategy", "LAZY EAGER NONE", start=0)
Strategy = ExecutionContextAllocationStrategy


def np_dtype(dt: DataType) -> np.dtype:
    name = _NUMPY[dt.name]
    if name in ("bfloat16", "float8_e4m3fn"):
        import ml_dtypes  # onnx's own dependency; only graphs with bf16 / fp8 I/O need it

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


class Logger:
    """Collects messages in ``messages`` instead of printing them."""

    Severity = enum.IntEnum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE", start=0)
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self, min_severity=None):
        self.min_severity = self.WARNING if min_severity is None else min_severity
        self.messages: list[tuple] = []

    def log(self, severity, msg: str) -> None:
        if severity <= self.min_severity:
            self.messages.append((severity, msg))


class IRuntimeCache:
    """TensorRT-RTX's runtime cache: here the set of (engine, profile, shapes) keys already JIT-compiled."""

    def __init__(self):
        self.keys: set[str] = set()

    def serialize(self) -> bytes:
        return "\n".join(sorted(self.keys)).encode()

    def deserialize(self, data: bytes) -> bool:
        self.keys |= {k for k in bytes(data).decode().split("\n") if k}
        return True

    def reset(self) -> None:
        self.keys.clear()


class IRuntimeConfig:
    def __init__(self):
        self._strategy = Strategy.STATIC
        self._cache: IRuntimeCache | None = None
        self.cuda_graph_strategy = CudaGraphStrategy.DISABLED
        self.dynamic_shapes_kernel_specialization_strategy = DynamicShapesKernelSpecializationStrategy.LAZY

    def set_execution_context_allocation_strategy(self, strategy) -> None:
        self._strategy = strategy

    def get_execution_context_allocation_strategy(self):
        return self._strategy

    def create_runtime_cache(self) -> IRuntimeCache:
        return IRuntimeCache()

    def set_runtime_cache(self, cache: IRuntimeCache) -> bool:
        self._cache = cache
        return True

    def get_runtime_cache(self):
        return self._cache


class Runtime:
    _cuda: Any = None  # the emulated cuda.bindings.runtime module (set per installed module)
    _version = ""
    _rtx = False

    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data) -> "ICudaEngine | None":
        plan = read_plan(data)
        dev = self._cuda.device
        if plan is None:
            self.logger.log(Logger.ERROR, "emulated TensorRT: the bytes are not a plan this runtime understands")
            return None
        if plan["version"] != self._version:
            self.logger.log(Logger.ERROR, f"plan built by version {plan['version']}, this runtime is {self._version}")
            return None
        if tuple(plan["compute_capability"]) != dev.compute_capability:
            self.logger.log(Logger.ERROR, f"plan built for compute capability {plan['compute_capability']}, "
                                          f"the device is {list(dev.compute_capability)}")
            return None
        eng = ICudaEngine(self, plan)
        return eng if eng._upload_weights() else None


class ICudaEngine:
    def __init__(self, runtime: Runtime, plan: dict):
        self._runtime, self._plan, self._cuda = runtime, plan, runtime._cuda
        self.name = plan["name"]
        self._io = {t["name"]: t for t in plan["io"]}
        self._order = [t["name"] for t in plan["io"]]
        self._weights = 0
        self._session = None
        self.weight_streaming_budget_v2 = -1
        self.streamable_weights_size = 0  # emulated plans are never built with weight streaming

    def _upload_weights(self) -> bool:
        rt, n = self._cuda, int(self._plan["weight_bytes"])
        err, ptr = rt.cudaMalloc(n)
        if int(err) != 0:
            self._runtime.logger.log(Logger.ERROR, f"{self.name}: cudaMalloc of {n} B of weights failed ({err.name})")
            return False
        self._weights = ptr
        dev = rt.device
        host = np.zeros(n if dev.backing else 1, np.uint8)  # content unused: execution reads the ONNX file
        if n:
            rt.cudaMemcpy(ptr, host.ctypes.data, n, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
        dev.note("trt_weights", self.name, n)
        return True

    def __del__(self):
        if getattr(self, "_weights", 0):
            try:
                self._cuda.cudaFree(self._weights)
            except Exception:  # noqa: BLE001 - interpreter shutdown; the emulated device goes with it
                pass
            self._weights = 0

    # ------------------------------------------------------------------ I/O
    @property
    def num_io_tensors(self) -> int:
        return len(self._order)

    def get_tensor_name(self, i: int) -> str:
        return self._order[i]

    def get_tensor_mode(self, name: str):
        return TensorIOMode[self._io[name]["mode"]] if name in self._io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str):
        return DataType[_ELEM[self._io[name]["elem"]]]

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(d if isinstance(d, int) else -1 for d in self._io[name]["dims"])

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._plan["profiles"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list:
        if self.get_tensor_mode(name) != TensorIOMode.INPUT:
            raise ValueError(f"{name!r} is not an input of engine {self.name!r}")
        return [tuple(s) for s in self._plan["profiles"][profile][name]]

    # --------------------------------------------------------------- memory
    @property
    def device_memory_size_v2(self) -> int:
        return max(self._plan["workspace"])

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        return self._plan["workspace"][profile]

    def get_weight_streaming_automatic_budget(self) -> int:
        return 0

    def create_runtime_config(self) -> IRuntimeConfig:
        if not self._runtime._rtx:
            raise AttributeError("create_runtime_config is TensorRT-RTX API (emulated module is 'tensorrt')")
        return IRuntimeConfig()

    def create_execution_context(self, strategy=None, runtime_config: IRuntimeConfig | None = None):
        """``strategy`` (TensorRT) or a ``runtime_config`` (TensorRT-RTX, also accepted positionally)."""
        config = strategy if isinstance(strategy, IRuntimeConfig) else runtime_config
        if config is None:
            config = IRuntimeConfig()
            config.set_execution_context_allocation_strategy(strategy or Strategy.STATIC)
        from .context import IExecutionContext

        ctx = IExecutionContext(self, config)
        return ctx if ctx._allocate(0) else None

    def _ort(self):
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.log_severity_level = 3
            self._session = ort.InferenceSession(self._plan["onnx"], so, providers=["CPUExecutionProvider"])
        return self._session


def make_tensorrt(cuda_runtime: types.ModuleType, backend: str = "tensorrt_rtx", version: str | None = None) -> types.ModuleType:
    """A module object named ``backend`` whose engines live on ``cuda_runtime.device``."""
    if backend not in DEFAULT_VERSION:
        raise ValueError(f"unknown backend {backend!r}; choose 'tensorrt' or 'tensorrt_rtx'")
    m = types.ModuleType(backend, f"Emulated {backend} (sanawm.emulation): ONNX Runtime on CPU, not a GPU.")
    m.__version__ = version or DEFAULT_VERSION[backend]
    m.Runtime = type("Runtime", (Runtime,), {"_cuda": cuda_runtime, "_version": m.__version__, "_rtx": backend == "tensorrt_rtx"})
    from .context import IExecutionContext

    for obj in (Logger, ICudaEngine, IExecutionContext, DataType, TensorIOMode, ExecutionContextAllocationStrategy):
        setattr(m, obj.__name__, obj)
    if backend == "tensorrt_rtx":
        for obj in (IRuntimeConfig, IRuntimeCache, CudaGraphStrategy, DynamicShapesKernelSpecializationStrategy):
            setattr(m, obj.__name__, obj)
    return m
