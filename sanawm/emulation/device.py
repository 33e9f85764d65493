"""The emulated GPU behind sanawm.emulation's fake cuda-python: host memory behind integer "device" pointers.

Same function names and ``(err, *values)`` return tuples as cuda-python, so runtime code written for a GPU
runs over it unchanged. It is a test double, not a GPU: nothing is accelerated and nothing is asynchronous.

- Device pointers live in ``[DEVICE_BASE, DEVICE_END)`` (2**52 and up), far above any x86-64 user-space host
  address (< 2**47), so a pointer's range says whether it is host or device. Host pointers are real host
  addresses (``ndarray.ctypes.data``) read and written with ``ctypes.memmove``.
- Addresses are never reused and allocations are separated by a gap, so an out-of-bounds or freed pointer is
  an error return (``cudaErrorInvalidValue``), never a write into a neighbour.
- New device memory is filled with ``UNINIT_BYTE`` (not zero, as on a GPU), so a missing memset shows.
- Stream work runs at once, in call order, except while the stream is capturing: then it is recorded into the
  graph and runs only on ``cudaGraphLaunch``, with the addresses frozen at capture (as on a GPU). Allocation
  or synchronisation while a capture is active is ``cudaErrorStreamCaptureUnsupported`` and invalidates it.
- ``backing=False``: allocations get addresses and are counted but hold no memory; copies only count.
"""

from __future__ import annotations

import bisect
import ctypes
import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

DEVICE_BASE = 1 << 52
DEVICE_END = 1 << 53
ALIGN = 256  # cudaMalloc's alignment
GUARD = 1 << 16  # gap between allocations, so running off one never lands in the next
UNINIT_BYTE = 0xCD
DEFAULT_TOTAL = 32 << 30  # an RTX 5090


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorNotReady = 600
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureUnmatched = 903
    cudaErrorStreamCaptureImplicit = 906


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


E = cudaError_t
OK = E.cudaSuccess
DIRECTIONS = ("h2d", "d2h", "d2d", "h2h")
_KIND_DIR = {1: "h2d", 2: "d2h", 3: "d2d", 0: "h2h"}


@dataclass
class cudaDeviceProp:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int
    multiProcessorCount: int = 1


@dataclass
class _Alloc:
    base: int
    size: int
    mem: np.ndarray | None  # None when the device has no backing


@dataclass
class _Graph:
    ops: list = field(default_factory=list)  # (description, fn() -> cudaError_t)


@dataclass
class _Stream:
    flags: int
    capture: _Graph | None = None
    invalidated: bool = False


