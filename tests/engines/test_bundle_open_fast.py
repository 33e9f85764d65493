"""Opening a bundle is cheap by default and thorough on request (issue 12 item 5).

Default (``verify_hashes=False``, what ``Runtime.load`` and ``sanawm generate`` do without ``--verify``): existence,
sizes, path safety and external-data locations are checked, and no weight file is opened -- here a 2 GiB sparse
external-data file, recorded in the manifest with its size, is never opened (every ``open`` / ``os.open`` is
recorded). With ``verify_hashes=True`` a one-byte change of the same size is found.
"""

import builtins
import hashlib
import io
import os
import time

import pytest

from sanawm.bundle import Bundle, BundleError, MANIFEST_NAME
from sanawm.bundle.schema import write_manifest

BIG = 2 * 2**30


def _resize_external_data(root, size: int, sha256: str | None = None):
    """Grow add.onnx.data to ``size`` bytes (sparse: the tail is a hole) and record size (and hash) in the manifest."""
    import json

    data = root / "add.onnx.data"
    os.truncate(data, size)
    m = json.loads((root / MANIFEST_NAME).read_text())
    rec = m["engines"]["add"]["files"]["onnx"]["external_data"][0]
    rec["size"] = size
    if sha256 is not None:
        rec["sha256"] = sha256
    write_manifest(root, m)
    return data


@pytest.fixture
def opened(monkeypatch):
    """Every path opened through open() / io.open() / os.open() while the test runs."""
    seen = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def rec_open(file, *a, **k):
        seen.append(os.fspath(file) if not isinstance(file, int) else file)
        return real_open(file, *a, **k)

    def rec_os_open(path, *a, **k):
        seen.append(os.fspath(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", rec_open)
    monkeypatch.setattr(io, "open", rec_open)
    monkeypatch.setattr(os, "open", rec_os_open)
    assert real_io_open is real_open
    return seen


def test_default_open_reads_no_weight_file(bundle_factory, tmp_path, opened):
    root = bundle_factory(tmp_path / "b")
    data = _resize_external_data(root, BIG)
    assert data.stat().st_size == BIG and data.stat().st_blocks * 512 < 2**20  # sparse: no 2 GiB on disk
    opened.clear()
    t0 = time.perf_counter()
    b = Bundle.open(root, backends=["onnxruntime"])
    took = time.perf_counter() - t0
    names = {os.path.basename(str(p)) for p in opened}
    assert "add.onnx.data" not in names, opened
    assert names <= {MANIFEST_NAME, "add.onnx"}, names  # the manifest and the small ONNX graph only
    assert b.engine("add").files["onnx"]["external_data"][0]["size"] == BIG
    print(f"\nBundle.open with a {BIG / 2**30:.0f} GiB external-data file: {took * 1e3:.1f} ms, opened {sorted(names)}")
    # sizes are still checked: one byte short is refused without reading the file
    os.truncate(data, BIG - 1)
    with pytest.raises(BundleError, match="bytes, the manifest recorded"):
        Bundle.open(root, backends=["onnxruntime"])


def test_verify_finds_a_changed_byte_the_default_open_does_not_read(bundle_factory, tmp_path, opened):
    root = bundle_factory(tmp_path / "b")
    size = 64 * 2**20
    data = root / "add.onnx.data"
    head = data.read_bytes()
    h = hashlib.sha256(head + bytes(size - len(head))).hexdigest()  # the sparse tail reads as zeros
    _resize_external_data(root, size, h)
    Bundle.open(root, verify_hashes=True)  # the recorded hash is right
    with open(data, "r+b") as f:  # one byte in the middle of the hole, same size
        f.seek(size // 2)
        f.write(b"\x01")
    opened.clear()
    Bundle.open(root)  # default: sizes only, the file is not opened, so the change is not seen
    assert not [p for p in opened if str(p).endswith("add.onnx.data")]
    with pytest.raises(BundleError, match=r"sha256 .*altered"):
        Bundle.open(root, verify_hashes=True)
    assert [p for p in opened if str(p).endswith("add.onnx.data")]  # verify did read it
