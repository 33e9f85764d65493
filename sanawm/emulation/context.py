"""The emulated TensorRT execution context: shapes, addresses, context memory, execute_async_v3.

Rules kept from TensorRT (each a bug in the caller when broken):
- every input shape set inside the active profile, and every I/O tensor bound, before execute (else False);
- a USER_MANAGED context needs its device memory set, large enough for the active profile (else False);
- no output may overlap an input or another output (TensorRT forbids aliasing): a ``ValueError``;
- an address that is not inside a live device allocation fails the execute (False) or the graph launch.
A capturing stream records the execute with the addresses and shapes of that moment; launches replay them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .device import ALIGN
from .tensorrt import CudaGraphStrategy, ICudaEngine, IRuntimeConfig, Logger, Strategy, TensorIOMode, np_dtype


def _resolve(dim, known: dict) -> int:
    """A plan dim at the set input shapes: an int, a symbol (``n``), or a product of symbols and integers
    (``n*880``, as sanawm's contracts name token axes); -1 while a symbol is unknown."""
    if isinstance(dim, int):
        return dim
    if dim in known:
        return known[dim]
    value = 1
    for f in str(dim).split("*"):
        f = f.strip()
        if f.isdigit():
            value *= int(f)
        elif f in known:
            value *= known[f]
        else:
            return -1
    return value


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, config: IRuntimeConfig):
        self.engine, self._config = engine, config
        self._cuda, self._dev = engine._cuda, engine._cuda.device
        self._strategy = config.get_execution_context_allocation_strategy()
        self._profile = 0
        self._shapes: dict[str, tuple] = {}
        self._addr: dict[str, int] = {}
        self._mem: tuple[int, int] | None = None  # (ptr, size) of the activation memory
        self._owned = 0  # memory this context allocated itself (STATIC / ON_PROFILE_CHANGE)
        self._compiled: set[str] = set()  # JIT keys when no runtime cache is set (TensorRT-RTX)
        self._graphs: set[tuple] = set()  # internal whole-graph captures (TensorRT-RTX strategy)
        self.name = ""

    # ------------------------------------------------------------- memory
    def _allocate(self, profile: int) -> bool:
        if self._strategy == Strategy.USER_MANAGED:
            return True
        size = (self.engine.get_device_memory_size_for_profile_v2(profile)
                if self._strategy == Strategy.ON_PROFILE_CHANGE else self.engine.device_memory_size_v2)
        if self._owned:
            self._cuda.cudaFree(self._owned)
            self._owned, self._mem = 0, None
        err, ptr = self._cuda.cudaMalloc(size)
        if int(err) != 0:
            self._log(f"could not allocate {size} B of context memory ({err.name})")
            return False
        self._owned, self._mem = ptr, (ptr, size)
        return True

    def __del__(self):
        if getattr(self, "_owned", 0):
            try:
                self._cuda.cudaFree(self._owned)
            except Exception:  # noqa: BLE001 - interpreter shutdown; the emulated device goes with it
                pass
            self._owned = 0

    def set_device_memory(self, ptr: int, size: int) -> None:
        if self._strategy != Strategy.USER_MANAGED:
            raise ValueError("set_device_memory needs a context created with ExecutionContextAllocationStrategy.USER_MANAGED")
        self._mem = (int(ptr), int(size))

    @property
    def device_memory(self):
        return self._mem[0] if self._mem else 0

    @device_memory.setter
    def device_memory(self, ptr: int) -> None:
        self.set_device_memory(ptr, self.engine.get_device_memory_size_for_profile_v2(self._profile))

    def update_device_memory_size_for_shapes(self) -> int:
        return self.engine.get_device_memory_size_for_profile_v2(self._profile)

    def get_runtime_config(self) -> IRuntimeConfig:
        return self._config

    # ------------------------------------------------------------- shapes / addresses
    @property
    def active_optimization_profile(self) -> int:
        return self._profile

    def set_optimization_profile_async(self, index: int, stream: Any) -> bool:
        if not 0 <= int(index) < self.engine.num_optimization_profiles:
            self._log(f"optimization profile {index} does not exist ({self.engine.num_optimization_profiles} in the plan)")
            return False
        if int(index) != self._profile:
            self._profile, self._shapes = int(index), {}
            if self._strategy == Strategy.ON_PROFILE_CHANGE and not self._allocate(self._profile):
                return False
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            self._log(f"set_input_shape: {name!r} is not an input")
            return False
        shape = tuple(int(x) for x in shape)
        mn, _, mx = self.engine.get_tensor_profile_shape(name, self._profile)
        if len(shape) != len(mn) or any(not a <= s <= b for a, s, b in zip(mn, shape, mx)):
            self._log(f"set_input_shape: {name!r} {list(shape)} is outside profile {self._profile} "
                      f"(min {list(mn)}, max {list(mx)})")
            return False
        self._shapes[name] = shape
        return True

    def _dims(self) -> dict[str, int]:
        """Symbolic dim name -> value, read off the input shapes set so far."""
        known = {}
        for n, shape in self._shapes.items():
            for d, v in zip(self.engine._io[n]["dims"], shape):
                if isinstance(d, str):
                    known[d] = v
        return known

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self._shapes:
            return self._shapes[name]
        known = self._dims()
        return tuple(_resolve(d, known) for d in self.engine._io[name]["dims"])

    @property
    def all_binding_shapes_specified(self) -> bool:
        return not self.infer_shapes()

    def infer_shapes(self) -> list[str]:
        """Inputs whose shape is still unset (TensorRT returns the names it cannot infer)."""
        return [n for n in self.engine._order if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT and n not in self._shapes]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine._io:
            self._log(f"set_tensor_address: {name!r} is not an I/O tensor of {self.engine.name!r}")
            return False
        self._addr[name] = int(ptr)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addr.get(name, 0)

    def is_stream_capturable(self, stream: Any) -> bool:
        return True  # emulated plans have no data-dependent shapes or on-device control flow

    # ------------------------------------------------------------- execute
    def _log(self, msg: str) -> None:
        self.engine._runtime.logger.log(Logger.ERROR, f"{self.engine.name}: {msg}")

    def _nbytes(self, name: str, shape) -> int:
        return int(np.prod(shape, dtype=np.int64)) * np_dtype(self.engine.get_tensor_dtype(name)).itemsize

    def _check_aliasing(self, addr: dict, sizes: dict) -> None:
        outs = [n for n in self.engine._order if self.engine.get_tensor_mode(n) == TensorIOMode.OUTPUT]
        for o in outs:
            for n in self.engine._order:
                if n == o or sizes.get(n, 0) <= 0 or sizes.get(o, 0) <= 0:
                    continue
                if addr[o] < addr[n] + sizes[n] and addr[n] < addr[o] + sizes[o]:
                    raise ValueError(f"engine {self.engine.name!r}: output {o!r} overlaps {n!r} at the bound "
                                     "addresses; TensorRT forbids aliased I/O (bind separate buffers, e.g. ping-pong)")

    def execute_async_v3(self, stream_handle: Any) -> bool:
        missing = self.infer_shapes()
        unbound = [n for n in self.engine._order if n not in self._addr]
        if missing or unbound:
            self._log(f"execute_async_v3: input shapes not set {missing}, addresses not set {unbound}")
            return False
        need = self.engine.get_device_memory_size_for_profile_v2(self._profile)
        if self._mem is None or self._mem[1] < need or (need and self._dev.region(self._mem[0], need) is None):
            self._log(f"execute_async_v3: context memory missing or smaller than {need} B (USER_MANAGED: set device_memory)")
            return False
        if self._mem[0] % ALIGN:
            self._log(f"execute_async_v3: context memory at {self._mem[0]:#x} is not {ALIGN}-byte aligned")
            return False
        addr, shapes = dict(self._addr), dict(self._shapes)
        known = self._dims()
        sizes = {n: self._nbytes(n, self.get_tensor_shape(n)) for n in self.engine._order
                 if -1 not in self.get_tensor_shape(n)}
        self._check_aliasing(addr, sizes)
        key = f"{self.engine.name}|p{self._profile}|{sorted(shapes.items())}"
        err = self._dev.submit(stream_handle, "trt_execute", lambda: self._run(addr, shapes, known, key))
        return int(err) == 0

    def _run(self, addr: dict, shapes: dict, known: dict, key: str):
        """The engine's work on the stream: read inputs at ``addr``, run ONNX Runtime, write outputs."""
        from .device import OK, E

        dev, eng = self._dev, self.engine
        cache = self._config.get_runtime_cache()
        compiled = cache.keys if cache is not None else self._compiled
        if key not in compiled:  # TensorRT-RTX JIT-compiles kernels for a new shape, once per cache
            compiled.add(key)
            dev.note("trt_jit_compile", eng.name, key)
        if self._config.cuda_graph_strategy == CudaGraphStrategy.WHOLE_GRAPH_CAPTURE:
            g = (key, tuple(sorted(addr.items())))
            dev.note("trt_graph_replay" if g in self._graphs else "trt_graph_capture", eng.name)
            self._graphs.add(g)
        ins = [n for n in eng._order if eng.get_tensor_mode(n) == TensorIOMode.INPUT]
        for n in eng._order:
            shape = shapes.get(n) or tuple(_resolve(d, known) for d in eng._io[n]["dims"])
            if -1 not in shape and dev.region(addr[n], self._nbytes(n, shape)) is None:
                self._log(f"{n!r} at {addr[n]:#x} is not inside a live device allocation of {self._nbytes(n, shape)} B")
                return E.cudaErrorInvalidValue
        dev.note("trt_execute", eng.name, self._profile)
        if not dev.backing:
            return OK
        if eng._plan["onnx"] is None:
            self._log("this plan has no ONNX graph (spec_plan): it executes only on a backing=False device")
            return E.cudaErrorInvalidValue
        feeds = {}
        for n in ins:
            dt = np_dtype(eng.get_tensor_dtype(n))
            feeds[n] = dev.view(addr[n], self._nbytes(n, shapes[n])).view(dt).reshape(shapes[n]).copy()
        outs = eng._ort().run(None, feeds)
        names = [o.name for o in eng._ort().get_outputs()]
        self._check_aliasing(addr, {**{n: a.nbytes for n, a in feeds.items()},
                                    **{n: np.asarray(o).nbytes for n, o in zip(names, outs)}})
        for n, o in zip(names, outs):
            o = np.ascontiguousarray(o, dtype=np_dtype(eng.get_tensor_dtype(n)))
            if dev.region(addr[n], o.nbytes) is None:
                self._log(f"output {n!r} ({o.nbytes} B) does not fit at {addr[n]:#x}")
                return E.cudaErrorInvalidValue
            dev.view(addr[n], o.nbytes)[:] = o.reshape(-1).view(np.uint8)
        return OK
