"""FP16 export (``--precision fp16``) on the toy engine: the graph holds FP16 weights exactly on the layers the
precision policy selects, ONNX Runtime equals the torch FP16 module, FP16 vs FP32 stays at FP16 rounding level,
the engine's I/O and state stay FP32, overflow is refused, and TensorRT-RTX builds the strongly typed graph.

Tolerances (relative RMS): ORT vs torch FP16 module <= 1e-5 (measured ~2e-8: same FP16 products, FP32 elsewhere);
FP16 vs FP32 in (1e-5, 5e-3) (measured ~4e-4: FP16 has 11 significant bits)."""

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from sanawm.export.half import FP16RangeError, convert_fp16  # noqa: E402
from sanawm.export.onnx import export_onnx, random_inputs, run_onnx_cpu, run_torch  # noqa: E402
from sanawm.export.toy import ToyStep, toy_step_io  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402


def _calib(io, scale=1.0):
    def run(q):
        for s in range(4):
            f = random_inputs(io, seed=100 + s)
            f["x"] = f["x"] * scale
            run_torch(q, io, f)

    return run


@pytest.fixture(scope="module")
def toy16(tmp_path_factory):
    torch.manual_seed(0)
    io = toy_step_io()
    model = ToyStep().eval()
    half, rep = convert_fp16(model, _calib(io))
    path = tmp_path_factory.mktemp("fp16") / "toy.onnx"
    export_onnx(half, io, path, check=False)
    return dict(io=io, model=model, half=half, rep=rep, path=path)


def test_fp16_weights_exactly_on_the_policy_layers(toy16):
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(toy16["path"]))
    assert toy16["rep"].layers == ["q", "k", "v", "o", "ffn.0"]  # ffn.2 is in the toy's fp8_skip
    # the exporter renames folded (transposed) weights, so count elements: the FP16 initializers hold exactly the
    # selected layers' weights and biases, and the FP32 ones none of them
    half = [numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == TensorProto.FLOAT16]
    layers = [toy16["model"].get_submodule(n) for n in toy16["rep"].layers]
    assert sum(a.size for a in half) == sum(l.weight.numel() + l.bias.numel() for l in layers)
    assert all(a.dtype.name == "float16" for a in half)
    fp32_shapes = sorted(tuple(t.dims) for t in m.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2)
    assert (32, 64) in fp32_shapes or (64, 32) in fp32_shapes  # ffn.2 (skipped) kept FP32
    # the engine contract is untouched: FP32 inputs, outputs and state
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.input) + list(m.graph.output)}
    assert elem["h"] == elem["h.out"] == elem["y"] == TensorProto.FLOAT


def test_ort_equals_torch_fp16_and_fp32_is_close(toy16):
    io = toy16["io"]
    for seed in (11, 12):
        feeds = random_inputs(io, seed=seed)
        got = run_onnx_cpu(toy16["path"], feeds)
        ref16 = run_torch(toy16["half"], io, feeds)
        ref32 = run_torch(toy16["model"], io, feeds)
        for n in ref16:
            assert rel_error(ref16[n], got[n]) <= 1e-5, n
        err32 = rel_error(ref32["y"], got["y"])
        print(f"\nFP16 vs FP32 toy output (seed {seed}): rel err {err32:.2e}")
        assert 1e-5 < err32 < 5e-3  # something ran in FP16, and only at FP16 rounding level


def test_overflow_and_unused_layers_are_refused():
    torch.manual_seed(0)
    io = toy_step_io()
    with pytest.raises(FP16RangeError, match="would overflow.*--precision fp8"):
        convert_fp16(ToyStep().eval(), _calib(io, scale=1e5))
    with pytest.raises(FP16RangeError, match="never ran"):
        convert_fp16(ToyStep().eval(), lambda q: None)


def test_cli_fp16_bundle_builds_with_tensorrt_rtx(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx")
    from sanawm.bundle import BackendEnv, Bundle
    from sanawm.export.cli import main

    out = tmp_path / "b"
    assert main(["--random", "--engines", "toy", "--precision", "fp16", "--out", str(out),
                 "--backends", "onnxruntime,tensorrt_rtx", "--rtx-targets", "sm_89"]) == 0
    e = Bundle.open(out, environment=BackendEnv("tensorrt_rtx", trt.__version__, "sm_89")).engine("toy")
    assert e.precision == "fp16" and e.files["onnx"]["fp16_layers"] == ["q", "k", "v", "o", "ffn.0"]
    assert e.files["onnx"]["ort_check_rel_error"] < 1e-5
    assert e.files["tensorrt_rtx"]["build"]["strongly_typed"]
