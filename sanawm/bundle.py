"""Engine bundle: ``manifest.json`` + ONNX (+ external data) + TensorRT plans, read and validated (torch-free).

A bundle is the only thing that crosses from the build side to the run side. It is untrusted input: every
path it names (and every external-data ``location`` inside every ONNX file it names) must resolve inside
the bundle folder; absolute paths, ``..`` and symlinks that leave the folder are refused.

Manifest layout (``SCHEMA_VERSION`` 1)::

    {
      "schema_version": 1,
      "sanawm_version": "0.1.0",
      "source": {"checkpoint": "ckpt.safetensors" | null, "checkpoint_sha256": "..." | null, "random_seed": 0 | null},
      "export": {"config": "tiny", "precision": "fp8", ...},          # how to rebuild (CLI arguments)
      "generator_config": {...},                                       # GeneratorConfig.to_dict()
      "engines": {
        "generator_first": {
          "kind": "generator_step",
          "precision": "fp32" | "fp16" | "fp8",
          "inputs":  [{"name", "dtype", "shape", "doc"}, ...],
          "outputs": [...],
          "state_map": {"b0.S_kv.out": "b0.S_kv", ...},
          "profiles": [{"latents": {"min": [...], "opt": [...], "max": [...]}, ...}],
          "notes": "free text (e.g. why fixed shapes)",
          "files": {
            "onnx": {"path": "generator_first.onnx", "sha256": "...", "size": 123,
                     "external_data": [{"path": "generator_first.onnx.data", "sha256": "...", "size": 456}]},
            "tensorrt_rtx": {"path": "generator_first.tensorrt_rtx.plan", "sha256": "...", "size": 789,
                             "build": {"library": "tensorrt_rtx", "version": "1.7.1.116",
                                       "compute_capabilities": ["sm_89"], "gpu_name": null, ...}}
          }
        }
      }
    }

Backend ``onnxruntime`` runs the ``onnx`` file; ``tensorrt`` and ``tensorrt_rtx`` run their plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .spec import StepIO, TensorSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt", "tensorrt_rtx")
PLAN_BACKENDS = ("tensorrt", "tensorrt_rtx")
_DTYPES = {"float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"}


class BundleError(ValueError):
    """A bundle problem; the message names the engine and the command that fixes it."""

    def __init__(self, message: str, engine: str | None = None):
        super().__init__(message)
        self.engine = engine


# ----------------------------------------------------------------------------------------- helpers
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_record(root: str | os.PathLike, path: str | os.PathLike) -> dict:
    """``{"path": <relative to root>, "sha256", "size"}`` for a file inside ``root``."""
    root = Path(root).resolve()
    p = Path(path)
    p = p if p.is_absolute() else root / p
    rel = p.resolve().relative_to(root).as_posix()
    return {"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size}


def normalize_cc(cc: Any) -> str:
    """Compute capability in one spelling: ``(8, 9)``, ``"8.9"``, ``"89"``, ``"sm89"``, ``"SM_89"`` -> ``"sm_89"``."""
    if cc is None:
        raise ValueError("compute capability is None")
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"sm_{int(cc[0])}{int(cc[1])}"
    s = str(cc).strip().lower().replace("sm_", "").replace("sm", "")
    m = re.fullmatch(r"(\d+)\.(\d)", s)
    if m:
        return f"sm_{m.group(1)}{m.group(2)}"
    if re.fullmatch(r"\d{2,3}", s):
        return f"sm_{s}"
    raise ValueError(f"cannot read compute capability {cc!r}; expected e.g. (8, 9), '8.9' or 'sm_89'")


def safe_path(root: str | os.PathLike, rel: str, what: str = "file") -> Path:
    """Resolve ``rel`` inside ``root``; refuse absolute paths, ``..`` and symlinks that leave ``root``."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{what}: path {rel!r} is not a non-empty string")
    if "\x00" in rel or "\\" in rel:
        raise BundleError(f"{what}: path {rel!r} contains a NUL or backslash; bundle paths are POSIX relative paths")
    if rel.startswith("/") or os.path.isabs(rel) or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"{what}: absolute path {rel!r} refused; bundle paths must be relative to the bundle folder")
    if any(part == ".." for part in rel.split("/")):
        raise BundleError(f"{what}: path {rel!r} contains '..'; bundle paths must stay inside the bundle folder")
    root_r = Path(root).resolve()
    p = (root_r / rel).resolve()
    try:
        p.relative_to(root_r)
    except ValueError:
        raise BundleError(
            f"{what}: {rel!r} resolves to {p}, outside the bundle folder {root_r} (symlink out of the bundle?); refused"
        ) from None
    return p


