"""cuda-python access for the TensorRT executor and the CUDA memory pool: import on demand, checked calls."""

from __future__ import annotations

from typing import Any


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
