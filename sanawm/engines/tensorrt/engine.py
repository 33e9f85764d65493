"""``TensorRTEngine``: one TensorRT or TensorRT-RTX plan, bound to a session pool's device buffers.

Lifecycle (demoDiffusion's ``Engine``; TensorRT-LLM's ``Session``), all of it at ``Runtime.load`` so a bad or
mismatched plan or too little device memory fails before any output is written::

    eng = TensorRTEngine(name, plan, inputs, outputs, state_map, backend="tensorrt_rtx", profiles=...)
    eng.load()                                  # deserialize (weights go to the device once), check I/O + profiles
    arena = memory.alloc_bytes("activations", max(e.workspace_bytes for e in engines))
    eng.activate(memory, arena, size)           # one context per profile, user-managed activation memory
    eng.run_bound(bindings, profile)            # bind addresses, enqueue (CUDA graph replay when captured)

One engine serves every call shape through its optimization profiles; each profile has its own execution
context (contexts share the engine's weights), with its input shapes set once. Engines that never run at the
same time (everything on the runtime's one stream) share one activation arena: the contexts are created
``USER_MANAGED`` and pointed at it. CUDA graphs: on TensorRT-RTX the product's own whole-graph capture
(``IRuntimeConfig.cuda_graph_strategy``) with its runtime cache (JIT-compiled kernels kept in a file, so they
compile once per GPU); on datacenter TensorRT one graph per (profile, bound addresses), captured after one
plain run and replayed after. The pool's addresses never change, so a session captures a handful of graphs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...spec import TensorSpec
from ..base import Executor, ExecutorError
from .cuda import cuda_check
from .library import check_engine_io, import_trt, trt_dtype_name
from .weights import apply_weight_streaming_budget, check_budget_spec

ALIGN = 256  # activation memory alignment TensorRT requires for user-managed context memory


class TensorRTEngine(Executor):
    """A TensorRT or TensorRT-RTX plan whose tensors are the session pool's device buffers."""

    memory_kind = "cuda"

    def __init__(
        self,
        name: str,
        plan_path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        state_map: dict | None = None,
        *,
        backend: str = "tensorrt",
        profiles: Mapping[str, dict] | None = None,
        use_cuda_graph: bool = True,
        weight_streaming_budget: int | float | str | None = None,
        runtime_cache: str | Path | None = None,
    ):
        """``profiles``: profile name -> symbolic dim sizes, in the plan's profile order (the manifest's).
        ``weight_streaming_budget``: device bytes (int), a fraction (float in (0, 1]) or ``"auto"`` of the
        plan's streamable weights kept resident, for plans built with ``--weight-streaming`` (None: all).
        ``runtime_cache`` (TensorRT-RTX): file of JIT-compiled kernels, read at activation, written at close."""
        super().__init__(name, tuple(inputs), tuple(outputs), state_map, profiles)
        if backend not in ("tensorrt", "tensorrt_rtx"):
            raise ExecutorError(f"unknown TensorRT backend {backend!r}; choose 'tensorrt' or 'tensorrt_rtx'")
        check_budget_spec(name, weight_streaming_budget)
        self.backend, self.plan_path = backend, Path(plan_path)
        self.use_cuda_graph = use_cuda_graph
        self.weight_streaming_budget = weight_streaming_budget
        self.weight_streaming_bytes: int | None = None
        self.runtime_cache_path = Path(runtime_cache) if runtime_cache else None
        self._trt = self._runtime = self.engine = None
        self.memory = None
        self.contexts: dict[str | None, Any] = {}
        self._bound: dict[str | None, tuple] = {}
        self._graphs: dict[tuple, Any] = {}
        self._runtime_cache = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def profile_names(self) -> list[str | None]:
        return list(self.profiles) or [None]

    def load(self) -> "TensorRTEngine":
        """Deserialize the plan (its weights go to the device here, once) and check it against the manifest."""
        self._trt = trt = import_trt(self.backend)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise ExecutorError(
                f"engine {self.name!r}: {self.backend} {getattr(trt, '__version__', '?')} could not deserialize "
                f"{self.plan_path} (built by another TensorRT version, for another GPU, or out of device memory); "
                f"rebuild it on this machine with `sanawm-export ... --backends {self.backend} --engines {self.name}`"
            )
        e = self.engine
        io = {}
        for i in range(e.num_io_tensors):
            n = e.get_tensor_name(i)
            mode = "INPUT" if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT else "OUTPUT"
            io[n] = (mode, trt_dtype_name(e.get_tensor_dtype(n)), tuple(e.get_tensor_shape(n)))
        check_engine_io(self.name, io, self.inputs, self.outputs)
        if self.profiles:
            if e.num_optimization_profiles < len(self.profiles):
                raise ExecutorError(f"engine {self.name!r}: plan has {e.num_optimization_profiles} optimization "
                                    f"profiles, the manifest names {list(self.profiles)}; rebuild it")
            for idx, prof in enumerate(self.profiles):
                for t in self.contract(prof).inputs:
                    if not next(x for x in self.inputs if x.name == t.name).is_dynamic:
                        continue
                    got = [tuple(int(d) for d in s) for s in e.get_tensor_profile_shape(t.name, idx)]
                    if any(s != t.shape for s in got):
                        raise ExecutorError(f"engine {self.name!r}: profile {idx} ({prof}) of the plan has {t.name!r} "
                                            f"{got} (min/opt/max), the manifest says {list(t.shape)}; rebuild it")
        return self

    @property
    def workspace_bytes(self) -> int:
        """Activation memory the engine needs at its largest profile (what the shared arena must hold)."""
        e = self.engine
        if self.profiles and hasattr(e, "get_device_memory_size_for_profile_v2"):
            need = max(int(e.get_device_memory_size_for_profile_v2(i)) for i in range(len(self.profiles)))
        else:
            need = int(e.device_memory_size_v2)
        return (need + ALIGN - 1) // ALIGN * ALIGN

    def activate(self, memory, arena: int, arena_bytes: int) -> "TensorRTEngine":
        """One execution context per profile on ``memory``'s stream, using the shared activation ``arena``."""
        if self.engine is None:
            self.load()
        if arena_bytes < self.workspace_bytes:
            raise ExecutorError(f"engine {self.name!r}: activation arena of {arena_bytes} B < {self.workspace_bytes} B needed")
        trt, e = self._trt, self.engine
        self.memory = memory
        if self.weight_streaming_budget is not None:
            self.weight_streaming_bytes = apply_weight_streaming_budget(self.name, e, self.weight_streaming_budget)
        for idx, prof in enumerate(self.profile_names):
            ctx = self._new_context()
            if ctx is None:
                raise ExecutorError(f"engine {self.name!r}: create_execution_context failed (out of device memory?)")
            if prof is not None and not ctx.set_optimization_profile_async(idx, int(memory.stream)):
                raise ExecutorError(f"engine {self.name!r}: set_optimization_profile_async({idx}) rejected")
            for t in self.contract(prof).inputs:
                if not ctx.set_input_shape(t.name, tuple(t.shape)):
                    raise ExecutorError(f"engine {self.name!r}: set_input_shape({t.name!r}, {list(t.shape)}) rejected "
                                        f"by the plan at profile {prof!r}; rebuild it")
            ctx.set_device_memory(int(arena), int(arena_bytes))
            self.contexts[prof] = ctx
        return self

    def _new_context(self):
        trt, e = self._trt, self.engine
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        if self.backend != "tensorrt_rtx":
            return e.create_execution_context(strategy)
        rc = e.create_runtime_config()
        rc.set_execution_context_allocation_strategy(strategy)
        if self._runtime_cache is None:
            self._runtime_cache = rc.create_runtime_cache()
            path = self.runtime_cache_path
            if path is not None and path.is_file():
                self._runtime_cache.deserialize(path.read_bytes())
        rc.set_runtime_cache(self._runtime_cache)
        if self.use_cuda_graph:
            rc.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        return e.create_execution_context(rc)

    # ----------------------------------------------------------------- runs
    def run_bound(self, bindings: Mapping, profile: str | None = None) -> None:
        """Bind the pool buffers and enqueue the engine on the memory's stream (returns before it finishes)."""
        if profile not in self.contexts:
            raise ExecutorError(f"engine {self.name!r}: not activated for profile {profile!r} (profiles {self.profile_names})")
        ctx = self.contexts[profile]
        io = self.contract(profile)
        key = tuple((t.name, bindings[t.name].address()) for t in io.inputs + io.outputs)
        if self._bound.get(profile) != key:
            for t in io.inputs + io.outputs:
                buf = bindings[t.name]
                if buf.memory is not self.memory or tuple(buf.shape) != tuple(t.shape) or buf.dtype != t.dtype:
                    raise ExecutorError(f"engine {self.name!r}: {t.name!r} bound to {buf.dtype}{list(buf.shape)} in "
                                        f"{buf.memory.kind} memory; the engine takes {t.dtype}{list(t.shape)} in its "
                                        "device memory")
                if not ctx.set_tensor_address(t.name, buf.address()):
                    raise ExecutorError(f"engine {self.name!r}: set_tensor_address({t.name!r}) failed")
            self._bound[profile] = key
        stream = self.memory.stream
        if not self.use_cuda_graph or self.backend == "tensorrt_rtx":  # RTX captures inside execute_async_v3
            self._execute(ctx, stream)
            return
        gkey = (profile, key)
        graph = self._graphs.get(gkey)
        if graph is None:
            graph = self._capture(ctx, stream)
            self._graphs[gkey] = graph
        cuda_check(self.memory.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def _execute(self, ctx, stream) -> None:
        if not ctx.execute_async_v3(int(stream)):
            raise ExecutorError(f"engine {self.name!r}: execute_async_v3 failed (see the TensorRT log)")

    def _capture(self, ctx, stream):
        """Run once plainly (flushes deferred setup), then capture the same enqueue as a CUDA graph."""
        rt = self.memory.rt
        self._execute(ctx, stream)
        cuda_check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        cuda_check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                   "cudaStreamBeginCapture")
        ok = ctx.execute_async_v3(int(stream))
        graph = cuda_check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        if not ok:
            raise ExecutorError(f"engine {self.name!r}: execute_async_v3 failed during CUDA graph capture; "
                                "run with use_cuda_graph=False (--no-cuda-graphs)")
        exe = cuda_check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        cuda_check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        return exe

    def _run(self, feeds: dict[str, np.ndarray], profile: str | None = None) -> dict[str, np.ndarray]:
        """Host convenience path (tests, debugging): temporary device buffers, upload, run, download."""
        if self.memory is None:
            raise ExecutorError(f"engine {self.name!r}: activate() it on a CudaMemory first (Runtime.load does)")
        io = self.contract(profile)
        bufs = {t.name: self.memory.alloc_spec(t) for t in io.inputs + io.outputs}
        for n, a in feeds.items():
            self.memory.upload(bufs[n], a)
        graphs, self.use_cuda_graph = self.use_cuda_graph, False  # no graph over addresses that die with this call
        try:
            self.run_bound(bufs, profile)
            return {t.name: self.memory.download(bufs[t.name]) for t in io.outputs}
        finally:
            self.use_cuda_graph = graphs
            self._bound.pop(profile, None)
            for b in bufs.values():
                self.memory.free(b)

    def close(self) -> None:
        rt = getattr(self.memory, "rt", None)
        if rt is not None:
            for g in self._graphs.values():
                rt.cudaGraphExecDestroy(g)
        if self._runtime_cache is not None and self.runtime_cache_path is not None:
            self._save_runtime_cache()
        self._graphs, self._bound, self.contexts = {}, {}, {}
        self.engine = self._runtime_cache = None

    def _save_runtime_cache(self) -> None:
        data = bytes(memoryview(self._runtime_cache.serialize()))
        path = self.runtime_cache_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new cache, never half
