"""TensorRT / TensorRT-RTX engine builder shared by both products (build side; no torch needed).

ONNX file -> strongly typed network -> builder config (optimisation level, timing cache, profile,
target compute capabilities for TensorRT-RTX's CPU-only AOT builds) -> serialized plan on disk, plus the
build environment the manifest records so the runtime can refuse a plan built for another TensorRT or GPU.

Precision lives in the ONNX graph (TensorRT 11 and TensorRT-RTX are strongly typed: FP32 I/O, FP8 through
explicit Q/DQ); there are no precision flags to set.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..engines.tensorrt import import_trt

log = logging.getLogger("sanawm.export")

# TensorRT-RTX targets (no SM90: it is the workstation product). Default: Ampere, Ada, Blackwell RTX.
DEFAULT_RTX_TARGETS = ("sm_86", "sm_89", "sm_120")


class BuildError(RuntimeError):
    pass


@dataclass
class BuildResult:
    plan_path: Path
    build: dict  # recorded under files.<backend>.build in the manifest
    seconds: float
    profiles: list = field(default_factory=list)


class _Logger:
    """A trt.ILogger that keeps errors for the exception message and forwards the rest to logging."""

    def __init__(self, trt):
        class L(trt.ILogger):
            def __init__(s):
                trt.ILogger.__init__(s)
                s.errors = []

            def log(s, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    s.errors.append(msg)
                    log.error("[%s] %s", trt.__name__, msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("[%s] %s", trt.__name__, msg)
                else:
                    log.debug("[%s] %s", trt.__name__, msg)

        self.logger = L()


def _cc_enum(trt, cc: str):
    from ..bundle import normalize_cc

    name = normalize_cc(cc).replace("sm_", "SM")
    if not hasattr(trt.ComputeCapability, name):
        raise BuildError(
            f"{trt.__name__} cannot target {cc}; it supports "
            f"{[n for n in trt.ComputeCapability.__members__ if n.startswith('SM')]}"
        )
    return getattr(trt.ComputeCapability, name)


def set_weight_streaming(trt, config, backend: str, strongly_typed: bool) -> None:
    """Turn on ``BuilderFlag.WEIGHT_STREAMING`` (TensorRT >= 10 / TensorRT-RTX), or say why it cannot be.

    TensorRT streams weights only for strongly typed networks. In TensorRT 11 and TensorRT-RTX every network
    is strongly typed (the ``STRONGLY_TYPED`` creation flag may not even exist); in TensorRT 10 the network
    must have been created with that flag (``build_engine`` always sets it when it exists).
    """
    flag = getattr(getattr(trt, "BuilderFlag", None), "WEIGHT_STREAMING", None)
    if flag is None:
        raise BuildError(
            f"{backend} ({trt.__name__} {getattr(trt, '__version__', '?')}) has no BuilderFlag.WEIGHT_STREAMING; "
            "weight streaming needs TensorRT >= 10.0 or TensorRT-RTX: upgrade it or build without --weight-streaming"
        )
    has_st_flag = hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED")
    if has_st_flag and not strongly_typed:
        raise BuildError(
            "weight streaming needs a strongly typed network (NetworkDefinitionCreationFlag.STRONGLY_TYPED); "
            "this network was created without it"
        )
    config.set_flag(flag)
    log.info("weight streaming enabled: the plan's weights may stay in host memory (set the budget at run time)")


def add_profiles(builder, config, onnx_path, dynamic: Sequence[str], fixed_shapes, profiles: list) -> list[dict]:
    """Add one optimization profile per entry of ``profiles`` over the ``dynamic`` inputs; returns what the
    manifest records: ``[{input: {min, opt, max}}, ...]`` in profile order (empty for a static graph)."""
    if not dynamic:
        return []
    recorded = []
    for k, p in enumerate(profiles):
        shapes = {n: (tuple(v),) * 3 for n, v in (fixed_shapes or {}).items()}
        shapes.update({n: tuple(tuple(s) for s in v) for n, v in p.items()})
        missing = [n for n in dynamic if n not in shapes]
        if missing:
            raise BuildError(f"{onnx_path} has dynamic inputs {missing} with no shape in profile {k}; "
                             "pass fixed_shapes, profile or profiles")
        prof = builder.create_optimization_profile()
        rec = {}
        for n in dynamic:
            mn, opt, mx = shapes[n]
            prof.set_shape(n, mn, opt, mx)
            rec[n] = {"min": list(mn), "opt": list(opt), "max": list(mx)}
        if config.add_optimization_profile(prof) < 0:
            raise BuildError(f"{onnx_path}: TensorRT rejected optimization profile {k} {rec}")
        recorded.append(rec)
    return recorded


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    backend: str = "tensorrt_rtx",
    optimization_level: int = 3,
    timing_cache: str | os.PathLike | None = None,
    profile: Mapping[str, Sequence[Sequence[int]]] | None = None,
    profiles: Sequence[Mapping[str, Sequence[Sequence[int]]]] | None = None,
    fixed_shapes: Mapping[str, Sequence[int]] | None = None,
    compute_capabilities: Sequence[str] | None = None,
    workspace_bytes: int | None = None,
    weight_streaming: bool = False,
) -> BuildResult:
    """Build a plan from an ONNX file.

    Args:
        onnx_path: parsed from the file, so its external data resolves.
        backend: "tensorrt" or "tensorrt_rtx".
        optimization_level: builder optimisation level 0-5 (3 = TensorRT default; 4 used for FP8 diffusion).
        timing_cache: file loaded before the build (if it exists) and saved after.
        profile: {input: (min, opt, max)} for inputs with dynamic dims; ``fixed_shapes`` {input: shape}
            pins min = opt = max (used when the ONNX has symbolic dims). Fully static graphs need neither.
        profiles: several optimization profiles, each ``{input: (min, opt, max)}`` (e.g. one per chunk length
            of the dynamic generator graph, ``sanawm.spec_dynamic.trt_profiles``); profile i of the plan is
            ``profiles[i]`` (``fixed_shapes`` fills inputs a profile leaves out). Exclusive with ``profile``.
        compute_capabilities: TensorRT-RTX targets (e.g. ["sm_89"]); default ``DEFAULT_RTX_TARGETS``.
            Ignored by datacenter TensorRT, which builds for the GPU it runs on.
        weight_streaming: set ``BuilderFlag.WEIGHT_STREAMING`` so the runtime may keep only part of the
            weights on the device (``TensorRTEngine(weight_streaming_budget=...)``; the refiner is the
            largest model). Needs a strongly typed network (what this builder always creates); recorded as
            ``build.weight_streaming`` in the manifest. Untested here (no GPU / full TensorRT on the build
            machine): only the flag plumbing is unit-tested with a fake ``trt`` module.
    Returns:
        BuildResult with the build facts for the manifest.
    """
    trt = import_trt(backend)
    t0 = time.time()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    L = _Logger(trt).logger
    builder = trt.Builder(L)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    strongly_typed = bool(flags)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, L)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"{backend} could not parse {onnx_path}: {'; '.join(errs) or L.errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = int(optimization_level)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if weight_streaming:
        set_weight_streaming(trt, config, backend, strongly_typed)

    targets: list[str] = []
    if backend == "tensorrt_rtx":
        from ..bundle import normalize_cc

        targets = [normalize_cc(c) for c in (compute_capabilities or DEFAULT_RTX_TARGETS)]
        config.num_compute_capabilities = len(targets)
        for i, c in enumerate(targets):
            if not config.set_compute_capability(_cc_enum(trt, c), i):
                raise BuildError(f"{backend} rejected compute capability {c}")

    # profiles: only needed for inputs with dynamic dims
    if profile is not None and profiles is not None:
        raise BuildError("pass either profile (one) or profiles (several), not both")
    dynamic = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(d < 0 for d in t.shape):
            dynamic.append(t.name)
    recorded = add_profiles(builder, config, onnx_path, dynamic, fixed_shapes,
                            list(profiles) if profiles is not None else [profile or {}])

    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        n_err = len(L.errors)
        cache = config.create_timing_cache(blob)
        if len(L.errors) > n_err:  # e.g. TensorRT-RTX on a machine without a CUDA driver
            log.warning("timing cache %s could not be loaded (%s); building without it", cache_path, L.errors[n_err:])
            del L.errors[n_err:]
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    log.info("building %s plan %s from %s (opt level %d%s)", backend, plan_path.name, onnx_path.name,
             optimization_level, f", targets {targets}" if targets else "")
    ser = builder.build_serialized_network(network, config)
    if ser is None:
        raise BuildError(f"{backend} failed to build {onnx_path}: {'; '.join(L.errors) or 'no error message (see log)'}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_suffix(plan_path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(memoryview(ser))
    os.replace(tmp, plan_path)
    if cache_path is not None:
        tc = config.get_timing_cache()
        if tc is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(memoryview(tc.serialize())))

    gpu_name, ccs = None, targets
    if backend == "tensorrt":  # datacenter TensorRT: the plan is for the GPU it was built on
        try:
            from ..engines.tensorrt import detect_environment

            env = detect_environment(backend)
            gpu_name, ccs = env.gpu_name, [env.compute_capability]
        except Exception as e:  # noqa: BLE001
            log.warning("could not read the build GPU (%s); the manifest will not pin a compute capability", e)
    build = {
        "library": trt.__name__,
        "version": trt.__version__,
        "compute_capabilities": ccs,
        "gpu_name": gpu_name,
        "builder_optimization_level": int(optimization_level),
        "strongly_typed": True,
        "version_compatible": False,
        "weight_streaming": bool(weight_streaming),
        "host": platform.machine(),
    }
    secs = time.time() - t0
    log.info("built %s in %.1fs (%d bytes)", plan_path.name, secs, plan_path.stat().st_size)
    return BuildResult(plan_path, build, secs, recorded)
