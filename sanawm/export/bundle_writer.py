"""Write an engine bundle stage by stage, skipping stages whose artifact is already there (build side).

Artifacts of engine NAME in the bundle folder::

    NAME.onnx, NAME.onnx.data        export (+ FP8 quantization) stage
    NAME.<backend>.plan              one build stage per TensorRT backend

Each file record in the manifest carries ``sha256``/``size`` and ``stage_key``: the sha256 of the stage's
inputs (checkpoint hash, config, precision, opset, calibration settings / ONNX hash, backend version,
targets, optimisation level). A stage is skipped when its file exists, still has the recorded hash and
its stage key is unchanged; otherwise it reruns. The manifest is rewritten after every stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from ..bundle import MANIFEST_NAME, SCHEMA_VERSION, file_record, sha256_file, write_manifest
from ..spec import StepIO

log = logging.getLogger("sanawm.export")


def stage_key(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class EngineArtifacts:
    """Paths of one engine's artifacts inside the bundle folder."""

    root: Path
    name: str

    @property
    def onnx(self) -> Path:
        return self.root / f"{self.name}.onnx"

    @property
    def onnx_data(self) -> Path:
        return self.root / f"{self.name}.onnx.data"

    def plan(self, backend: str) -> Path:
        return self.root / f"{self.name}.{backend}.plan"


class BundleWriter:
    def __init__(
        self, root: str | Path, *, source: dict, export: dict, generator_config: dict | None = None, vae: dict | None = None,
        refiner: dict | None = None,
    ):
        """``vae``: the manifest's ``vae`` section (VAE config, ``image_hw``, ...) when this run exports VAE
        engines; None keeps the existing bundle's section (its VAE engines are kept too). ``refiner``: the same
        for the stage-2 refiner (layout, sigmas, config, source): everything the runtime's refiner stage needs
        besides the engines."""
        # absolute: artifact paths are recorded relative to the root (file_record), so a relative --out such as
        # the demo's default folder must not be joined onto itself
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        old = {}
        mp = self.root / MANIFEST_NAME
        if mp.is_file():
            try:
                old = json.loads(mp.read_text())
            except json.JSONDecodeError:
                old = {}
            if old.get("schema_version") != SCHEMA_VERSION:
                log.info("existing manifest has schema %s; rebuilding every stage", old.get("schema_version"))
                old = {}
        self.old_engines = old.get("engines", {})
        self.manifest = {
            "schema_version": SCHEMA_VERSION,
            "sanawm_version": __version__,
            "source": source,
            "export": export,
            "generator_config": generator_config,
            "vae": vae if vae is not None else old.get("vae"),
            "refiner": refiner if refiner is not None else old.get("refiner"),
            # engines not rebuilt in this run are kept as they were
            "engines": {k: v for k, v in self.old_engines.items()},
        }
        for k in ("vae", "refiner"):
            if self.manifest[k] is None:
                del self.manifest[k]

    def artifacts(self, name: str) -> EngineArtifacts:
        return EngineArtifacts(self.root, name)

    def engine(self, name: str, *, kind: str, io: StepIO, precision: str, notes: str = "", profiles: list | None = None) -> None:
        """(Re)declare an engine entry; its files are kept only if their stages turn out up to date.

        ``profiles``: ``[{"name", "dims"}, ...]`` of an engine with symbolic dims, in plan profile order."""
        old_files = self.old_engines.get(name, {}).get("files", {})
        own = {t.name for t in io.inputs}
        cross = sorted(i for i in io.state_map.values() if i not in own)
        if cross:
            raise ValueError(f"engine {name!r}: state_map feeds {cross[:3]}, which are not its inputs; every engine's "
                             "state outputs feed its own inputs (a pure step function)")
        self.manifest["engines"][name] = {
            "kind": kind,
            "precision": precision,
            "inputs": [t.to_dict() for t in io.inputs],
            "outputs": [t.to_dict() for t in io.outputs],
            "state_map": dict(io.state_map),
            "profiles": profiles or [],
            "notes": notes,
            "files": {},
        }
        self._old_files = getattr(self, "_old_files", {})
        self._old_files[name] = old_files

    def _up_to_date(self, rec: dict | None, key: str, extra: list | None = None) -> bool:
        if not rec or rec.get("stage_key") != key:
            return False
        for r in [rec] + list(extra or []):
            p = self.root / r["path"]
            if not p.is_file() or p.stat().st_size != r["size"] or sha256_file(p) != r["sha256"]:
                return False
        return True

    def _keep_plans(self, name: str, onnx_rec: dict) -> None:
        """Plans from an earlier run stay listed while they were built from this very ONNX."""
        old = self._old_files.get(name, {})
        if old.get("onnx", {}).get("sha256") == onnx_rec["sha256"]:
            for b, r in old.items():
                if b != "onnx":
                    self.manifest["engines"][name]["files"].setdefault(b, r)

    def stage_onnx(self, name: str, key: dict, produce: Callable[[EngineArtifacts], dict]) -> dict:
        """Export stage: ``produce(artifacts)`` writes NAME.onnx (+ .data) and returns extra facts to record."""
        k = stage_key(key)
        old = self._old_files.get(name, {}).get("onnx")
        if self._up_to_date(old, k, (old or {}).get("external_data")):
            log.info("[%s] onnx: up to date (%s), skipped", name, old["path"])
            self.manifest["engines"][name]["files"]["onnx"] = old
            self._keep_plans(name, old)
            return old
        t0 = time.time()
        log.info("[%s] onnx: exporting ...", name)
        a = self.artifacts(name)
        facts = produce(a) or {}
        rec = file_record(self.root, a.onnx)
        rec["external_data"] = [file_record(self.root, a.onnx_data)] if a.onnx_data.exists() else []
        rec["stage_key"] = k
        rec.update(facts)
        self.manifest["engines"][name]["files"]["onnx"] = rec
        self.write()
        log.info("[%s] onnx: done in %.1fs (%s)", name, time.time() - t0, rec["path"])
        return rec

    def stage_plan(self, name: str, backend: str, key: dict, produce: Callable[[EngineArtifacts], dict]) -> dict:
        """Build stage: ``produce(artifacts)`` writes NAME.<backend>.plan and returns the build facts."""
        onnx_rec = self.manifest["engines"][name]["files"]["onnx"]
        k = stage_key({**key, "onnx_sha256": onnx_rec["sha256"], "external": [r["sha256"] for r in onnx_rec.get("external_data", [])]})
        old = self._old_files.get(name, {}).get(backend)
        if self._up_to_date(old, k):
            log.info("[%s] %s plan: up to date (%s), skipped", name, backend, old["path"])
            self.manifest["engines"][name]["files"][backend] = old
            return old
        t0 = time.time()
        log.info("[%s] %s plan: building ...", name, backend)
        a = self.artifacts(name)
        build = produce(a)
        rec = file_record(self.root, a.plan(backend))
        rec["stage_key"] = k
        rec["build"] = build
        self.manifest["engines"][name]["files"][backend] = rec
        self.write()
        log.info("[%s] %s plan: done in %.1fs (%s)", name, backend, time.time() - t0, rec["path"])
        return rec

    def write(self) -> Path:
        return write_manifest(self.root, self.manifest)
