"""An emulated ``cuda.bindings.runtime`` (cuda-python) module over an emulated ``Device`` (see device.py).

Same function names and ``(err, *values)`` return tuples as cuda-python, so runtime code written for a GPU
runs over it unchanged. It is a test double, not a GPU.
"""

from __future__ import annotations

import types

from .device import (OK, E, Device, _Graph, _Stream, cudaDeviceProp, cudaError_t, cudaMemcpyKind,
                     cudaStreamCaptureMode, cudaStreamCaptureStatus)


def make_runtime(device: Device) -> types.ModuleType:
    """A module object with cuda-python's runtime names, bound to ``device`` (``module.device``)."""
    m = types.ModuleType("cuda.bindings.runtime", "Emulated cuda.bindings.runtime (sanawm.emulation): not a GPU.")
    dev = device

    def cudaGetErrorName(err):
        try:
            return OK, E(int(err)).name.encode()
        except ValueError:
            return E.cudaErrorInvalidValue, b"cudaErrorUnknown"

    def cudaGetDevice():
        return OK, 0

    def cudaSetDevice(i):
        return (OK,) if int(i) == 0 else (E.cudaErrorInvalidValue,)

    def cudaGetDeviceCount():
        return OK, 1

    def cudaGetDeviceProperties(i):
        if int(i) != 0:
            return E.cudaErrorInvalidValue, None
        major, minor = dev.compute_capability
        return OK, cudaDeviceProp(dev.name.encode(), major, minor, dev.total_memory)

    def cudaMemGetInfo():
        return OK, dev.total_memory - dev.live_bytes, dev.total_memory

    def cudaMalloc(size):
        err = dev.forbid_during_capture()
        return (err, 0) if err != OK else dev.malloc(size)

    def cudaFree(ptr):
        err = dev.forbid_during_capture()
        return (err if err != OK else dev.free(ptr),)

    def cudaMallocHost(size):
        err = dev.forbid_during_capture()
        return (err, 0) if err != OK else dev.malloc_host(size)

    def cudaFreeHost(ptr):
        return (dev.free_host(ptr),)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        err, d = dev.check_copy(dst, src, count, kind)
        if err != OK:
            return (err,)
        host = {"h2d": src, "d2h": dst}.get(d)
        s = dev.streams.get(int(stream or 0))
        if host is not None and s is not None and s.capture is not None and not dev.is_pinned(host, count):
            # pageable host memory cannot be a graph node (and may be gone by the time the graph runs)
            return (dev.forbid_during_capture(),)
        return (dev.submit(stream, "memcpy", lambda: dev.copy(dst, src, count, d)),)

    def cudaMemcpy(dst, src, count, kind):
        err = dev.forbid_during_capture()  # synchronous: implies a device sync
        return (err,) if err != OK else cudaMemcpyAsync(dst, src, count, kind, 0)

    def cudaMemsetAsync(ptr, value, count, stream):
        if dev.region(ptr, count) is None:
            return (E.cudaErrorInvalidValue,)
        return (dev.submit(stream, "memset", lambda: dev.memset(ptr, value, count)),)

    def cudaMemset(ptr, value, count):
        err = dev.forbid_during_capture()
        return (err,) if err != OK else cudaMemsetAsync(ptr, value, count, 0)

    def cudaStreamCreateWithFlags(flags):
        h = dev.new_handle()
        dev.streams[h] = _Stream(int(flags))
        return OK, h

    def cudaStreamCreate():
        return cudaStreamCreateWithFlags(0)

    def cudaStreamDestroy(stream):
        s = dev.streams.get(int(stream))
        if s is None or int(stream) == 0:
            return (E.cudaErrorInvalidResourceHandle,)
        if s.capture is not None:
            return (E.cudaErrorStreamCaptureUnsupported,)
        del dev.streams[int(stream)]
        return (OK,)

    def _sync(stream=None):
        if stream is not None and int(stream) not in dev.streams:
            return (E.cudaErrorInvalidResourceHandle,)
        return (dev.forbid_during_capture(),)  # work already ran in order: nothing to wait for

    def cudaStreamIsCapturing(stream):
        s = dev.streams.get(int(stream or 0))
        if s is None:
            return E.cudaErrorInvalidResourceHandle, None
        st = cudaStreamCaptureStatus
        if s.capture is None:
            return OK, st.cudaStreamCaptureStatusNone
        return OK, st.cudaStreamCaptureStatusInvalidated if s.invalidated else st.cudaStreamCaptureStatusActive

    def cudaStreamBeginCapture(stream, mode):
        s = dev.streams.get(int(stream or 0))
        if s is None or int(stream or 0) == 0:
            return (E.cudaErrorStreamCaptureUnsupported if s else E.cudaErrorInvalidResourceHandle,)
        if s.capture is not None:
            return (E.cudaErrorIllegalState,)
        s.capture, s.invalidated = _Graph(), False
        return (OK,)

    def cudaStreamEndCapture(stream):
        s = dev.streams.get(int(stream or 0))
        if s is None or s.capture is None:
            return E.cudaErrorIllegalState, None
        g, bad = s.capture, s.invalidated
        s.capture, s.invalidated = None, False
        if bad:
            return E.cudaErrorStreamCaptureInvalidated, None
        h = dev.new_handle()
        dev.graphs[h] = g
        dev.note("graph_captured", len(g.ops))
        return OK, h

    def cudaGraphInstantiate(graph, flags=0):
        g = dev.graphs.get(int(graph))
        if g is None:
            return E.cudaErrorInvalidResourceHandle, None
        h = dev.new_handle()
        dev.execs[h] = _Graph(list(g.ops))
        return OK, h

    def cudaGraphLaunch(exec_, stream):
        g = dev.execs.get(int(exec_))
        if g is None:
            return (E.cudaErrorInvalidResourceHandle,)
        return (dev.submit(stream, "graph", lambda: dev.launch(g)),)

    def cudaGraphDestroy(graph):
        return (OK if dev.graphs.pop(int(graph), None) is not None else E.cudaErrorInvalidResourceHandle,)

    def cudaGraphExecDestroy(exec_):
        return (OK if dev.execs.pop(int(exec_), None) is not None else E.cudaErrorInvalidResourceHandle,)

    def cudaEventCreate():
        h = dev.new_handle()
        dev.event_ids.add(h)
        return OK, h

    def cudaEventCreateWithFlags(flags):
        return cudaEventCreate()

    def cudaEventRecord(event, stream):
        if int(event) not in dev.event_ids:
            return (E.cudaErrorInvalidResourceHandle,)
        return (dev.submit(stream, "event", lambda: OK),)  # work is already complete when recorded

    def cudaStreamWaitEvent(stream, event, flags=0):
        if int(event) not in dev.event_ids:
            return (E.cudaErrorInvalidResourceHandle,)
        return (dev.submit(stream, "wait", lambda: OK),)

    def cudaEventSynchronize(event):
        if int(event) not in dev.event_ids:
            return (E.cudaErrorInvalidResourceHandle,)
        return _sync()

    def cudaEventDestroy(event):
        if int(event) not in dev.event_ids:
            return (E.cudaErrorInvalidResourceHandle,)
        dev.event_ids.remove(int(event))
        return (OK,)

    cudaStreamSynchronize = _sync

    def cudaDeviceSynchronize():
        return _sync()

    for k, v in dict(locals()).items():
        if k.startswith("cuda"):
            setattr(m, k, v)
    for cls in (cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode, cudaStreamCaptureStatus, cudaDeviceProp):
        setattr(m, cls.__name__, cls)
    m.cudaStreamDefault, m.cudaStreamNonBlocking = 0, 1
    m.cudaEventDefault, m.cudaEventDisableTiming = 0, 2
    m.cudaStream_t = m.cudaEvent_t = m.cudaGraph_t = m.cudaGraphExec_t = int  # handles are plain ints here
    m.device = device
    return m
