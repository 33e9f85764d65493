"""Executors: feed checks, the ORT executor on a bundle, and the GPU-free parts of the TensorRT engine."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sanawm.engines import ExecutorError, check_feeds, load_executor
from sanawm.engines.tensorrt import (
    ALIGN,
    CudaError,
    TensorRTEngine,
    check_engine_io,
    cuda_check,
    import_trt,
    plan_buffers,
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
    np.testing.assert_array_equal(ex.run_with_iobinding({"x": x})["y"], y)
    with pytest.raises(ExecutorError, match="dtype"):
        ex.run({"x": x.astype(np.float16)})


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


def test_plan_buffers_ping_pong():
    ins, outs, sm = _state_io()
    p = plan_buffers(ins, outs, sm)
    # state input reads slot[parity], state output writes the other slot; they swap with the parity
    assert p.slot("h", 0) == p.slot("h.out", 1) and p.slot("h", 1) == p.slot("h.out", 0)
    assert p.slot("h", 0) != p.slot("h", 1)
    assert p.slot("x", 0) == p.slot("x", 1)
    slots = [p.single[n] for n in p.single] + [s for pair in p.pair.values() for s in pair]
    assert all(s.offset % ALIGN == 0 for s in slots)
    spans = sorted((s.offset, s.offset + s.nbytes) for s in slots)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "slots overlap"
    assert p.pair["h"][0].nbytes == 40 and p.single["i"].nbytes == 56
    assert p.total >= spans[-1][1]


def test_plan_buffers_rejects_bad_state_map():
    ins, outs, _ = _state_io()
    with pytest.raises(ExecutorError, match="does not have"):
        plan_buffers(ins, outs, {"h.out": "missing"})
    with pytest.raises(ExecutorError, match="cannot feed"):
        plan_buffers(ins, outs, {"y": "h"})


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
    assert eng.engine is None and eng.plan.total > 0  # nothing imported or allocated yet
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
