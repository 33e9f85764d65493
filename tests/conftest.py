import os
import subprocess
import sys
from pathlib import Path

import pytest

# Never reach for a hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _has_cuda() -> bool:
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---- the tiny random demo bundle, shared by tests/serve and tests/fleet (built once per test run)
DEMO_ENGINES = "generator,vae_encoder,vae_decoder"  # bundle schema 2 names (sanawm.constants)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """The `sanawm demo` bundle (tiny random generator + VAE, ONNX Runtime FP32); ~45 s to export.

    SANAWM_TEST_TINY_BUNDLE names an already built one (local iteration only; CI builds it)."""
    given = os.environ.get("SANAWM_TEST_TINY_BUNDLE")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("serve") / "bundle"
    code = "import sys; from sanawm.export.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "--random", "--config", "tiny", "--out", str(out), "--backends", "onnxruntime",
           "--precision", "fp32", "--engines", DEMO_ENGINES]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def runtime(tiny_bundle):
    from sanawm.runtime import Runtime

    return Runtime.load(tiny_bundle, "onnxruntime")
