"""A test double of a pointer-addressed pool: host memory handed out as integer addresses, the way
``CudaMemory`` hands out device pointers. ONNX Runtime CPU can bind such addresses (device "cpu"), so the
executor's bind-by-address path (the one onnxruntime-gpu takes with device "cuda") runs for real."""

from __future__ import annotations

import ctypes

import numpy as np

from sanawm.engines.memory import Buffer, Memory
from sanawm.spec import TensorSpec


class HostPointerMemory(Memory):
    kind = "host"  # where the bytes are; handles are ints, as on a device

    def __init__(self):
        super().__init__()
        self._blocks: dict[int, np.ndarray] = {}  # base address -> the array that owns the bytes

    def _alloc(self, spec: TensorSpec) -> int:
        block = np.empty(max(spec.nbytes, 1), np.uint8)
        block.fill(0xCD)  # not zero, like fresh device memory: a missing memset shows
        self._blocks[block.ctypes.data] = block
        return int(block.ctypes.data)

    def view(self, buf: Buffer, name: str, shape, offset_bytes: int = 0) -> Buffer:
        spec = TensorSpec(name, buf.dtype, tuple(shape))
        if offset_bytes < 0 or offset_bytes + spec.nbytes > buf.nbytes:
            raise ValueError(f"view {name!r} of {buf.name!r} outside its {buf.nbytes} B")
        return Buffer(spec, int(buf.handle) + offset_bytes, self)

    def _upload(self, buf: Buffer, array: np.ndarray) -> None:
        ctypes.memmove(int(buf.handle), array.ctypes.data, array.nbytes)

    def _download(self, buf: Buffer) -> np.ndarray:
        out = np.empty(buf.shape, buf.dtype)
        ctypes.memmove(out.ctypes.data, int(buf.handle), buf.nbytes)
        return out

    def _copy(self, dst: Buffer, src: Buffer, nbytes: int) -> None:
        ctypes.memmove(int(dst.handle), int(src.handle), nbytes)

    def zero(self, buf: Buffer) -> None:
        ctypes.memset(int(buf.handle), 0, buf.nbytes)

    def _free(self, buf: Buffer) -> None:
        self._blocks.pop(int(buf.handle), None)

    def release(self) -> None:
        super().release()
        self._blocks = {}
