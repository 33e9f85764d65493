"""What every model family hands the export pipeline: one ``EngineJob`` per engine, and shared small helpers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..spec import StepIO


class ExportInputError(ValueError):
    """Bad input to ``sanawm-export`` (missing or mismatched weights, unusable precision): logged as one line, exit 2."""


@dataclass
class EngineJob:
    name: str
    kind: str
    module: object  # torch module, StepIO convention
    io: StepIO
    calibrate: Callable | None  # calibrate(qmodule) for FP8 (None: the engine is never quantized)
    sample: dict | Callable[[], dict]  # numpy feeds for tracing and the ORT check (callable: made on demand)
    notes: str
    precision: str | None = None  # fixed precision (VAE: fp32) or None = the CLI's --precision
    key: dict | None = None  # stage-key inputs replacing the generator's source/config (VAE engines)
    # one engine for several call shapes: profile name -> sizes of the io's symbolic dims, in plan profile order;
    # ``dims`` bounds them for the trace ({"n": (min, max)}); ``profile_samples`` makes the ORT check feeds per profile
    profiles: dict | None = None
    dims: dict | None = None
    profile_samples: Callable[[str], dict] | None = None
    # the ONNX stage, when not ``pipeline.export_and_check`` (same signature): the streamed generator (--streamed)
    export: Callable | None = None


def json_config(cfg) -> dict:
    """A diffusers config as plain JSON values (tuples -> lists, private keys dropped)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(cfg).items() if not k.startswith("_")}


def sha256_path(p: Path) -> str:
    """Identity of a weights source for the stage keys: a file's bytes, or a folder's file names and bytes."""
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else b"")
        with open(f, "rb") as fh:
            for b in iter(lambda: fh.read(1 << 22), b""):
                h.update(b)
    return h.hexdigest()