class Device:
    """The emulated GPU: memory, streams, graphs and the counters tests read.

    Counters: ``copy_bytes`` / ``copy_calls`` per direction (h2d, d2h, d2d, h2h), ``memset_bytes`` /
    ``memset_calls``, ``pageable_bytes`` (h2d / d2h bytes not staged in pinned memory), ``alloc_calls`` / ``alloc_bytes`` (cumulative cudaMalloc), ``free_calls``,
    ``live_bytes`` / ``peak_bytes``, ``pinned_bytes`` (live cudaMallocHost), ``graph_launches``,
    ``events`` (a Counter of anything else noted, e.g. TensorRT executes), and ``log``: one tuple per call
    that did work, ``(what, details...)``. ``reset()`` zeroes them (memory stays allocated).
    """

    def __init__(self, total_memory: int = DEFAULT_TOTAL, backing: bool = True, name: str = "Emulated GPU",
                 compute_capability: tuple[int, int] = (12, 0)):
        self.total_memory, self.backing, self.name = int(total_memory), bool(backing), name
        self.compute_capability = tuple(compute_capability)
        self._allocs: dict[int, _Alloc] = {}
        self._bases: list[int] = []
        self._next = DEVICE_BASE
        self._host: dict[int, np.ndarray] = {}  # pinned buffers kept alive by address
        self.streams: dict[int, _Stream] = {0: _Stream(0)}  # 0: the legacy default stream
        self.graphs: dict[int, _Graph] = {}
        self.execs: dict[int, _Graph] = {}
        self.event_ids: set[int] = set()
        self._handle = 0x1000
        self.live_bytes = 0
        self.reset()

    def reset(self) -> None:
        self.copy_bytes = dict.fromkeys(DIRECTIONS, 0)
        self.copy_calls = dict.fromkeys(DIRECTIONS, 0)
        self.memset_bytes = self.memset_calls = 0
        self.pageable_bytes = 0  # h2d / d2h bytes whose host side was not from cudaMallocHost
        self.alloc_calls = self.alloc_bytes = self.free_calls = 0
        self.peak_bytes = self.live_bytes
        self.graph_launches = 0
        self.events: Counter = Counter()
        self.log: list[tuple] = []

    def note(self, what: str, *details: Any) -> None:
        """Record something done on the device (also used by the emulated TensorRT)."""
        self.events[what] += 1
        self.log.append((what, *details))

    @property
    def pinned_bytes(self) -> int:
        return sum(a.nbytes for a in self._host.values())

    def new_handle(self) -> int:
        self._handle += 1
        return self._handle

    # ------------------------------------------------------------------ memory
    @staticmethod
    def is_device(ptr: int) -> bool:
        return DEVICE_BASE <= int(ptr) < DEVICE_END

    def malloc(self, size: int) -> tuple[E, int]:
        size = int(size)
        if size < 0:
            return E.cudaErrorInvalidValue, 0
        if size == 0:
            return OK, 0
        rounded = -(-size // ALIGN) * ALIGN
        if self.live_bytes + rounded > self.total_memory:
            self.note("malloc_failed", size)
            return E.cudaErrorMemoryAllocation, 0
        base, self._next = self._next, self._next + rounded + GUARD
        mem = np.full(size, UNINIT_BYTE, np.uint8) if self.backing else None
        self._allocs[base] = _Alloc(base, size, mem)
        self._bases.append(base)  # addresses only grow, so the list stays sorted
        self.live_bytes += rounded
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.alloc_calls += 1
        self.alloc_bytes += size
        self.note("malloc", size, base)
        return OK, base

    def free(self, ptr: int) -> E:
        ptr = int(ptr)
        if ptr == 0:
            return OK
        a = self._allocs.pop(ptr, None)
        if a is None:
            return E.cudaErrorInvalidDevicePointer
        del self._bases[bisect.bisect_left(self._bases, ptr)]
        self.live_bytes -= -(-a.size // ALIGN) * ALIGN
        self.free_calls += 1
        self.note("free", ptr)
        return OK

    def region(self, ptr: int, n: int) -> _Alloc | None:
        """The live allocation holding ``[ptr, ptr + n)``, or None."""
        ptr, n = int(ptr), int(n)
        i = bisect.bisect_right(self._bases, ptr) - 1
        if i < 0 or n < 0:
            return None
        a = self._allocs[self._bases[i]]
        return a if ptr + n <= a.base + a.size else None

    def view(self, ptr: int, n: int) -> np.ndarray:
        """The bytes at ``[ptr, ptr + n)`` as a writable uint8 array (backing devices only)."""
        a = self.region(ptr, n)
        if a is None or a.mem is None:
            raise ValueError(f"emulated device: no backed allocation holds {n} B at {int(ptr):#x}")
        off = int(ptr) - a.base
        return a.mem[off:off + int(n)]

    def malloc_host(self, size: int) -> tuple[E, int]:
        buf = np.empty(max(int(size), 1), np.uint8)
        ptr = buf.ctypes.data
        self._host[ptr] = buf
        self.note("malloc_host", int(size), ptr)
        return OK, ptr

    def is_pinned(self, ptr: int, n: int) -> bool:
        return any(p <= int(ptr) and int(ptr) + int(n) <= p + b.nbytes for p, b in self._host.items())

    def free_host(self, ptr: int) -> E:
        return OK if self._host.pop(int(ptr), None) is not None else E.cudaErrorInvalidValue

    # ---------------------------------------------------------- copy / memset
    def check_copy(self, dst: int, src: int, n: int, kind: int) -> tuple[E, str]:
        """Validate a copy; returns (error, direction)."""
        dst, src, n = int(dst), int(src), int(n)
        if n < 0 or dst == 0 or src == 0:
            return E.cudaErrorInvalidValue, ""
        dev_dst, dev_src = self.is_device(dst), self.is_device(src)
        d = ("d" if dev_src else "h") + "2" + ("d" if dev_dst else "h")
        if int(kind) != cudaMemcpyKind.cudaMemcpyDefault and _KIND_DIR.get(int(kind)) != d:
            return E.cudaErrorInvalidValue, ""  # the pointers contradict the stated direction
        for p, dev in ((dst, dev_dst), (src, dev_src)):
            if dev and self.region(p, n) is None:
                return E.cudaErrorInvalidValue, ""
        return OK, d

    def copy(self, dst: int, src: int, n: int, d: str) -> E:
        dst, src, n = int(dst), int(src), int(n)
        if "d" in d and any(self.is_device(p) and self.region(p, n) is None for p in (dst, src)):
            return E.cudaErrorInvalidValue  # freed between capture and launch
        if self.backing or d == "h2h":
            dp = self.view(dst, n).ctypes.data if self.is_device(dst) else dst
            sp = self.view(src, n).ctypes.data if self.is_device(src) else src
            ctypes.memmove(dp, sp, n)
        self.copy_bytes[d] += n
        if d in ("h2d", "d2h") and not self.is_pinned(src if d == "h2d" else dst, n):
            self.pageable_bytes += n
        self.copy_calls[d] += 1
        self.note("memcpy", d, n, dst, src)
        return OK

    def memset(self, ptr: int, value: int, n: int) -> E:
        if self.region(ptr, n) is None:
            return E.cudaErrorInvalidValue
        if self.backing:
            self.view(ptr, n)[:] = int(value) & 0xFF
        self.memset_bytes += int(n)
        self.memset_calls += 1
        self.note("memset", int(n), int(ptr))
        return OK

    # --------------------------------------------------------- streams / capture
    def capturing(self) -> list[_Stream]:
        return [s for s in self.streams.values() if s.capture is not None]

    def forbid_during_capture(self) -> E:
        """Allocation / sync while any capture is active: an error that also invalidates the capture."""
        active = self.capturing()
        for s in active:
            s.invalidated = True
        return E.cudaErrorStreamCaptureUnsupported if active else OK

    def submit(self, stream: Any, what: str, fn: Callable[[], E]) -> E:
        """Run ``fn`` on ``stream`` now, or record it when the stream is capturing."""
        s = self.streams.get(int(stream or 0))
        if s is None:
            return E.cudaErrorInvalidResourceHandle
        if s.capture is not None:
            s.capture.ops.append((what, fn))
            return OK
        if int(stream or 0) == 0 and self.capturing():
            return self.forbid_during_capture()  # legacy stream work during a global capture
        return fn()

    def launch(self, g: _Graph) -> E:
        self.graph_launches += 1
        self.note("graph_launch", len(g.ops))
        for _, fn in g.ops:
            err = fn()
            if err != OK:
                return err
        return OK
