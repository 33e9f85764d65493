"""Toy engine exported once per session (FP32 and FP8), shared by the export tests."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def toy_exports(tmp_path_factory):
    from sanawm.export.onnx import export_onnx, random_inputs, run_torch
    from sanawm.export.quantize import quantize_fp8
    from sanawm.export.toy import ToyStep, toy_step_io

    torch.manual_seed(0)
    io = toy_step_io()
    model = ToyStep().eval()
    root = tmp_path_factory.mktemp("toy")
    checks = [random_inputs(io, seed=s) for s in (11, 12)]
    fp32 = export_onnx(model, io, root / "fp32" / "toy.onnx", check_inputs=checks)

    def calib(q):
        for s in range(6):
            run_torch(q, io, random_inputs(io, seed=100 + s))

    qmodel, report = quantize_fp8(model, calib)
    fp8 = export_onnx(qmodel, io, root / "fp8" / "toy.onnx", check_inputs=checks)
    return dict(io=io, model=model, qmodel=qmodel, report=report, fp32=fp32, fp8=fp8, checks=checks, root=root)
