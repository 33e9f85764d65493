"""Where engine tensors live: one ``Memory`` interface for host memory and CUDA device memory (torch-free).

The runtime owns every carried tensor in a session pool that lives where the engine runs (ARCHITECTURE.md,
"State lives where the engine runs"). A ``Buffer`` is one tensor at a fixed place for the whole session:
a numpy array for ONNX Runtime CPU, a device pointer for TensorRT / TensorRT-RTX. Engines read and write
buffers by binding them (``Executor.run_bound``); what crosses the host boundary goes through
``Memory.upload`` / ``Memory.download`` only, and ``Memory.traffic`` counts it, so a test or a benchmark can
state how many bytes a chunk moves.

Copies between buffers (``Memory.copy``) never cross the host: a device-to-device copy on the engine's
stream, or a host ``memmove`` on the CPU. Every operation is ordered on one stream (the CUDA memory's), so
nothing needs a synchronisation except a download, which returns host data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import TensorSpec, dtype_itemsize


@dataclass
class Traffic:
    """Bytes and calls per direction since the last ``reset`` (what a chunk costs at the host boundary)."""

    h2d_bytes: int = 0
    d2h_bytes: int = 0
    d2d_bytes: int = 0
    h2d_calls: int = 0
    d2h_calls: int = 0
    d2d_calls: int = 0
    allocations: int = 0
    allocated_bytes: int = 0
    by_name: dict = field(default_factory=dict)  # "h2d:<name>" / "d2h:<name>" -> bytes

    def add(self, direction: str, name: str, nbytes: int) -> None:
        setattr(self, f"{direction}_bytes", getattr(self, f"{direction}_bytes") + nbytes)
        setattr(self, f"{direction}_calls", getattr(self, f"{direction}_calls") + 1)
        key = f"{direction}:{name}"
        self.by_name[key] = self.by_name.get(key, 0) + nbytes

    def reset(self) -> None:
        keep = self.allocations, self.allocated_bytes
        self.__init__()
        self.allocations, self.allocated_bytes = keep

    @property
    def host_bytes(self) -> int:
        """Bytes that crossed the host boundary (either direction)."""
        return self.h2d_bytes + self.d2h_bytes


@dataclass
class Buffer:
    """One tensor at a fixed place: ``handle`` is a numpy array (host) or an int device pointer (CUDA)."""

    spec: TensorSpec
    handle: Any
    memory: "Memory"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape)

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.spec.shape, dtype=np.int64)) * dtype_itemsize(self.spec.dtype)

    def address(self) -> int:
        """Where the tensor starts: the device pointer, or the host array's data pointer."""
        if isinstance(self.handle, np.ndarray):
            return int(self.handle.ctypes.data)
        return int(self.handle)

    def view(self, name: str, shape: tuple[int, ...], offset_bytes: int = 0) -> "Buffer":
        """A sub-tensor of this buffer (same dtype) starting ``offset_bytes`` in: no new memory."""
        return self.memory.view(self, name, shape, offset_bytes)


