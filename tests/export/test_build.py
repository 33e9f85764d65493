"""TensorRT-RTX builds plans on this CPU machine (CPU-only AOT) from the toy FP32 and FP8 graphs."""

import pytest

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed (pip install tensorrt-rtx)")

from sanawm.export.build import BuildError, build_engine  # noqa: E402


@pytest.mark.parametrize("precision", ["fp32", "fp8"])
def test_tensorrt_rtx_builds_toy(toy_exports, tmp_path, precision):
    onnx_path = toy_exports[precision].onnx_path
    cache = tmp_path / "timing.cache"
    try:
        r = build_engine(onnx_path, tmp_path / "toy.plan", backend="tensorrt_rtx", compute_capabilities=["sm_89"], timing_cache=cache)
    except BuildError as e:
        if "CUDA" in str(e) and "driver" in str(e):
            pytest.skip(f"TensorRT-RTX needs a CUDA driver for this build here: {e}")
        raise
    assert r.plan_path.stat().st_size > 1000
    assert r.build["library"] == "tensorrt_rtx" and r.build["version"] == trt.__version__
    assert r.build["compute_capabilities"] == ["sm_89"] and r.build["strongly_typed"]
    assert cache.is_file()  # timing cache saved


def test_unsupported_target_is_explained(toy_exports, tmp_path):
    with pytest.raises(BuildError, match="cannot target sm_90"):
        build_engine(toy_exports["fp32"].onnx_path, tmp_path / "x.plan", backend="tensorrt_rtx", compute_capabilities=["sm_90"])


def test_unparsable_onnx_is_explained(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(BuildError, match="could not parse"):
        build_engine(bad, tmp_path / "x.plan", backend="tensorrt_rtx")
