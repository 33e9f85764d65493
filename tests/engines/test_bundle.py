"""Bundle reader: manifest validation and path safety (an untrusted bundle must not escape its folder)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sanawm.bundle import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    BackendEnv,
    Bundle,
    BundleError,
    file_record,
    normalize_cc,
    onnx_external_locations,
    write_manifest,
)

onnx = pytest.importorskip("onnx")


def _edit(root: Path, fn):
    m = json.loads((root / MANIFEST_NAME).read_text())
    fn(m)
    (root / MANIFEST_NAME).write_text(json.dumps(m))


RTX_OK = BackendEnv("tensorrt_rtx", "1.7.1.116", "8.9", "RTX 4090")


def test_open_valid_bundle(bundle_factory, tmp_path):
    b = Bundle.open(bundle_factory(tmp_path / "b"), environment=RTX_OK)
    e = b.engine("add")
    assert e.inputs[0].shape == (1, 64) and e.notes == "fixed shapes"
    assert b.path("add", "onnxruntime").name == "add.onnx"
    assert b.path("add", "tensorrt_rtx").name == "add.tensorrt_rtx.plan"


def test_schema_1_bundle_is_refused_with_the_rebuild_command(bundle_factory, tmp_path):
    """Schema 1 held the generator twice (generator_first / generator_next); such a bundle must be rebuilt."""
    root = bundle_factory(tmp_path / "b")
    _edit(root, lambda m: m.update(schema_version=1))
    with pytest.raises(BundleError, match=r"schema_version 1, this sanawm reads 2; rebuild every engine"):
        Bundle.open(root)


def test_three_engine_refiner_bundle_is_refused_with_the_rebuild_command(bundle_factory, tmp_path):
    """Before the one-engine refiner a schema-2 bundle held refiner_sink / refiner_step / refiner_capture, each with
    the refiner's full weights; such a bundle must be rebuilt."""
    root = bundle_factory(tmp_path / "b")
    _edit(root, lambda m: m["engines"].update(refiner_step=m["engines"]["add"]))
    with pytest.raises(BundleError, match=r"three engines \['refiner_step'\].*--engines refiner"):
        Bundle.open(root)


def test_schema_version_mismatch(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    _edit(root, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match=r"schema_version .* rebuild every engine .*--engines add"):
        Bundle.open(root)


def test_missing_file_names_engine_and_fix(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    (root / "add.tensorrt_rtx.plan").unlink()
    with pytest.raises(BundleError, match=r"engine 'add' tensorrt_rtx file .* missing.*--backends tensorrt_rtx.*--engines add") as ei:
        Bundle.open(root)
    assert ei.value.engine == "add"
    Bundle.open(root, backends=["onnxruntime"])  # the ORT side alone is still fine


def test_altered_file_detected_by_hash(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    data = bytearray((root / "add.onnx.data").read_bytes())
    data[5] ^= 0xFF  # same size, different content
    (root / "add.onnx.data").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 .*altered.*--engines add"):
        Bundle.open(root, verify_hashes=True)
    Bundle.open(root)  # the default, size-only open does not see it (documented trade-off: --verify)


def test_truncated_file_detected_by_size(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    (root / "add.tensorrt_rtx.plan").write_bytes(b"short")
    with pytest.raises(BundleError, match="bytes, the manifest recorded"):
        Bundle.open(root, verify_hashes=False)


def test_plan_for_other_trt_version(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    with pytest.raises(BundleError, match=r"built with tensorrt_rtx 1.7.1.116, this machine has 1.8.0.1.*rebuild"):
        Bundle.open(root, environment=BackendEnv("tensorrt_rtx", "1.8.0.1", "sm_89"))


def test_plan_for_other_compute_capability(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    with pytest.raises(BundleError, match=r"built for sm_89, sm_120.*this GPU is sm_90 \(H100\)"):
        Bundle.open(root, environment=BackendEnv("tensorrt_rtx", "1.7.1.116", (9, 0), "H100"))
    Bundle.open(root, environment=BackendEnv("tensorrt_rtx", "1.7.1.116", "SM120"))


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.plan", "sub/../../outside.plan"])
def test_manifest_paths_must_stay_inside(bundle_factory, tmp_path, bad):
    root = bundle_factory(tmp_path / "b")
    (tmp_path / "outside.plan").write_bytes(b"x")
    _edit(root, lambda m: m["engines"]["add"]["files"]["tensorrt_rtx"].update(path=bad))
    with pytest.raises(BundleError, match=r"absolute|'\.\.'"):
        Bundle.open(root)


def test_symlink_out_of_bundle_refused(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    outside = tmp_path / "secret.bin"
    shutil.copy(root / "add.tensorrt_rtx.plan", outside)
    (root / "add.tensorrt_rtx.plan").unlink()
    os.symlink(outside, root / "add.tensorrt_rtx.plan")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        Bundle.open(root)


def test_symlink_inside_bundle_allowed(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    (root / "plans").mkdir()
    (root / "add.tensorrt_rtx.plan").rename(root / "plans" / "p.plan")
    os.symlink(root / "plans" / "p.plan", root / "add.tensorrt_rtx.plan")
    Bundle.open(root)


@pytest.mark.parametrize("loc", ["../add.onnx.data", "/tmp/add.onnx.data"])
def test_external_data_location_outside_refused(bundle_factory, tmp_path, loc):
    root = bundle_factory(tmp_path / "b")
    m = onnx.load(str(root / "add.onnx"), load_external_data=False)
    for kv in m.graph.initializer[0].external_data:
        if kv.key == "location":
            kv.value = loc
    onnx.save_model(m, str(root / "add.onnx"))
    _edit(root, lambda man: man["engines"]["add"]["files"].update(onnx={**file_record(root, root / "add.onnx"),
          "external_data": man["engines"]["add"]["files"]["onnx"]["external_data"]}))
    with pytest.raises(BundleError, match=r"external data location.*(absolute|'\.\.')"):
        Bundle.open(root)


def test_external_data_symlink_out_refused(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    outside = tmp_path / "w.data"
    shutil.move(root / "add.onnx.data", outside)
    os.symlink(outside, root / "add.onnx.data")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        Bundle.open(root)


def test_unlisted_external_data_refused(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    _edit(root, lambda m: m["engines"]["add"]["files"]["onnx"].update(external_data=[]))
    with pytest.raises(BundleError, match="not listed"):
        Bundle.open(root)


def test_external_locations_match_onnx(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    assert onnx_external_locations(root / "add.onnx") == [("w", "add.onnx.data")]


def test_bad_state_map(bundle_factory, tmp_path):
    root = bundle_factory(tmp_path / "b")
    _edit(root, lambda m: m["engines"]["add"].update(state_map={"y": "nope"}))
    with pytest.raises(BundleError, match="state_map"):
        Bundle.open(root)


def test_unknown_engine_and_backend(bundle_factory, tmp_path):
    b = Bundle.open(bundle_factory(tmp_path / "b"))
    with pytest.raises(BundleError, match="not in bundle"):
        b.engine("generator_first")
    with pytest.raises(BundleError, match="no tensorrt file"):
        b.path("add", "tensorrt")


def test_normalize_cc():
    assert normalize_cc((8, 9)) == normalize_cc("8.9") == normalize_cc("SM89") == normalize_cc("sm_89") == "sm_89"
    assert normalize_cc("12.0") == "sm_120"
    with pytest.raises(ValueError):
        normalize_cc("ampere")
