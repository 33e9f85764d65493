"""Shared fixtures for the run-side tests: a tiny hand-made bundle (ONNX with external data + fake plan)."""

from pathlib import Path

import numpy as np
import pytest

from sanawm.bundle import SCHEMA_VERSION, file_record, write_manifest
from sanawm.spec import TensorSpec


def _write_onnx(path: Path, location: str = "add.onnx.data"):
    """y = x + w with w stored as external data at ``location``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(1, 64), "w")
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0)


def make_bundle(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write_onnx(root / "add.onnx")
    (root / "add.tensorrt_rtx.plan").write_bytes(b"not a real plan" * 10)
    x = TensorSpec("x", "float32", (1, 64))
    y = TensorSpec("y", "float32", (1, 64))
    onnx_rec = file_record(root, root / "add.onnx")
    onnx_rec["external_data"] = [file_record(root, root / "add.onnx.data")]
    plan_rec = file_record(root, root / "add.tensorrt_rtx.plan")
    plan_rec["build"] = {"library": "tensorrt_rtx", "version": "1.7.1.116", "compute_capabilities": ["sm_89", "sm_120"]}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "sanawm_version": "0.1.0",
        "source": {"checkpoint": None, "checkpoint_sha256": None, "random_seed": 0},
        "export": {"config": "tiny", "precision": "fp32"},
        "generator_config": None,
        "engines": {
            "add": {
                "kind": "toy",
                "precision": "fp32",
                "inputs": [x.to_dict()],
                "outputs": [y.to_dict()],
                "state_map": {},
                "profiles": [],
                "notes": "fixed shapes",
                "files": {"onnx": onnx_rec, "tensorrt_rtx": plan_rec},
            }
        },
    }
    write_manifest(root, manifest)
    return root



@pytest.fixture
def bundle_factory():
    """make_bundle(root) -> root: engine 'add' (y = x + w) with an onnx file and a fake tensorrt_rtx plan."""
    pytest.importorskip("onnx")
    return make_bundle
