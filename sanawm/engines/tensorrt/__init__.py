"""TensorRT / TensorRT-RTX executor over cuda-python (torch-free, import-safe without a GPU).

One ``TensorRTEngine`` serves both products; the Python module is chosen by backend name (``tensorrt`` ->
``import tensorrt``, ``tensorrt_rtx`` -> ``import tensorrt_rtx``) and imported lazily. Device memory for the
session pool is ``sanawm.engines.cuda_memory.CudaMemory``.
"""

from .cuda import CudaError, cuda_check, cuda_runtime
from .engine import ALIGN, TensorRTEngine
from .library import check_engine_io, detect_environment, import_trt, trt_dtype_name
from .weights import apply_weight_streaming_budget, check_budget_spec, parse_budget

__all__ = [
    "ALIGN",
    "CudaError",
    "TensorRTEngine",
    "apply_weight_streaming_budget",
    "check_budget_spec",
    "check_engine_io",
    "cuda_check",
    "cuda_runtime",
    "detect_environment",
    "import_trt",
    "parse_budget",
    "trt_dtype_name",
]