class Memory(ABC):
    """Allocation and host-boundary transfers for one kind of memory. ``traffic`` counts what crosses."""

    kind: str = ""  # "host" or "cuda"

    def __init__(self):
        self.traffic = Traffic()
        self.buffers: list[Buffer] = []

    def alloc(self, name: str, dtype: str, shape, *, zero: bool = True) -> Buffer:
        """A new buffer (zero-filled by default); counted in ``traffic.allocations``."""
        spec = TensorSpec(name, dtype, tuple(int(s) for s in shape))
        buf = Buffer(spec, self._alloc(spec), self)
        if zero:
            self.zero(buf)
        self.traffic.allocations += 1
        self.traffic.allocated_bytes += buf.nbytes
        self.buffers.append(buf)
        return buf

    def alloc_spec(self, spec: TensorSpec, name: str | None = None) -> Buffer:
        return self.alloc(name or spec.name, spec.dtype, spec.shape)

    @abstractmethod
    def _alloc(self, spec: TensorSpec) -> Any: ...

    @abstractmethod
    def view(self, buf: Buffer, name: str, shape, offset_bytes: int = 0) -> Buffer: ...

    @abstractmethod
    def _upload(self, buf: Buffer, array: np.ndarray) -> None: ...

    @abstractmethod
    def _download(self, buf: Buffer) -> np.ndarray: ...

    @abstractmethod
    def _copy(self, dst: Buffer, src: Buffer, nbytes: int) -> None: ...

    @abstractmethod
    def zero(self, buf: Buffer) -> None: ...

    def free(self, buf: Buffer) -> None:
        """Give back one buffer (temporary buffers of a host-convenience call; pools live for the session)."""
        self.buffers = [b for b in self.buffers if b is not buf]
        self._free(buf)

    def _free(self, buf: Buffer) -> None:
        """Backend release of one buffer (host arrays: nothing to do)."""

    def synchronize(self) -> None:
        """Wait for everything enqueued so far (no-op on the host)."""

    def release(self) -> None:
        """Free every buffer this memory allocated."""
        self.buffers = []

    # ------------------------------------------------------------------ counted transfers
    def upload(self, buf: Buffer, array) -> None:
        """Host array -> buffer (checked: dtype converted only when lossless, shape must match)."""
        a = np.asarray(array)
        if a.shape != buf.shape:
            raise ValueError(f"tensor {buf.name!r}: got shape {list(a.shape)}, the buffer holds {list(buf.shape)}")
        if a.dtype != np.dtype(buf.dtype):
            a = a.astype(buf.dtype)
        a = np.ascontiguousarray(a)
        self._upload(buf, a)
        self.traffic.add("h2d", buf.name, a.nbytes)

    def download(self, buf: Buffer) -> np.ndarray:
        """Buffer -> a new host array (waits for the work that writes it)."""
        a = self._download(buf)
        self.traffic.add("d2h", buf.name, a.nbytes)
        return a

    def copy(self, dst: Buffer, src: Buffer) -> None:
        """Buffer -> buffer of the same byte size, without crossing the host."""
        if dst.nbytes != src.nbytes:
            raise ValueError(f"copy {src.name!r} -> {dst.name!r}: {src.nbytes} B into {dst.nbytes} B")
        self._copy(dst, src, src.nbytes)
        self.traffic.add("d2d", dst.name, src.nbytes)


class HostMemory(Memory):
    """Host (numpy) memory: what ONNX Runtime CPU binds. Upload/download are host copies, still counted, so
    the same accounting holds on every backend."""

    kind = "host"

    def _alloc(self, spec: TensorSpec) -> np.ndarray:
        return np.zeros(spec.shape, dtype=spec.dtype)

    def view(self, buf: Buffer, name: str, shape, offset_bytes: int = 0) -> Buffer:
        flat = buf.handle.reshape(-1).view(np.uint8)
        n = int(np.prod(shape, dtype=np.int64)) * buf.handle.itemsize
        if offset_bytes < 0 or offset_bytes + n > flat.size:
            raise ValueError(f"view {name!r} of {buf.name!r}: bytes [{offset_bytes}, {offset_bytes + n}) outside {flat.size}")
        arr = flat[offset_bytes: offset_bytes + n].view(buf.handle.dtype).reshape(shape)
        return Buffer(TensorSpec(name, buf.dtype, tuple(shape)), arr, self)

    def _upload(self, buf: Buffer, array: np.ndarray) -> None:
        np.copyto(buf.handle, array)

    def _download(self, buf: Buffer) -> np.ndarray:
        return np.array(buf.handle, copy=True)

    def _copy(self, dst: Buffer, src: Buffer, nbytes: int) -> None:
        np.copyto(dst.handle.reshape(-1).view(np.uint8), src.handle.reshape(-1).view(np.uint8))

    def zero(self, buf: Buffer) -> None:
        buf.handle[...] = 0
