"""Executors: feed checks, the ORT executor on a bundle, and the GPU-free parts of the TensorRT engine."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sanawm.engines import ExecutorError, check_feeds, load_executor
from sanawm.engines.tensorrt import (
    CudaError,
    TensorRTEngine,
    check_engine_io,
    cuda_check,
    import_trt,
    trt_dtype_name,
)
from sanawm.spec import TensorSpec


X = TensorSpec("x", "float32", (1, 64))
SPECS = (X, TensorSpec("pos", "int64", (3,)))


def test_run_side_never_imports_torch():
    code = (
        "import sys; import sanawm.bundle, sanawm.engines, sanawm.engines.base, sanawm.engines.onnxruntime, "
        "sanawm.engines.tensorrt; from sanawm.engines import load_executor; "
        "bad = [m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules]; "
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "feeds, msg",
    [
        ({"x": np.zeros((1, 64), np.float32)}, r"missing inputs \['pos'\]"),
        ({"x": np.zeros((1, 64), np.float32), "pos": np.zeros(3, np.int64), "y": np.zeros(1)}, r"unknown inputs \['y'\]"),
        ({"x": np.zeros((1, 64), np.float64), "pos": np.zeros(3, np.int64)}, r"'x' has dtype float64, expected float32"),
        ({"x": np.zeros((1, 63), np.float32), "pos": np.zeros(3, np.int64)}, r"'x' has shape \[1, 63\], expected \[1, 64\]"),
        ({"x": [[0.0] * 64], "pos": np.zeros(3, np.int64)}, "must be a numpy array"),
    ],
)
def test_check_feeds_errors(feeds, msg):
    with pytest.raises(ExecutorError, match=msg):
        check_feeds("toy", SPECS, feeds)


def test_onnxruntime_executor_from_bundle(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    ex = load_executor(root, "add", "onnxruntime", device="cpu")
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    y = ex.run({"x": x})["y"]
    np.testing.assert_array_equal(y, x + np.arange(64, dtype=np.float32)[None])
    # run_bound: pool buffers bound in place, the output lands in the bound array (no copy back)
    from sanawm.engines.memory import HostMemory

    mem = HostMemory()
    xb, yb = mem.alloc("x", "float32", (1, 64)), mem.alloc("y", "float32", (1, 64))
    out_array = yb.handle
    for k in range(3):
        mem.upload(xb, x + k)
        ex.run_bound({"x": xb, "y": yb})
        assert yb.handle is out_array
        np.testing.assert_array_equal(out_array, ex.run({"x": x + k})["y"])
    assert ex.binding_builds == 1  # one binding set reused for the same addresses
    assert mem.traffic.h2d_bytes == 3 * x.nbytes and mem.traffic.d2h_bytes == 0
    assert ex.binding_builds == 1
    with pytest.raises(ExecutorError, match="dtype"):
        ex.run({"x": x.astype(np.float16)})


def test_onnxruntime_on_cuda_refuses_a_host_pool(bundle_factory, tmp_path):
    """On the CUDA execution provider the pool must be device memory (bound by pointer); a numpy pool would be
    copied on every call, so it is refused with what to do instead."""
    from sanawm.engines.memory import HostMemory

    ex = load_executor(bundle_factory(tmp_path / "b"), "add", "onnxruntime", device="cpu")
    ex.memory_kind = "cuda"  # what a CUDAExecutionProvider session sets
    mem = HostMemory()
    with pytest.raises(ExecutorError, match="CUDA execution provider.*Runtime.load"):
        ex.run_bound({"x": mem.alloc("x", "float32", (1, 64)), "y": mem.alloc("y", "float32", (1, 64))})


def test_onnxruntime_cuda_refused_without_provider(bundle_factory, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present")
    with pytest.raises(ExecutorError, match="onnxruntime-gpu"):
        load_executor(bundle_factory(tmp_path / "b"), "add", "onnxruntime", device="cuda")


def test_cuda_check_raises_name_and_code():
    class Err(SimpleNamespace):
        pass

    ok = Err(value=0, name="cudaSuccess")
    assert cuda_check((ok, 1234), "cudaMalloc") == 1234
    assert cuda_check((ok,), "cudaFree") is None
    assert cuda_check((ok, 1, 2), "x") == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc\(8 B\) failed: cudaErrorMemoryAllocation \(code 2\)") as ei:
        cuda_check((Err(value=2, name="cudaErrorMemoryAllocation"), None), "cudaMalloc(8 B)")
    assert ei.value.code == 2


def test_cuda_check_real_bindings_if_installed():
    rt = pytest.importorskip("cuda.bindings.runtime")
    err, n = rt.cudaGetDeviceCount()
    if int(err) == 0:
        pytest.skip("a CUDA device is present")
    with pytest.raises(CudaError, match=r"cudaGetDeviceCount failed: cudaError\w+ \(code \d+\)"):
        cuda_check((err, n), "cudaGetDeviceCount")


def _state_io():
    ins = (TensorSpec("x", "float32", (1, 3)), TensorSpec("h", "float32", (2, 5)), TensorSpec("i", "int64", (7,)))
    outs = (TensorSpec("y", "float32", (1, 3)), TensorSpec("h.out", "float32", (2, 5)))
    return ins, outs, {"h.out": "h"}


def test_check_engine_io():
    ins, outs, _ = _state_io()
    io = {t.name: ("INPUT", t.dtype, t.shape) for t in ins} | {t.name: ("OUTPUT", t.dtype, t.shape) for t in outs}
    check_engine_io("e", io, ins, outs)
    bad = dict(io, h=("INPUT", "float16", (2, 5)))
    with pytest.raises(ExecutorError, match=r"'h': plan input float16\[2, 5\], manifest float32\[2, 5\].*rebuild"):
        check_engine_io("e", bad, ins, outs)
    with pytest.raises(ExecutorError, match="missing from the plan"):
        check_engine_io("e", {k: v for k, v in io.items() if k != "y"}, ins, outs)


def test_trt_dtype_names():
    assert trt_dtype_name("DataType.FLOAT") == "float32"
    assert trt_dtype_name("DataType.INT64") == "int64"
    with pytest.raises(ExecutorError):
        trt_dtype_name("DataType.FP4")


def test_tensorrt_engine_is_lazy_and_explains_missing_packages(bundle_factory, tmp_path):
    ins, outs, sm = _state_io()
    eng = TensorRTEngine("e", tmp_path / "e.plan", ins, outs, sm, backend="tensorrt")
    assert eng.engine is None and eng.memory is None and not eng.contexts  # nothing imported or allocated yet
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="backend 'tensorrt' needs"):
            eng.load()
    with pytest.raises(ExecutorError, match="unknown TensorRT backend"):
        import_trt("tensorrt_llm")


def test_load_executor_tensorrt_rtx_plan_path(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    ex = load_executor(root, "add", "tensorrt_rtx")
    assert isinstance(ex, TensorRTEngine) and ex.plan_path.name == "add.tensorrt_rtx.plan"
