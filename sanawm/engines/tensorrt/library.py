"""The TensorRT / TensorRT-RTX Python module: import on demand, dtype names, plan I/O checks, machine facts."""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

from ...spec import TensorSpec
from ..base import ExecutorError, MissingBackendError
from .cuda import cuda_check, cuda_runtime

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



def import_trt(backend: str):
    """The TensorRT Python module for ``backend`` ("tensorrt" or "tensorrt_rtx"), imported on demand."""
    if backend not in _TRT_MODULES:
        raise ExecutorError(f"unknown TensorRT backend {backend!r}; choose 'tensorrt' or 'tensorrt_rtx'")
    try:
        return importlib.import_module(_TRT_MODULES[backend])
    except ImportError as e:
        how = "pip install tensorrt-rtx" if backend == "tensorrt_rtx" else "pip install tensorrt (NVIDIA's wheels)"
        raise MissingBackendError(f"backend {backend!r} needs the {_TRT_MODULES[backend]} package ({e}): {how}, or use "
                          "backend 'onnxruntime'") from None


def trt_dtype_name(dt: Any) -> str:
    """numpy dtype name of a TensorRT DataType (``DataType.FLOAT`` -> ``float32``)."""
    key = str(dt).split(".")[-1].upper()
    if key not in _TRT_DTYPES:
        raise ExecutorError(f"TensorRT dtype {dt} has no numpy equivalent in sanawm")
    return _TRT_DTYPES[key]


def _plan_dims(shape: tuple) -> tuple:
    """A manifest shape as the plan reports it: symbolic dims are -1."""
    return tuple(d if isinstance(d, int) else -1 for d in shape)


def check_engine_io(name: str, engine_io: Mapping[str, tuple[str, str, tuple]], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Compare a deserialized engine's I/O {name: (mode, dtype, shape)} with the manifest's specs (a dynamic
    manifest dim must be dynamic, -1, in the plan)."""
    want = {t.name: ("INPUT", t.dtype, _plan_dims(t.shape)) for t in inputs}
    want.update({t.name: ("OUTPUT", t.dtype, _plan_dims(t.shape)) for t in outputs})
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
    from ...bundle.env import BackendEnv

    trt = import_trt(backend)
    rt = cuda_runtime()
    dev = cuda_check(rt.cudaGetDevice(), "cudaGetDevice")
    prop = cuda_check(rt.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    gpu = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return BackendEnv(backend, trt.__version__, f"sm_{prop.major}{prop.minor}", gpu)
