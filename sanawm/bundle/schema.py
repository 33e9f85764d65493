"""Bundle schema constants, the bundle error type, and writing ``manifest.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 2  # 2: one engine per weight set (the generator serves both chunk lengths by profiles)
MANIFEST_NAME = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt", "tensorrt_rtx")
PLAN_BACKENDS = ("tensorrt", "tensorrt_rtx")
_DTYPES = {"float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"}


class BundleError(ValueError):
    """A bundle problem; the message names the engine and the command that fixes it."""

    def __init__(self, message: str, engine: str | None = None):
        super().__init__(message)
        self.engine = engine


def write_manifest(root: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (sorted keys, numpy scalars made plain)."""

    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, tuple):
            return list(o)
        raise TypeError(f"not JSON serialisable: {type(o)}")

    p = Path(root) / MANIFEST_NAME
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=default) + "\n")
    os.replace(tmp, p)
    return p
