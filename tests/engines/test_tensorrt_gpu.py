"""TensorRTEngine on a REAL plan and a real GPU (marked `gpu`: skipped without CUDA, see tests/conftest.py; also
skipped when neither tensorrt nor tensorrt_rtx imports). The plan is built here from a small stateful ONNX graph
for this GPU; the engine runs device-resident steps (state ping-pong, with and without CUDA graphs) and must match
ONNX Runtime on CPU step by step."""

import importlib.util

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sanawm.spec import TensorSpec  # noqa: E402

pytestmark = pytest.mark.gpu
SHAPE = (2, 64)
W = (np.random.default_rng(1).standard_normal((SHAPE[1], SHAPE[1])) / 8).astype(np.float32)
BACKENDS = [b for b in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(b) is not None]


@pytest.fixture(scope="module")
def stateful(tmp_path_factory):
    """y = tanh(x @ W + s_in); s_out = s_in + y."""
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(SHAPE))  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "s_in"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["y"]), helper.make_node("Add", ["s_in", "y"], ["s_out"])]
    g = helper.make_graph(nodes, "stateful", [f("x"), f("s_in")], [f("y"), f("s_out")], [numpy_helper.from_array(W, "w")])
    path = tmp_path_factory.mktemp("gpu") / "stateful.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.skipif(not BACKENDS, reason="neither tensorrt nor tensorrt_rtx is installed")
@pytest.mark.parametrize("backend", BACKENDS or ["none"])
@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_real_plan_matches_onnxruntime(stateful, tmp_path, backend, use_cuda_graph):
    from sanawm.engines.cuda_memory import CudaMemory
    from sanawm.engines.tensorrt import TensorRTEngine, detect_environment
    from sanawm.export.build import BuildError, build_engine

    env = detect_environment(backend)
    plan = tmp_path / "stateful.plan"
    try:
        build_engine(stateful, plan, backend=backend, compute_capabilities=[env.compute_capability])
    except BuildError as e:
        if "cannot target" in str(e):  # e.g. TensorRT-RTX on a datacenter GPU it has no target for
            pytest.skip(str(e))
        raise
    spec = lambda *names: [TensorSpec(n, "float32", SHAPE) for n in names]  # noqa: E731
    eng = TensorRTEngine("stateful", plan, spec("x", "s_in"), spec("y", "s_out"), {"s_out": "s_in"}, backend=backend,
                         use_cuda_graph=use_cuda_graph)
    mem = CudaMemory()
    try:
        eng.load()
        arena = mem.alloc_bytes("activations", max(eng.workspace_bytes, 1))
        eng.activate(mem, arena, max(eng.workspace_bytes, 1))
        x_buf, y_buf = mem.alloc("x", "float32", SHAPE), mem.alloc("y", "float32", SHAPE)
        state = (mem.alloc("s#0", "float32", SHAPE), mem.alloc("s#1", "float32", SHAPE))
        mem.upload(state[0], np.zeros(SHAPE, np.float32))
        ref = ort.InferenceSession(str(stateful), providers=["CPUExecutionProvider"])
        s = np.zeros(SHAPE, np.float32)
        for i in range(6):
            x = np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32)
            mem.upload(x_buf, x)
            eng.run_bound({"x": x_buf, "y": y_buf, "s_in": state[i % 2], "s_out": state[1 - i % 2]})
            y, s = ref.run(None, {"x": x, "s_in": s})
            # TF32 may be on for the MatMul: a loose tolerance that still catches a wrong state or binding
            np.testing.assert_allclose(mem.download(y_buf), y, rtol=0, atol=2e-2)
        np.testing.assert_allclose(mem.download(state[0]), s, rtol=0, atol=5e-2)  # 6 steps: back in buffer 0
    finally:
        eng.close()
        mem.release()
