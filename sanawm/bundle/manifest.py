"""The manifest model: ``Bundle`` (open, look up, validate) and its ``EngineEntry`` records."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..config import CONFIGS
from ..constants import REFINER_RETIRED
from ..spec import StepIO, TensorSpec
from .env import BackendEnv, _vkey, normalize_cc
from .onnx_external import onnx_external_locations
from .paths import safe_path, sha256_file
from .schema import _DTYPES, BACKENDS, MANIFEST_NAME, PLAN_BACKENDS, SCHEMA_VERSION, BundleError


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
    def profile_dims(self) -> dict[str, dict[str, int]]:
        """Named optimization profiles of a dynamic engine: name -> sizes of its symbolic dims, in plan order."""
        return {p["name"]: dict(p["dims"]) for p in self.profiles if "name" in p}

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
        verify_hashes: bool = False,
    ) -> "Bundle":
        """Read ``manifest.json`` and validate the bundle.

        Args:
            directory: the bundle folder.
            backends: check only the files these backends need (default: every file the manifest names).
            environment: the caller's TensorRT / TensorRT-RTX versions and GPU; plans are checked against it.
            verify_hashes: also recompute every file's sha256 against the manifest (``--verify``). Off by default:
                opening then reads the manifest and the (small) ONNX graph files only, never a weight or plan
                file's contents, and checks what is cheap -- every file exists with its recorded size, every path
                and external-data location stays inside the bundle. A same-size corruption needs ``True``.
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
        from ..config import GeneratorConfig

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
        if ex.get("config") in CONFIGS:  # "detected": the checkpoint names its own config
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
        retired = sorted(set(m["engines"]) & set(REFINER_RETIRED))
        if retired:  # schema 2 before the one-engine refiner: three copies of its weights
            raise BundleError(
                f"bundle {self.root} holds the refiner as three engines {retired} (each with the full weights); this "
                f"sanawm reads one: rebuild it with `sanawm-export ... --out {self.root} --engines refiner`", retired[0])

    def validate(
        self,
        *,
        backends: Iterable[str] | None = None,
        environment: Iterable[BackendEnv] | BackendEnv | None = None,
        verify_hashes: bool = False,
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
        dynamic = [t.name for t in e.inputs + e.outputs if t.is_dynamic]
        if dynamic:
            if not e.profile_dims:
                raise BundleError(f"engine {e.name!r}: tensors {dynamic[:3]} have symbolic dims but the manifest names "
                                  f"no profiles; rebuild: `{self.rebuild_command(e.name)}`", e.name)
            for prof, dims in e.profile_dims.items():
                try:
                    for t in e.inputs + e.outputs:
                        t.concrete(dims)
                except ValueError as err:
                    raise BundleError(f"engine {e.name!r}, profile {prof!r}: {err}; rebuild: "
                                      f"`{self.rebuild_command(e.name)}`", e.name) from None
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
