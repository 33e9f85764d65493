"""CUDA device memory for the session pool, over cuda-python (torch-free).

Every buffer is one ``cudaMalloc`` made when a session starts; everything after that is ordered on one
non-blocking stream: uploads go through a pinned mirror of the buffer (``cudaMallocHost``: the only host
memory a DMA engine reads without an extra driver copy), copies between buffers are device-to-device,
memsets are ``cudaMemsetAsync``. A mirror is rewritten only after the copy that last read it has run (an
event per mirror), so uploads never stall the stream. A download synchronises, since it returns host data.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..spec import TensorSpec
from .memory import Buffer, Memory
from .tensorrt.cuda import cuda_check, cuda_runtime


class CudaMemory(Memory):
    """Device memory on the current CUDA device with one stream (``stream``) shared by its engines."""

    kind = "cuda"

    def __init__(self, stream=None):
        super().__init__()
        self.rt = rt = cuda_runtime()
        self.stream = stream if stream is not None else cuda_check(
            rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self._owns_stream = stream is None
        self._mirrors: dict[int, tuple[int, int, object]] = {}  # device ptr -> (pinned ptr, bytes, event)
        self._allocations: list[int] = []

    # ------------------------------------------------------------------ allocation
    def _alloc(self, spec: TensorSpec) -> int:
        n = max(spec.nbytes, 1)
        ptr = int(cuda_check(self.rt.cudaMalloc(n), f"cudaMalloc({n} B) for {spec.name}"))
        self._allocations.append(ptr)
        return ptr

    def alloc_bytes(self, name: str, nbytes: int) -> int:
        """Raw device bytes (activation arenas); freed with the memory."""
        buf = self.alloc(name, "uint8", (max(int(nbytes), 1),), zero=False)
        return int(buf.handle)

    def view(self, buf: Buffer, name: str, shape, offset_bytes: int = 0) -> Buffer:
        spec = TensorSpec(name, buf.dtype, tuple(int(s) for s in shape))
        if offset_bytes < 0 or offset_bytes + spec.nbytes > buf.nbytes:
            raise ValueError(f"view {name!r} of {buf.name!r}: bytes [{offset_bytes}, {offset_bytes + spec.nbytes}) "
                             f"outside {buf.nbytes}")
        return Buffer(spec, int(buf.handle) + int(offset_bytes), self)

    def _mirror(self, ptr: int, nbytes: int) -> tuple[int, object]:
        """The pinned mirror of device buffer ``ptr`` (made on its first upload), free to overwrite."""
        rt = self.rt
        m = self._mirrors.get(ptr)
        if m is None or m[1] < nbytes:
            if m is not None:
                cuda_check(rt.cudaEventSynchronize(m[2]), "cudaEventSynchronize")
                rt.cudaFreeHost(m[0])
                rt.cudaEventDestroy(m[2])
            pinned = int(cuda_check(rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes} B)"))
            m = (pinned, nbytes, cuda_check(rt.cudaEventCreate(), "cudaEventCreate"))
            self._mirrors[ptr] = m
        else:
            cuda_check(rt.cudaEventSynchronize(m[2]), "cudaEventSynchronize")  # last copy out of it has run
        return m[0], m[2]

    # ------------------------------------------------------------------ transfers
    def _upload(self, buf: Buffer, array: np.ndarray) -> None:
        rt = self.rt
        pinned, event = self._mirror(int(buf.handle), array.nbytes)
        ctypes.memmove(pinned, array.ctypes.data, array.nbytes)
        cuda_check(rt.cudaMemcpyAsync(int(buf.handle), pinned, array.nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), f"upload {buf.name}")
        cuda_check(rt.cudaEventRecord(event, self.stream), "cudaEventRecord")

    def _download(self, buf: Buffer) -> np.ndarray:
        rt = self.rt
        out = np.empty(buf.shape, dtype=buf.dtype)
        pinned, _ = self._mirror(int(buf.handle), out.nbytes)
        cuda_check(rt.cudaMemcpyAsync(pinned, int(buf.handle), out.nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), f"download {buf.name}")
        self.synchronize()
        ctypes.memmove(out.ctypes.data, pinned, out.nbytes)
        return out

    def _copy(self, dst: Buffer, src: Buffer, nbytes: int) -> None:
        rt = self.rt
        cuda_check(rt.cudaMemcpyAsync(int(dst.handle), int(src.handle), nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream), f"copy {src.name} -> {dst.name}")

    def _free(self, buf: Buffer) -> None:
        ptr = int(buf.handle)
        if ptr in self._allocations:
            self.synchronize()  # queued work may still read it
            cuda_check(self.rt.cudaFree(ptr), f"cudaFree {buf.name}")
            self._allocations.remove(ptr)
            m = self._mirrors.pop(ptr, None)
            if m is not None:
                self.rt.cudaFreeHost(m[0])
                self.rt.cudaEventDestroy(m[2])

    def zero(self, buf: Buffer) -> None:
        cuda_check(self.rt.cudaMemsetAsync(int(buf.handle), 0, buf.nbytes, self.stream), f"memset {buf.name}")

    def synchronize(self) -> None:
        cuda_check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free_bytes(self) -> tuple[int, int]:
        """(free, total) device memory now."""
        free, total = cuda_check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)

    def release(self) -> None:
        rt = self.rt
        try:
            self.synchronize()
        finally:
            for ptr in self._allocations:
                rt.cudaFree(ptr)
            for pinned, _, event in self._mirrors.values():
                rt.cudaFreeHost(pinned)
                rt.cudaEventDestroy(event)
            if self._owns_stream and self.stream is not None:
                rt.cudaStreamDestroy(self.stream)
            self._allocations, self._mirrors, self.stream = [], {}, None
            super().release()