# ------------------------------------------------------------- ONNX external data (protobuf, no onnx import)
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values are bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            if i + ln > n:
                raise ValueError("truncated length-delimited field")
            v, i = buf[i : i + ln], i + ln
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield fno, wt, v


# Which fields of which ONNX message hold messages that may contain a TensorProto (onnx.proto3 numbering).
_SUB = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attr"},
    "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _tensor_locations(buf: bytes) -> tuple[str, str | None]:
    name, loc = "", None
    for fno, wt, v in _fields(buf):
        if fno == 8 and wt == 2:
            name = v.decode("utf-8", "replace")
        elif fno == 13 and wt == 2:
            key = val = None
            for f2, w2, v2 in _fields(v):
                if f2 == 1 and w2 == 2:
                    key = v2.decode("utf-8", "replace")
                elif f2 == 2 and w2 == 2:
                    val = v2.decode("utf-8", "replace")
            if key == "location":
                loc = val
    return name, loc


def onnx_external_locations(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(tensor name, external-data ``location``) for every externally stored tensor in an ONNX file.

    Reads the protobuf wire format directly (the run side imports neither onnx nor torch).
    """
    data = Path(path).read_bytes()
    out: list[tuple[str, str]] = []

    def walk(buf: bytes, kind: str, depth: int) -> None:
        if depth > 64:
            raise ValueError("ONNX nesting deeper than 64 levels")
        if kind == "tensor":
            name, loc = _tensor_locations(buf)
            if loc is not None:
                out.append((name, loc))
            return
        sub = _SUB[kind]
        for fno, wt, v in _fields(buf):
            if wt == 2 and fno in sub:
                walk(v, sub[fno], depth + 1)

    walk(data, "model", 0)
    return out


# ------------------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class BackendEnv:
    """What the caller's machine offers for one plan backend (compared with a plan's recorded build)."""

    backend: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # library version, e.g. "11.4.0.106" / "1.7.1.116"
    compute_capability: str | None = None  # e.g. "sm_89"; None = do not check
    gpu_name: str | None = None

    @classmethod
    def detect(cls, backend: str) -> "BackendEnv":
        """Library version of ``backend`` and the current GPU's compute capability (via cuda-python)."""
        from .engines.tensorrt import detect_environment  # lazy: imports tensorrt / cuda-python

        return detect_environment(backend)


# ------------------------------------------------------------------------------------------- bundle
@dataclass
class EngineEntry:
    name: str
    raw: dict

    @property
    def kind(self) -> str:
        return self.raw.get("kind", "")

    @property
    def precision(self) -> str:
        return self.raw.get("precision", "fp32")

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_dict(d) for d in self.raw["inputs"])

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_dict(d) for d in self.raw["outputs"])

    @property
    def state_map(self) -> dict[str, str]:
        return dict(self.raw.get("state_map", {}))

    @property
    def step_io(self) -> StepIO:
        return StepIO(self.inputs, self.outputs, self.state_map)

    @property
    def profiles(self) -> list[dict]:
        return list(self.raw.get("profiles", []))

    @property
    def notes(self) -> str:
        return self.raw.get("notes", "")

    @property
    def files(self) -> dict[str, dict]:
        return dict(self.raw.get("files", {}))

    def file_key(self, backend: str) -> str:
        if backend == "onnxruntime":
            return "onnx"
        if backend in PLAN_BACKENDS:
            return backend
        raise BundleError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}", self.name)


