"""Executors for engine bundles (run side; never imports torch).

``load_executor(bundle, engine_name, backend)`` is the one entry point the runtime needs.
"""

from __future__ import annotations

from .base import Executor, ExecutorError, check_feeds

__all__ = ["Executor", "ExecutorError", "check_feeds", "load_executor"]


def load_executor(bundle, engine_name: str, backend: str, **options) -> Executor:
    """An executor for ``engine_name`` of ``bundle`` (a ``sanawm.bundle.Bundle`` or a bundle folder).

    Args:
        backend: "onnxruntime", "tensorrt" or "tensorrt_rtx".
        options: backend options (onnxruntime: ``device``, ``providers``, ``threads``;
            TensorRT: ``use_cuda_graph``).
    """
    from ..bundle import BACKENDS, Bundle

    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle, backends=[backend])
    if backend not in BACKENDS:
        raise ExecutorError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    e = bundle.engine(engine_name)
    path = bundle.path(engine_name, backend)
    if backend == "onnxruntime":
        if e.precision == "nvfp4":  # a BundleError: the user's to fix (one line from the CLIs), like a plan for another GPU
            from ..bundle import BundleError

            raise BundleError(
                f"engine {engine_name!r} is NVFP4 (FP4 weights and activations) and ONNX Runtime cannot run FP4; run "
                "the bundle with backend 'tensorrt_rtx' on an RTX 50 (sm_120) GPU, or re-export with --precision fp8", engine_name
            )
        from .onnxruntime import OnnxRuntimeExecutor

        return OnnxRuntimeExecutor(engine_name, path, e.inputs, e.outputs, e.state_map, profiles=e.profile_dims,
                                   **options)
    from .tensorrt import TensorRTEngine

    return TensorRTEngine(engine_name, path, e.inputs, e.outputs, e.state_map, backend=backend,
                          profiles=e.profile_dims, **options)
