"""Emulated CUDA device and TensorRT for tests and planning. This is an emulation, not a GPU.

``install()`` puts a fake cuda-python runtime (``cuda``, ``cuda.bindings``, ``cuda.bindings.runtime``) and a
fake ``tensorrt`` / ``tensorrt_rtx`` module into ``sys.modules``, so the project's real TensorRT executor and
runtime run over them unmodified. "Device memory" is host memory behind integer pointers; every copy,
memset and allocation is counted (``handle.device``); engines execute their ONNX with ONNX Runtime on the
CPU. Nothing here measures GPU speed; byte counts and allocation patterns are what it is for::

    from sanawm.emulation import install, build_plan
    with install("tensorrt_rtx", total_memory=32 << 30) as emu:
        plan = build_plan("model.onnx", version=emu.trt.__version__, compute_capability=emu.device.compute_capability)
        ...                                 # import tensorrt_rtx / cuda.bindings.runtime as usual
        print(emu.device.copy_bytes["h2d"], emu.device.peak_bytes)

Torch-free: numpy and onnxruntime at run time; ``build_plan`` (the stand-in builder) also needs ``onnx``.
"""

from __future__ import annotations

import contextlib
import sys
import types
from dataclasses import dataclass
from typing import Iterator

from .cuda import make_runtime
from .device import DEFAULT_TOTAL, Device
from .plan import build_plan, read_plan, spec_plan
from .tensorrt import DEFAULT_VERSION, make_tensorrt

__all__ = ["Device", "Emulation", "build_plan", "install", "read_plan", "spec_plan"]

_MODULES = ("cuda", "cuda.bindings", "cuda.bindings.runtime")


@dataclass
class Emulation:
    """What ``install`` returns: the device (counters) and the two fake modules."""

    device: Device
    runtime: types.ModuleType  # the fake cuda.bindings.runtime
    trt: types.ModuleType  # the fake tensorrt / tensorrt_rtx

    def plan(self, onnx_path, profiles=None, name=None) -> bytes:
        """``build_plan`` for this emulation's TensorRT version and device (a plan it will accept)."""
        return build_plan(onnx_path, profiles, self.trt.__version__, self.device.compute_capability, name)

    def spec_plan(self, name, inputs, outputs, profiles=None, weight_bytes=0, workspace=0) -> bytes:
        """``spec_plan`` (no ONNX; for ``backing=False`` planning) for this emulation's version and device."""
        return spec_plan(name, inputs, outputs, profiles, weight_bytes, workspace, self.trt.__version__,
                         self.device.compute_capability)


@contextlib.contextmanager
def install(backend: str = "tensorrt_rtx", total_memory: int = DEFAULT_TOTAL, backing: bool = True,
            version: str | None = None, compute_capability: tuple[int, int] = (12, 0),
            name: str = "Emulated GPU (sanawm.emulation)") -> Iterator[Emulation]:
    """Install the fakes into ``sys.modules`` for the ``with`` block; the originals come back on exit."""
    if backend not in DEFAULT_VERSION:
        raise ValueError(f"unknown backend {backend!r}; choose 'tensorrt' or 'tensorrt_rtx'")
    device = Device(total_memory, backing, name, compute_capability)
    runtime = make_runtime(device)
    trt = make_tensorrt(runtime, backend, version)
    bindings = types.ModuleType("cuda.bindings", "Emulated cuda.bindings (sanawm.emulation)")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda", "Emulated cuda-python (sanawm.emulation)")
    cuda.bindings = bindings
    cuda.__path__ = []  # a package, so `import cuda.bindings.runtime` resolves through sys.modules
    bindings.__path__ = []
    fakes = dict(zip(_MODULES, (cuda, bindings, runtime)))
    fakes[backend] = trt
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        yield Emulation(device, runtime, trt)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
