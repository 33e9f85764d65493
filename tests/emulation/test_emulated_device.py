"""The emulated CUDA device and TensorRT (sanawm.emulation): counting, capture/replay, engines vs ONNX Runtime."""

import ctypes
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sanawm.emulation import build_plan, install
from sanawm.emulation.device import DEVICE_BASE

F = 4  # feature width of the test graphs
RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((F, 2 * F)).astype(np.float32)
W2 = RNG.standard_normal((2 * F, F)).astype(np.float32)
PROFILES = [{"x": ((1, 1, F), (1, 3, F), (1, 4, F))}, {"x": ((1, 5, F), (1, 6, F), (1, 8, F))}]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """x [1, T, F] -> MatMul W1 -> h -> Relu -> r -> MatMul W2 -> y [1, T, F]; T is dynamic."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", F])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", F])],
                          [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    path = tmp_path_factory.mktemp("emul") / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def h2d(rt, dst, a):
    return rt.cudaMemcpy(dst, a.ctypes.data, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)[0]


def pinned(rt, n):
    """n float32 in cudaMallocHost memory, as a numpy view."""
    err, ptr = rt.cudaMallocHost(4 * n)
    assert err == 0
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr))


def d2h(rt, a, src):
    return rt.cudaMemcpy(a.ctypes.data, src, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)[0]


# ------------------------------------------------------------------------------------ cuda-python fake
def test_install_puts_fakes_in_sys_modules_and_restores_them():
    before = {k: sys.modules.get(k) for k in ("cuda.bindings.runtime", "tensorrt_rtx")}
    with install() as emu:
        from cuda.bindings import runtime
        import tensorrt_rtx

        assert runtime is emu.runtime and tensorrt_rtx is emu.trt and runtime.device is emu.device
    assert {k: sys.modules.get(k) for k in before} == before


def test_copies_are_counted_per_direction_and_d2d_moves_bytes():
    with install() as emu:
        rt, dev = emu.runtime, emu.device
        a = np.arange(64, dtype=np.float32)
        _, p = rt.cudaMalloc(a.nbytes)
        _, q = rt.cudaMalloc(a.nbytes)
        assert p >= DEVICE_BASE and q >= DEVICE_BASE
        dev.reset()
        assert h2d(rt, p, a) == 0
        K = rt.cudaMemcpyKind
        assert rt.cudaMemcpy(q, p, a.nbytes, K.cudaMemcpyDeviceToDevice)[0] == 0
        back, host = np.zeros_like(a), np.zeros_like(a)
        assert d2h(rt, back, q) == 0
        assert rt.cudaMemcpy(host.ctypes.data, back.ctypes.data, a.nbytes, K.cudaMemcpyHostToHost)[0] == 0
        assert rt.cudaMemcpy(q, a.ctypes.data, 16, K.cudaMemcpyDefault)[0] == 0  # direction from the pointers
        np.testing.assert_array_equal(host, a)
        assert dev.copy_bytes == {"h2d": a.nbytes + 16, "d2h": a.nbytes, "d2d": a.nbytes, "h2h": a.nbytes}
        assert dev.copy_calls == {"h2d": 2, "d2h": 1, "d2d": 1, "h2h": 1}
        assert [e[0] for e in dev.log] == ["memcpy"] * 5
        assert dev.pageable_bytes == 2 * a.nbytes + 16  # numpy arrays are not pinned


def test_pinned_host_memory_is_real_memory_and_counted_as_pinned():
    with install() as emu:
        rt, dev = emu.runtime, emu.device
        err, hp = rt.cudaMallocHost(64)
        assert err == 0 and not dev.is_device(hp)
        staged = np.ctypeslib.as_array((ctypes.c_float * 16).from_address(hp))  # a numpy view of pinned memory
        staged[:] = np.arange(16)
        _, p = rt.cudaMalloc(64)
        assert rt.cudaMemcpy(p, hp, 64, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)[0] == 0
        out = np.zeros(16, np.float32)
        d2h(rt, out, p)
        np.testing.assert_array_equal(out, np.arange(16))
        assert dev.pageable_bytes == 64 and dev.pinned_bytes == 64  # only the d2h into numpy was pageable
        assert rt.cudaFreeHost(hp)[0] == 0 and dev.pinned_bytes == 0


def test_bad_pointers_are_error_returns_not_crashes():
    with install() as emu:
        rt = emu.runtime
        E, K = rt.cudaError_t, rt.cudaMemcpyKind
        a = np.zeros(16, np.float32)
        _, p = rt.cudaMalloc(a.nbytes)
        assert rt.cudaMemcpy(p + 8, a.ctypes.data, a.nbytes, K.cudaMemcpyHostToDevice)[0] == E.cudaErrorInvalidValue
        assert rt.cudaMemcpy(p, a.ctypes.data, a.nbytes, K.cudaMemcpyDeviceToHost)[0] == E.cudaErrorInvalidValue
        assert rt.cudaMemset(p - 4, 0, 8)[0] == E.cudaErrorInvalidValue
        assert rt.cudaFree(p)[0] == 0
        assert h2d(rt, p, a) == E.cudaErrorInvalidValue  # freed: addresses are never reused
        assert rt.cudaFree(p)[0] == E.cudaErrorInvalidDevicePointer
        assert rt.cudaGetErrorName(E.cudaErrorInvalidValue) == (E.cudaSuccess, b"cudaErrorInvalidValue")
        assert emu.device.copy_calls["h2d"] == 0


def test_new_memory_is_not_zero_and_memset_counts():
    with install() as emu:
        rt, dev = emu.runtime, emu.device
        _, p = rt.cudaMalloc(32)
        out = np.ones(32, np.uint8)
        d2h(rt, out, p)
        assert (out != 0).all()  # as on a GPU, fresh memory is garbage until memset
        _, s = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        assert rt.cudaMemsetAsync(p, 0, 32, s)[0] == 0
        d2h(rt, out, p)
        assert (out == 0).all() and dev.memset_bytes == 32 and dev.memset_calls == 1


def test_capture_records_and_replays_with_frozen_addresses():
    with install() as emu:
        rt, dev = emu.runtime, emu.device
        K = rt.cudaMemcpyKind
        src, dst = (pinned(rt, 8) for _ in range(2))
        src[:], dst[:] = np.arange(8), 0
        _, p = rt.cudaMalloc(src.nbytes)
        _, s = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        dev.reset()
        assert rt.cudaStreamBeginCapture(s, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)[0] == 0
        assert rt.cudaStreamIsCapturing(s)[1] == rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusActive
        rt.cudaMemcpyAsync(p, src.ctypes.data, src.nbytes, K.cudaMemcpyHostToDevice, s)
        rt.cudaMemcpyAsync(dst.ctypes.data, p, src.nbytes, K.cudaMemcpyDeviceToHost, s)
        err, graph = rt.cudaStreamEndCapture(s)
        assert err == 0 and dev.copy_calls == {"h2d": 0, "d2h": 0, "d2d": 0, "h2h": 0}  # recorded, not run
        assert not dst.any()
        _, exe = rt.cudaGraphInstantiate(graph, 0)
        rt.cudaGraphDestroy(graph)
        src[:] = 100 + np.arange(8)  # same buffer, new contents, after capture
        assert rt.cudaGraphLaunch(exe, s)[0] == 0
        np.testing.assert_array_equal(dst, src)
        src[:] = -1
        rt.cudaGraphLaunch(exe, s)
        np.testing.assert_array_equal(dst, src)
        assert dev.graph_launches == 2 and dev.copy_bytes["h2d"] == 2 * src.nbytes
        assert rt.cudaGraphExecDestroy(exe)[0] == 0


def test_alloc_or_sync_during_capture_is_an_error_and_invalidates_it():
    with install() as emu:
        rt = emu.runtime
        E, mode = rt.cudaError_t, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        _, s = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        _, p = rt.cudaMalloc(64)
        pageable = np.zeros(16, np.float32)
        for bad in (lambda: rt.cudaMalloc(256), lambda: rt.cudaStreamSynchronize(s), lambda: rt.cudaDeviceSynchronize(),
                    lambda: rt.cudaMemcpyAsync(p, pageable.ctypes.data, 64, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, s)):
            rt.cudaStreamBeginCapture(s, mode)
            assert bad()[0] == E.cudaErrorStreamCaptureUnsupported
            assert rt.cudaStreamEndCapture(s) == (E.cudaErrorStreamCaptureInvalidated, None)
        assert emu.device.alloc_calls == 1 and emu.device.copy_calls["h2d"] == 0
        assert rt.cudaMalloc(256)[0] == 0  # fine again once the capture is over


def test_out_of_memory_returns_the_allocation_error():
    with install(total_memory=1 << 20) as emu:
        rt = emu.runtime
        assert rt.cudaMalloc(3 << 19)[0] == rt.cudaError_t.cudaErrorMemoryAllocation
        err, p = rt.cudaMalloc(1 << 19)
        assert err == 0 and rt.cudaMemGetInfo() == (0, (1 << 20) - (1 << 19), 1 << 20)
        assert rt.cudaMalloc((1 << 19) + 1)[0] == rt.cudaError_t.cudaErrorMemoryAllocation
        rt.cudaFree(p)
        assert rt.cudaMalloc(1 << 20)[0] == 0
        assert emu.device.peak_bytes == 1 << 20 and emu.device.alloc_calls == 2


def test_backing_false_counts_without_storing():
    tib = 1 << 40  # far more than this machine has: only possible because nothing is stored
    with install(total_memory=4 * tib, backing=False) as emu:
        rt, dev = emu.runtime, emu.device
        _, p = rt.cudaMalloc(tib)
        _, q = rt.cudaMalloc(tib)
        host = np.zeros(16, np.uint8)
        assert rt.cudaMemcpy(p, q, tib, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice)[0] == 0
        assert d2h(rt, host, p) == 0 and not host.any()  # counted, nothing written
        assert dev.copy_bytes["d2d"] == tib and dev.copy_bytes["d2h"] == 16 and dev.peak_bytes == 2 * tib
        with pytest.raises(ValueError, match="no backed allocation"):
            dev.view(p, 16)


# ------------------------------------------------------------------------------------ TensorRT fake
def _run(ctx, rt, x, stream):
    """Bind x / y in fresh device buffers, execute, return y."""
    y = np.zeros_like(x)
    _, px = rt.cudaMalloc(x.nbytes)
    _, py = rt.cudaMalloc(y.nbytes)
    h2d(rt, px, x)
    assert ctx.set_input_shape("x", x.shape)
    assert ctx.set_tensor_address("x", px) and ctx.set_tensor_address("y", py)
    assert ctx.execute_async_v3(stream)
    d2h(rt, y, py)
    return y


def test_engine_matches_onnxruntime_under_two_profiles(mlp):
    ref = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"])
    with install("tensorrt_rtx") as emu:
        trt, rt = emu.trt, emu.runtime
        eng = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        assert eng.num_optimization_profiles == 2 and eng.get_tensor_shape("x") == (1, -1, F)
        assert eng.get_tensor_mode("y") == trt.TensorIOMode.OUTPUT and eng.get_tensor_dtype("y") == trt.DataType.FLOAT
        assert eng.get_tensor_profile_shape("x", 1) == [(1, 5, F), (1, 6, F), (1, 8, F)]
        ctx = eng.create_execution_context()
        _, s = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        assert not ctx.set_input_shape("x", (1, 6, F))  # T=6 is outside profile 0
        for profile, t in ((0, 3), (1, 6), (1, 8), (0, 1)):
            assert ctx.set_optimization_profile_async(profile, s)
            x = RNG.standard_normal((1, t, F)).astype(np.float32)
            y = _run(ctx, rt, x, s)
            assert ctx.get_tensor_shape("y") == (1, t, F)
            np.testing.assert_array_equal(y, ref.run(None, {"x": x})[0])


def test_workspace_estimate_is_the_largest_node_working_set(mlp):
    with install() as emu:
        eng = emu.trt.Runtime(emu.trt.Logger()).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        # Relu reads h and writes r, both [1, T_max, 2F] fp32: the largest one-node set of intermediates
        for p, prof in enumerate(PROFILES):
            t_max = prof["x"][2][1]
            want = -(-2 * t_max * 2 * F * 4 // 256) * 256
            assert eng.get_device_memory_size_for_profile_v2(p) == want
        assert eng.device_memory_size_v2 == max(eng.get_device_memory_size_for_profile_v2(p) for p in (0, 1))


def test_user_managed_context_needs_its_memory(mlp):
    with install("tensorrt_rtx") as emu:
        trt, rt, dev = emu.trt, emu.runtime, emu.device
        logger = trt.Logger()
        eng = trt.Runtime(logger).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        allocs = dev.alloc_calls
        cfg = eng.create_runtime_config()
        cfg.set_execution_context_allocation_strategy(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        ctx = eng.create_execution_context(runtime_config=cfg)
        assert dev.alloc_calls == allocs  # user-managed: the context allocates nothing itself
        x = np.ones((1, 2, F), np.float32)
        with pytest.raises(AssertionError):
            _run(ctx, rt, x, 0)
        assert "context memory" in logger.messages[-1][1]
        size = eng.device_memory_size_v2
        _, arena = rt.cudaMalloc(size + 256)
        ctx.set_device_memory(arena + 8, size)
        with pytest.raises(AssertionError):
            _run(ctx, rt, x, 0)
        assert "aligned" in logger.messages[-1][1]
        ctx.set_device_memory(arena + 256, size)
        assert _run(ctx, rt, x, 0).any()


def test_allocation_strategies_own_their_context_memory(mlp):
    with install("tensorrt") as emu:
        trt, dev = emu.trt, emu.device
        eng = trt.Runtime(trt.Logger()).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        sizes = [eng.get_device_memory_size_for_profile_v2(p) for p in (0, 1)]
        dev.reset()
        static = eng.create_execution_context(trt.ExecutionContextAllocationStrategy.STATIC)
        assert dev.alloc_bytes == max(sizes)
        ctx = eng.create_execution_context(trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE)
        assert dev.alloc_bytes == max(sizes) + sizes[0]
        assert ctx.set_optimization_profile_async(1, 0)
        assert dev.alloc_bytes == max(sizes) + sizes[0] + sizes[1] and dev.free_calls == 1
        assert not ctx.set_optimization_profile_async(2, 0) and static.device_memory


def test_aliased_input_and_output_is_a_clear_error(mlp):
    with install() as emu:
        trt, rt = emu.trt, emu.runtime
        eng = trt.Runtime(trt.Logger()).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        ctx = eng.create_execution_context()
        _, p = rt.cudaMalloc(4 * F * 4)
        ctx.set_input_shape("x", (1, 4, F))
        ctx.set_tensor_address("x", p)
        ctx.set_tensor_address("y", p)
        with pytest.raises(ValueError, match="forbids aliased"):
            ctx.execute_async_v3(0)


def test_foreign_plans_are_refused_quietly(mlp, capsys):
    with install("tensorrt", compute_capability=(9, 0)) as emu:
        trt = emu.trt
        logger = trt.Logger()
        runtime = trt.Runtime(logger)
        assert runtime.deserialize_cuda_engine(build_plan(mlp, PROFILES, "10.0.0.1", (9, 0))) is None
        assert runtime.deserialize_cuda_engine(build_plan(mlp, PROFILES, trt.__version__, (12, 0))) is None
        assert runtime.deserialize_cuda_engine(b"\x00not a plan") is None
        assert runtime.deserialize_cuda_engine(emu.plan(mlp, PROFILES)) is not None
        assert len(logger.messages) == 3 and emu.device.copy_calls["h2d"] == 1
    assert capsys.readouterr() == ("", "")


def test_weights_are_uploaded_once_per_deserialize(mlp):
    with install() as emu:
        trt, dev = emu.trt, emu.device
        plan = emu.plan(mlp, PROFILES)
        runtime = trt.Runtime(trt.Logger())
        engines = [runtime.deserialize_cuda_engine(plan) for _ in range(2)]
        for e in engines:
            e.create_execution_context()
            e.create_execution_context()
        assert dev.copy_bytes["h2d"] == 2 * (W1.nbytes + W2.nbytes) and dev.copy_calls["h2d"] == 2
        assert [e[1:] for e in dev.log if e[0] == "trt_weights"] == [("mlp", W1.nbytes + W2.nbytes)] * 2
        live = dev.live_bytes
        del engines, e
        assert dev.live_bytes < live  # engines and contexts free their memory when dropped


def test_weights_beyond_device_memory_fail_the_deserialize(mlp):
    with install(total_memory=W1.nbytes) as emu:
        logger = emu.trt.Logger()
        assert emu.trt.Runtime(logger).deserialize_cuda_engine(emu.plan(mlp, PROFILES)) is None
        assert "cudaErrorMemoryAllocation" in logger.messages[-1][1]


def test_captured_execute_replays_at_the_captured_addresses(mlp):
    ref = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"])
    with install() as emu:
        trt, rt, dev = emu.trt, emu.runtime, emu.device
        eng = trt.Runtime(trt.Logger()).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        ctx = eng.create_execution_context()
        _, s = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        x = np.ones((1, 4, F), np.float32)
        y = np.zeros_like(x)
        _, px = rt.cudaMalloc(x.nbytes)
        _, py = rt.cudaMalloc(x.nbytes)
        ctx.set_input_shape("x", x.shape)
        ctx.set_tensor_address("x", px)
        ctx.set_tensor_address("y", py)
        rt.cudaStreamBeginCapture(s, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
        assert ctx.is_stream_capturable(s) and ctx.execute_async_v3(s)
        _, g = rt.cudaStreamEndCapture(s)
        _, exe = rt.cudaGraphInstantiate(g, 0)
        assert dev.events["trt_execute"] == 0
        _, other = rt.cudaMalloc(x.nbytes)
        ctx.set_tensor_address("y", other)  # rebinding after capture does not move the graph
        x[:] = RNG.standard_normal(x.shape)
        h2d(rt, px, x)
        rt.cudaGraphLaunch(exe, s)
        d2h(rt, y, py)
        np.testing.assert_array_equal(y, ref.run(None, {"x": x})[0])
        assert dev.events["trt_execute"] == 1


def test_rtx_runtime_cache_compiles_each_shape_once(mlp):
    with install("tensorrt_rtx") as emu:
        trt, rt, dev = emu.trt, emu.runtime, emu.device
        eng = trt.Runtime(trt.Logger()).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        saved = b""
        for session in range(2):
            cfg = eng.create_runtime_config()
            cache = cfg.create_runtime_cache()
            cache.deserialize(saved)
            cfg.set_runtime_cache(cache)
            ctx = eng.create_execution_context(cfg)
            before = dev.events["trt_jit_compile"]
            for _ in range(2):
                _run(ctx, rt, np.ones((1, 3, F), np.float32), 0)
            assert dev.events["trt_jit_compile"] - before == (1 if session == 0 else 0)
            saved = cache.serialize()


def test_rtx_whole_graph_capture_captures_once_per_shape_and_address(mlp):
    with install("tensorrt_rtx") as emu:
        trt, rt, dev = emu.trt, emu.runtime, emu.device
        eng = trt.Runtime(trt.Logger()).deserialize_cuda_engine(emu.plan(mlp, PROFILES))
        cfg = eng.create_runtime_config()
        cfg.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        ctx = eng.create_execution_context(cfg)
        x = np.ones((1, 2, F), np.float32)
        _, px = rt.cudaMalloc(x.nbytes)
        _, py = rt.cudaMalloc(x.nbytes)
        ctx.set_input_shape("x", x.shape)
        ctx.set_tensor_address("x", px)
        ctx.set_tensor_address("y", py)
        for _ in range(3):
            assert ctx.execute_async_v3(0)
        assert (dev.events["trt_graph_capture"], dev.events["trt_graph_replay"]) == (1, 2)


def test_spec_plan_plans_full_size_without_memory_or_onnx():
    gib = 1 << 30
    kv = ("kv", "float16", (48, 2, 32, 8800, 128))  # 4.3 GB: counted, never stored
    with install(total_memory=32 * gib, backing=False) as emu:
        trt, rt, dev = emu.trt, emu.runtime, emu.device
        plan = emu.spec_plan("big", [("x", "float32", (1, "T", 64)), kv], [("y", "float32", (1, "T", 64))],
                             profiles=[{"x": ((1, 3, 64), (1, 3, 64), (1, 4, 64))}], weight_bytes=12 * gib, workspace=gib)
        eng = trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan)
        assert eng.get_tensor_shape("x") == (1, -1, 64) and eng.device_memory_size_v2 == gib
        ctx = eng.create_execution_context()
        nbytes = 48 * 2 * 32 * 8800 * 128 * 2
        _, pkv = rt.cudaMalloc(nbytes)
        _, px = rt.cudaMalloc(4 * 64 * 4)
        _, py = rt.cudaMalloc(4 * 64 * 4)
        ctx.set_input_shape("x", (1, 4, 64))
        ctx.set_input_shape("kv", kv[2])
        assert ctx.get_tensor_shape("y") == (1, 4, 64)
        for n, p in (("x", px), ("kv", pkv), ("y", py)):
            ctx.set_tensor_address(n, p)
        assert ctx.execute_async_v3(0)
        assert dev.copy_bytes["h2d"] == 12 * gib and dev.events["trt_execute"] == 1
        assert dev.peak_bytes >= 12 * gib + gib + nbytes
    with install() as emu:  # on a backing device a spec plan cannot compute: a failed execute, not garbage
        logger = emu.trt.Logger()
        eng = emu.trt.Runtime(logger).deserialize_cuda_engine(emu.spec_plan("s", [("x", "float32", (2,))], [("y", "float32", (2,))]))
        ctx = eng.create_execution_context()
        _, p = emu.runtime.cudaMalloc(8)
        _, q = emu.runtime.cudaMalloc(8)
        ctx.set_input_shape("x", (2,))
        ctx.set_tensor_address("x", p)
        ctx.set_tensor_address("y", q)
        assert not ctx.execute_async_v3(0) and "no ONNX graph" in logger.messages[-1][1]


def test_emulation_imports_neither_torch_nor_onnx():
    import subprocess

    code = ("import sys, sanawm.emulation; from sanawm.emulation import install\n"
            "with install('tensorrt') as e: import tensorrt, cuda.bindings.runtime\n"
            "bad = [m for m in ('torch', 'onnx') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_events_order_streams_and_reject_unknown_handles():
    with install() as emu:
        rt = emu.runtime
        E = rt.cudaError_t
        _, a = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        _, b = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        err, ev = rt.cudaEventCreate()
        assert err == 0
        assert rt.cudaEventRecord(ev, a)[0] == 0 and rt.cudaStreamWaitEvent(b, ev, 0)[0] == 0
        assert rt.cudaEventSynchronize(ev)[0] == 0 and rt.cudaEventDestroy(ev)[0] == 0
        assert rt.cudaEventRecord(ev, a)[0] == E.cudaErrorInvalidResourceHandle  # destroyed
        assert rt.cudaStreamSynchronize(12345)[0] == E.cudaErrorInvalidResourceHandle
        assert rt.cudaStreamDestroy(a)[0] == 0 and rt.cudaStreamDestroy(a)[0] == E.cudaErrorInvalidResourceHandle
        prop = rt.cudaGetDeviceProperties(rt.cudaGetDevice()[1])[1]
        assert (prop.major, prop.minor) == emu.device.compute_capability and prop.totalGlobalMem == emu.device.total_memory
