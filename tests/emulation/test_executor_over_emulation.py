"""The project's real TensorRTEngine, unmodified, over the emulated device and TensorRT (not a GPU run)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sanawm.emulation import install
from sanawm.spec import TensorSpec

SHAPE = (2, 8)
W = np.random.default_rng(1).standard_normal((SHAPE[1], SHAPE[1])).astype(np.float32)


@pytest.fixture(scope="module")
def stateful(tmp_path_factory):
    """y = tanh(x @ W + s_in); s_out = s_in + y: a carried state updated every call."""
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(SHAPE))  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "s_in"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["y"]), helper.make_node("Add", ["s_in", "y"], ["s_out"])]
    g = helper.make_graph(nodes, "stateful", [f("x"), f("s_in")], [f("y"), f("s_out")], [numpy_helper.from_array(W, "w")])
    path = tmp_path_factory.mktemp("emul") / "stateful.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("backend", ["tensorrt", "tensorrt_rtx"])
@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_device_resident_steps_match_onnxruntime(stateful, tmp_path, backend, use_cuda_graph):
    """State ping-pongs between two pool buffers on the device; only x goes up and y comes down."""
    from sanawm.engines.cuda_memory import CudaMemory
    from sanawm.engines.tensorrt import TensorRTEngine

    ref = ort.InferenceSession(str(stateful), providers=["CPUExecutionProvider"])
    spec = lambda *names: [TensorSpec(n, "float32", SHAPE) for n in names]  # noqa: E731
    xs = [np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32) for i in range(5)]
    with install(backend) as emu:
        dev = emu.device
        plan = tmp_path / "stateful.plan"
        plan.write_bytes(emu.plan(stateful))
        eng = TensorRTEngine("stateful", plan, spec("x", "s_in"), spec("y", "s_out"), {"s_out": "s_in"},
                             backend=backend, use_cuda_graph=use_cuda_graph,
                             runtime_cache=tmp_path / "rtx.cache" if backend == "tensorrt_rtx" else None)
        mem = CudaMemory()
        eng.load()
        arena = mem.alloc_bytes("activations", eng.workspace_bytes)
        eng.activate(mem, arena, eng.workspace_bytes)
        x_buf, y_buf = mem.alloc("x", "float32", SHAPE), mem.alloc("y", "float32", SHAPE)
        state = (mem.alloc("s#0", "float32", SHAPE), mem.alloc("s#1", "float32", SHAPE))
        s = np.zeros(SHAPE, np.float32)
        for i, x in enumerate(xs):
            if i == 1:
                allocs, before = dev.alloc_calls, dict(dev.copy_bytes)
            mem.upload(x_buf, x)
            eng.run_bound({"x": x_buf, "y": y_buf, "s_in": state[i % 2], "s_out": state[1 - i % 2]})
            got = mem.download(y_buf)
            y, s = ref.run(None, {"x": x, "s_in": s})
            np.testing.assert_allclose(got, y, rtol=0, atol=1e-6)
        # after the first step: no allocation, and only x in / y out crosses the host boundary
        assert dev.alloc_calls == allocs
        assert dev.copy_bytes["h2d"] - before["h2d"] == 4 * xs[0].nbytes
        assert dev.copy_bytes["d2h"] - before["d2h"] == 4 * xs[0].nbytes
        assert mem.traffic.h2d_bytes == 5 * xs[0].nbytes and mem.traffic.d2h_bytes == 5 * xs[0].nbytes
        # datacenter TensorRT with graphs: one plain warm-up execute per ping-pong parity, then replays
        manual = use_cuda_graph and backend == "tensorrt"
        assert dev.events["trt_weights"] == 1 and dev.events["trt_execute"] == 5 + (2 if manual else 0)
        assert dev.graph_launches == (5 if manual else 0)
        eng.close()
        if backend == "tensorrt_rtx":
            assert (tmp_path / "rtx.cache").is_file()  # JIT kernels kept for the next load on this GPU
        mem.release()
        del eng
        assert dev.live_bytes == 0  # close() and release() gave everything back
