"""Loading a bundle for one backend: every check and every device allocation before any output exists.

``Runtime.load`` delegates here. For TensorRT / TensorRT-RTX (the demoDiffusion way): the machine's library
version and GPU are detected and every plan is checked against them (a plan built for another GPU or version
is refused with the rebuild command), every engine is deserialized (weights go to the device once), one
activation arena sized for the largest engine is allocated and shared by all of them (they run one after
another on one stream), and the contexts are created. ONNX Runtime CPU sessions work on host memory; ONNX
Runtime on the CUDA execution provider (onnxruntime-gpu) gets the same ``CudaMemory`` pools TensorRT uses.
Sessions then allocate their state pools in the same memory when they start, before a caller opens a file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..bundle import MANIFEST_NAME, PLAN_BACKENDS


def bundle_id(bundle_dir) -> str:
    """Identity of a bundle: the sha256 of its manifest (which names every file's sha256)."""
    return hashlib.sha256((Path(bundle_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def default_runtime_cache_dir(ident: str) -> Path:
    """Where TensorRT-RTX keeps its JIT-compiled kernels for a bundle (one file per engine and GPU)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sanawm" / "runtime-cache" / ident[:16]


def open_bundle(bundle_dir, backend: str, verify: bool = False):
    """The validated bundle and, for plan backends, this machine's ``BackendEnv`` (checked against the plans).
    ``verify``: also re-hash every file (else sizes, paths and external-data locations only; see ``Bundle.open``)."""
    from ..bundle import Bundle

    if backend not in PLAN_BACKENDS:
        return Bundle.open(bundle_dir, backends=[backend], verify_hashes=verify), None
    from ..engines.tensorrt import detect_environment

    env = detect_environment(backend)
    return Bundle.open(bundle_dir, backends=[backend], environment=env, verify_hashes=verify), env


def plan_options(names, backend: str, env, ident: str, options: dict) -> dict[str, dict]:
    """Per-engine executor options for plan backends: the TensorRT-RTX runtime cache file of each engine."""
    out = {n: {} for n in names}
    if backend != "tensorrt_rtx":
        return out
    cache_dir = Path(options.pop("runtime_cache_dir", None) or default_runtime_cache_dir(ident))
    cc = env.compute_capability if env is not None else "unknown"
    for n in names:
        out[n]["runtime_cache"] = cache_dir / f"{n}.{cc}.cache"
    return out


def activate_on_device(executors: dict, source: str):
    """Deserialize every plan, allocate the shared activation arena, create the contexts; returns the
    ``CudaMemory`` the sessions' pools will live in. Too little device memory fails here, by name."""
    from ..engines.cuda_memory import CudaMemory
    from ..engines.tensorrt.cuda import CudaError

    memory = CudaMemory()
    try:
        for ex in executors.values():
            ex.load()
        need = max(ex.workspace_bytes for ex in executors.values())
        free, total = memory.free_bytes()
        if need > free:
            raise MemoryError(
                f"bundle {source}: the engines' weights leave {free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB free on "
                f"the GPU, and their activations need {need / 2**30:.2f} GiB more; rebuild the large engines with "
                "`sanawm-export ... --weight-streaming` and pass a weight-streaming budget, or use a larger GPU"
            )
        arena = memory.alloc_bytes("activations", need)
        for ex in executors.values():
            ex.activate(memory, arena, need)
    except CudaError as e:
        memory.release()
        raise MemoryError(f"bundle {source}: loading the engines on the GPU failed ({e}); free GPU memory or "
                          "rebuild the large engines with `sanawm-export ... --weight-streaming`") from None
    except BaseException:
        memory.release()
        raise
    return memory


def onnxruntime_memory(executors: dict):
    """The memory ONNX Runtime sessions' pools live in: ``CudaMemory`` when the engines run on the CUDA execution
    provider (their buffers are bound by device pointer), else None (host memory)."""
    kinds = {getattr(ex, "memory_kind", "host") for ex in executors.values()}
    if kinds == {"host"}:
        return None
    if len(kinds) > 1:
        raise ValueError("ONNX Runtime engines of one runtime must all run on the CPU or all on CUDA; pass one device")
    from ..engines.cuda_memory import CudaMemory

    return CudaMemory()