@dataclass
class Bundle:
    root: Path
    manifest: dict
    engines: dict[str, EngineEntry] = field(default_factory=dict)

    # ---------------------------------------------------------------- open
    @classmethod
    def open(
        cls,
        directory: str | os.PathLike,
        *,
        backends: Iterable[str] | None = None,
        environment: Iterable[BackendEnv] | BackendEnv | None = None,
        verify_hashes: bool = True,
    ) -> "Bundle":
        """Read ``manifest.json`` and validate the bundle.

        Args:
            directory: the bundle folder.
            backends: check only the files these backends need (default: every file the manifest names).
            environment: the caller's TensorRT / TensorRT-RTX versions and GPU; plans are checked against it.
            verify_hashes: recompute every file's sha256 (off: sizes only, for very large bundles).
        Raises:
            BundleError naming the engine and the ``sanawm-export ... --engines NAME`` command to rebuild it.
        """
        root = Path(directory)
        if not root.is_dir():
            raise BundleError(f"bundle folder {root} does not exist; build one with `sanawm-export --out {root} ...`")
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise BundleError(f"{mpath} not found; {root} is not an engine bundle (build one with `sanawm-export`)")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e}); rebuild the bundle with `sanawm-export`") from None
        b = cls(root=root.resolve(), manifest=manifest)
        b._check_schema()
        b.engines = {name: EngineEntry(name, raw) for name, raw in manifest["engines"].items()}
        b.validate(backends=backends, environment=environment, verify_hashes=verify_hashes)
        return b

    # ------------------------------------------------------------- accessors
    @property
    def schema_version(self) -> int:
        return self.manifest["schema_version"]

    @property
    def sanawm_version(self) -> str:
        return self.manifest.get("sanawm_version", "")

    @property
    def source(self) -> dict:
        return dict(self.manifest.get("source", {}))

    @property
    def generator_config(self):
        """``sanawm.config.GeneratorConfig`` stored in the manifest (None if the bundle has none)."""
        d = self.manifest.get("generator_config")
        if d is None:
            return None
        from .config import GeneratorConfig

        return GeneratorConfig.from_dict(d)

    def engine(self, name: str) -> EngineEntry:
        try:
            return self.engines[name]
        except KeyError:
            raise BundleError(
                f"engine {name!r} is not in bundle {self.root} (it has {sorted(self.engines)}); "
                f"add it with `{self.rebuild_command(name)}`",
                name,
            ) from None

    def path(self, engine: str, backend: str) -> Path:
        """Absolute path of the file ``backend`` runs for ``engine`` (ONNX for onnxruntime, else a plan)."""
        e = self.engine(engine)
        key = e.file_key(backend)
        rec = e.files.get(key)
        if rec is None:
            raise BundleError(
                f"engine {engine!r} has no {backend} file in bundle {self.root}; "
                f"build it with `{self.rebuild_command(engine, backend)}`",
                engine,
            )
        return safe_path(self.root, rec["path"], f"engine {engine!r} {key} file")

    def build_info(self, engine: str, backend: str) -> dict:
        return dict(self.engine(engine).files.get(backend, {}).get("build", {}))

    def rebuild_command(self, engine: str, backend: str | None = None) -> str:
        ex = self.manifest.get("export", {})
        src = self.manifest.get("source", {})
        ck = f"--checkpoint {src['checkpoint']}" if src.get("checkpoint") else "--checkpoint PATH|--random"
        parts = ["sanawm-export", ck]
        if ex.get("config"):
            parts.append(f"--config {ex['config']}")
        parts.append(f"--out {self.root}")
        if backend:
            parts.append(f"--backends {backend}")
        prec = self.engines[engine].precision if engine in self.engines else ex.get("precision")
        if prec:
            parts.append(f"--precision {prec}")
        parts.append(f"--engines {engine}")
        return " ".join(parts)

    # ------------------------------------------------------------- validation
    def _check_schema(self) -> None:
        m = self.manifest
        if not isinstance(m, dict) or "schema_version" not in m:
            raise BundleError(f"{self.root / MANIFEST_NAME} has no schema_version; rebuild the bundle with `sanawm-export`")
        if m["schema_version"] != SCHEMA_VERSION:
            raise BundleError(
                f"bundle {self.root} has manifest schema_version {m['schema_version']!r}, this sanawm reads "
                f"{SCHEMA_VERSION}; rebuild every engine with this sanawm: `sanawm-export ... --out {self.root}` "
                f"(all engines: --engines {','.join(sorted(m.get('engines', {}))) or 'NAME'})"
            )
        if not isinstance(m.get("engines"), dict) or not m["engines"]:
            raise BundleError(f"bundle {self.root}: manifest lists no engines; rebuild it with `sanawm-export`")

    def validate(
        self,
        *,
        backends: Iterable[str] | None = None,
        environment: Iterable[BackendEnv] | BackendEnv | None = None,
        verify_hashes: bool = True,
        engines: Iterable[str] | None = None,
    ) -> None:
        if isinstance(environment, BackendEnv):
            environment = [environment]
        envs = {e.backend: e for e in (environment or [])}
        backends = list(backends) if backends is not None else None
        for b in backends or []:
            if b not in BACKENDS:
                raise BundleError(f"unknown backend {b!r}; choose one of {list(BACKENDS)}")
        for name in engines if engines is not None else self.engines:
            e = self.engine(name)
            self._check_entry(e)
            keys = list(e.files) if backends is None else [e.file_key(b) for b in backends]
            for key in keys:
                if key not in e.files:
                    be = "onnxruntime" if key == "onnx" else key
                    raise BundleError(
                        f"engine {name!r} has no {key} file in bundle {self.root}; "
                        f"build it with `{self.rebuild_command(name, be)}`",
                        name,
                    )
                rec = e.files[key]
                be = "onnxruntime" if key == "onnx" else key
                self._check_file(e, be, rec, verify_hashes)
                if key == "onnx":
                    self._check_external_data(e, rec, verify_hashes)
                elif key in PLAN_BACKENDS and key in envs:
                    self._check_plan_env(e, key, rec.get("build", {}), envs[key])

    def _check_entry(self, e: EngineEntry) -> None:
        for k in ("inputs", "outputs", "files"):
            if k not in e.raw:
                raise BundleError(f"engine {e.name!r}: manifest entry lacks {k!r}; rebuild: `{self.rebuild_command(e.name)}`", e.name)
        names = set()
        for t in e.inputs + e.outputs:
            if t.dtype not in _DTYPES:
                raise BundleError(f"engine {e.name!r}: tensor {t.name!r} has unknown dtype {t.dtype!r}", e.name)
            if t.name in names:
                raise BundleError(f"engine {e.name!r}: tensor name {t.name!r} appears twice", e.name)
            names.add(t.name)
        ins = {t.name: t for t in e.inputs}
        outs = {t.name: t for t in e.outputs}
        for o, i in e.state_map.items():
            if o not in outs or i not in ins:
                raise BundleError(
                    f"engine {e.name!r}: state_map {o!r} -> {i!r} names a tensor the engine does not have; "
                    f"rebuild: `{self.rebuild_command(e.name)}`",
                    e.name,
                )
            if outs[o].shape != ins[i].shape or outs[o].dtype != ins[i].dtype:
                raise BundleError(
                    f"engine {e.name!r}: state {o!r} {outs[o].dtype}{list(outs[o].shape)} cannot feed "
                    f"{i!r} {ins[i].dtype}{list(ins[i].shape)}",
                    e.name,
                )

    def _check_file(self, e: EngineEntry, backend: str, rec: dict, verify_hashes: bool, what: str | None = None) -> Path:
        what = what or f"engine {e.name!r} {backend} file"
        p = safe_path(self.root, rec.get("path"), what)
        fix = f"rebuild it with `{self.rebuild_command(e.name, backend)}`"
        if not p.is_file():
            raise BundleError(f"{what} {rec['path']!r} is missing from {self.root}; {fix}", e.name)
        size = p.stat().st_size
        if "size" in rec and size != rec["size"]:
            raise BundleError(
                f"{what} {rec['path']!r} has {size} bytes, the manifest recorded {rec['size']} (altered or truncated); {fix}",
                e.name,
            )
        if verify_hashes and "sha256" in rec:
            got = sha256_file(p)
            if got != rec["sha256"]:
                raise BundleError(
                    f"{what} {rec['path']!r} has sha256 {got[:16]}..., the manifest recorded "
                    f"{rec['sha256'][:16]}... (file altered); {fix}",
                    e.name,
                )
        return p

    def _check_external_data(self, e: EngineEntry, rec: dict, verify_hashes: bool) -> None:
        onnx_path = safe_path(self.root, rec["path"])
        listed = set()
        for x in rec.get("external_data", []):
            p = self._check_file(e, "onnxruntime", x, verify_hashes, f"engine {e.name!r} ONNX external data")
            listed.add(p)
        try:
            locs = onnx_external_locations(onnx_path)
        except ValueError as err:
            raise BundleError(
                f"engine {e.name!r}: {rec['path']!r} is not a readable ONNX file ({err}); "
                f"rebuild it with `{self.rebuild_command(e.name, 'onnxruntime')}`",
                e.name,
            ) from None
        base = onnx_path.parent.relative_to(self.root).as_posix()
        for tname, loc in locs:
            rel = loc if base in ("", ".") else f"{base}/{loc}"
            what = f"engine {e.name!r}: ONNX tensor {tname!r} external data location"
            if loc.startswith("/") or os.path.isabs(loc):
                raise BundleError(f"{what} {loc!r} is absolute; refused (must be relative to the ONNX file)", e.name)
            p = safe_path(self.root, rel, what)
            if p not in listed:
                raise BundleError(
                    f"{what} {loc!r} is not listed (with a hash) in the manifest; "
                    f"rebuild it with `{self.rebuild_command(e.name, 'onnxruntime')}`",
                    e.name,
                )

    def _check_plan_env(self, e: EngineEntry, backend: str, build: dict, env: BackendEnv) -> None:
        fix = f"rebuild it on this machine with `{self.rebuild_command(e.name, backend)}`"
        built = str(build.get("version", ""))
        ok = built == env.version
        if build.get("version_compatible") and built and env.version:
            ok = built.split(".")[0] == env.version.split(".")[0] and _vkey(env.version) >= _vkey(built)
        if not ok:
            raise BundleError(
                f"engine {e.name!r} {backend} plan was built with {build.get('library', backend)} {built or '?'}, "
                f"this machine has {env.version}; plans only load in the version that built them; {fix}",
                e.name,
            )
        if env.compute_capability is not None:
            ccs = [normalize_cc(c) for c in build.get("compute_capabilities", [])]
            cur = normalize_cc(env.compute_capability)
            if ccs and cur not in ccs:
                raise BundleError(
                    f"engine {e.name!r} {backend} plan was built for {', '.join(ccs)}"
                    f"{' (' + build['gpu_name'] + ')' if build.get('gpu_name') else ''}, this GPU is {cur}"
                    f"{' (' + env.gpu_name + ')' if env.gpu_name else ''}; {fix}",
                    e.name,
                )


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


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
