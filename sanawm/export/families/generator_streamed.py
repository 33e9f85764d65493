"""``sanawm-export --streamed``: the ``generator`` engine through the memory-bounded path (``sanawm.export.streamed``).

Same bundle entry as the whole-model path (``generator_jobs``: engine name, io, profiles, dims, sample feeds,
calibration loop, manifest facts); only the ONNX stage differs: a ghost model (no weight memory), block-streamed
FP8 calibration, weights streamed from the safetensors checkpoint into ``generator.onnx.data``. The ORT check needs
the torch twin's weights, so it runs on the written graph only while the whole model is small
(``CHECK_WHOLE_BYTES``); otherwise on a depth-reduced graph exported by the same code path from the same file
(``softmax_every_n`` blocks: one softmax block and the linear-attention blocks before it).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ...constants import GENERATOR

log = logging.getLogger("sanawm.export")
STREAMED_PRECISIONS = ("fp32", "fp8")
CHECK_WHOLE_BYTES = 256 << 20  # below a quarter of one full-width block: checking the whole graph costs no more RAM
CHECK_BOUND = 1e-3  # ORT vs torch (FP32 rel err, FP8 teacher-forced rel err): the whole-model path's bound
OFFICIAL_PREFIX = "model."  # official files may nest the generator's keys under "model." (sanawm.models.loading)


def streamed_refusal(a) -> str | None:
    """Why ``--streamed`` cannot apply to the resolved options ``a`` (one line naming the fix), or None."""
    from ...constants import REFINER_ENGINES

    gen, ref = GENERATOR in a.engines, any(e in REFINER_ENGINES for e in a.engines)
    if not gen and not ref:
        return (f"--streamed applies to the {GENERATOR!r} and refiner engines; add one to --engines or drop "
                "--streamed")
    if a.precision not in STREAMED_PRECISIONS:
        return (f"--streamed exports {' / '.join(STREAMED_PRECISIONS)}, not {a.precision}: change --precision or "
                "drop --streamed")
    if a.act_scale != "max":
        return "--streamed calibrates activation scales by max: drop --act-scale or --streamed"
    if ref:
        from .refiner_streamed import refiner_refusal

        msg = refiner_refusal(a.refiner)
        if msg:
            return msg
    if not gen:
        return None
    ck = a.checkpoint
    if ck is None:
        return ("--streamed reads the generator's weights from a .safetensors checkpoint; --random has none: drop "
                "--streamed, or export the streamed refiner alone (--engines refiner --refiner DIR)")
    if Path(ck).is_dir():
        return (f"--streamed reads an official-format .safetensors file, not a diffusers folder ({ck}): pass the "
                "official .safetensors checkpoint or drop --streamed")
    if Path(ck).suffix not in (".safetensors", ".pt", ".pth"):
        return (f"--streamed reads an official .safetensors or .pt file, not {Path(ck).suffix or 'this'} ({ck}): "
                "convert it to .safetensors or drop --streamed")
    return None


def ghost_engine(cfg, kv_dtype: str):
    """The ``generator`` engine module over a ghost-parameter SanaWMGenerator (no weight memory)."""
    from ...models.generator_engine import GeneratorEngine
    from ...models.transformer import SanaWMGenerator
    from ..weights_stream import ghost_parameters_, meta_parameters

    with meta_parameters():
        model = SanaWMGenerator(cfg).eval()
    ghost_parameters_(model)
    return GeneratorEngine(model, kv_dtype=kv_dtype).eval()


def weight_source(checkpoint, eng):
    """The checkpoint tensors behind ``eng``'s parameters (keys with or without the official ``model.`` prefix)."""
    from ..job import ExportInputError
    from ..scale import GENERATOR_PREFIX
    from ...models.loading import CheckpointError, detect_kind
    from ..weights_stream import PtReader, SafetensorsReader, StreamError, WeightSource

    try:
        reader = PtReader(checkpoint) if detect_kind(checkpoint) == "training" else SafetensorsReader(checkpoint)
        nested = any(k.startswith(OFFICIAL_PREFIX + "blocks.") for k in reader.keys())
        prefix = GENERATOR_PREFIX[: -len(OFFICIAL_PREFIX)] if nested else GENERATOR_PREFIX
        return WeightSource(reader, eng, prefix)
    except (StreamError, CheckpointError) as e:
        raise ExportInputError(str(e)) from None


def streamed_generator_jobs(a, cfg, names, kv_dtype: str, calibrate=None):
    """``generator_jobs`` over a ghost model, its ONNX stage replaced by the streamed export."""
    from .generator import generator_calibration, generator_jobs

    eng = ghost_engine(cfg, kv_dtype)
    jobs = generator_jobs(cfg, eng.step.model, names, a.calib_chunks, kv_dtype=kv_dtype,
                          calibrate=calibrate or generator_calibration(cfg, None, a.calib_chunks))
    for job in jobs:
        job.export = lambda job, art, precision, a, opset: export_generator_streamed(job, art, precision, a, opset,
                                                                                   cfg, kv_dtype)
    return jobs


def _step_of(eng):
    """The module calls of the generator's calibration loops: a ``GeneratorStep`` over this engine's model (both loops
    wrap the model in one; ``sanawm.export.calibration``, ``families.generator``)."""
    from ...models.generator_step import GeneratorStep

    return lambda m: isinstance(m, GeneratorStep) and m.model is eng.step.model


def _quantize(eng, src, calibrate, a) -> dict:
    from ..streamed import quantize_streamed

    pol = getattr(a, "policy", None)
    exclude = (pol.exclude_patterns(eng) or None) if pol is not None else None
    dev = getattr(a, "calib_device", "cpu")
    rep = quantize_streamed(eng, src, calibrate, exclude=exclude, device=dev, entry=_step_of(eng))
    return {"fp8_layers": rep.layers, "calib_device": dev,
            **({"precision_policy": pol.to_manifest(eng)} if pol is not None else {})}


def export_generator_streamed(job, art, precision, a, opset, cfg, kv_dtype) -> dict:
    """The streamed ONNX stage of the ``generator`` job (``EngineJob.export``): facts for the manifest."""
    from ..streamed import export_streamed

    eng, calibrate, kv_seen = job.module, job.calibrate, None
    src = weight_source(a.checkpoint, eng)
    facts = {"opset": opset, "streamed": True}
    if precision == "fp8":
        if any(t.name.endswith("_chunk") and t.dtype == "float16" for t in job.io.outputs):
            from ..kv_range import observe_kv

            calibrate, kv_seen = observe_kv(calibrate)  # the FP16 K/V window, range-checked over the same run
        log.info("[%s] fp8: block-streamed calibration over %d chunk(s) on %s ...", job.name, a.calib_chunks,
                 getattr(a, "calib_device", "cpu"))
        facts.update(_quantize(eng, src, calibrate, a))
    if kv_seen is not None:
        from ..kv_range import check_kv_range

        facts["kv_max_abs"] = check_kv_range(job.name, kv_seen)
    sample = job.sample() if callable(job.sample) else job.sample
    export_streamed(eng, job.io, art.onnx, src, sample_inputs=sample, opset=opset, dims=job.dims)
    if src.nbytes(src.params) <= CHECK_WHOLE_BYTES:
        err = check_graph(eng, src, art.onnx, cfg, kv_dtype, precision)
        facts["ort_check_depth"] = cfg.num_layers
    else:
        err, facts["ort_check_depth"] = check_depth_reduced(a, art.onnx.parent, cfg, kv_dtype, precision, opset)
    return checked(job.name, facts, err, precision, "blocks")


def checked(name: str, facts: dict, err: float, precision: str, unit: str) -> dict:
    """``facts`` with the streamed graph's ORT check recorded; refuses (nothing written) when it misses the bound."""
    facts["ort_check_fp8_forced_rel_error" if precision == "fp8" else "ort_check_rel_error"] = err
    log.info("[%s] streamed check on ORT CPU (%d %s): %s %.2e (bound %.0e)", name, facts["ort_check_depth"], unit,
             "teacher-forced FP8 rel err" if precision == "fp8" else "rel err", err, CHECK_BOUND)
    if not err < CHECK_BOUND:
        raise RuntimeError(f"[{name}] streamed ONNX and torch disagree (rel err {err:.2e} >= {CHECK_BOUND:.0e}); "
                           "not writing the bundle")
    return facts


def check_graph(eng, src, onnx_path, cfg, kv_dtype, precision) -> float:
    """Max relative error of the streamed graph vs its torch module (weights loaded for the check, then dropped):
    FP32 per output over both profiles; FP8 teacher-forced (``fp8_layer_check``) at the largest profile."""
    from ...spec import generator_profiles
    from ...testing import rel_error
    from ..onnx import run_onnx_cpu, run_torch
    from .generator import generator_engine_feeds

    names = list(src.params)
    src.materialize_(names)
    try:
        profiles = generator_profiles(cfg)
        if precision == "fp8":
            from ..blocks import fp8_layer_check

            prof = list(profiles)[-1]
            feeds = generator_engine_feeds(cfg, prof, seed=11, kv_dtype=kv_dtype)
            return max(fp8_layer_check(eng, eng.io.concrete(profiles[prof]), onnx_path, feeds)["forced"].values())
        err = 0.0
        for prof in profiles:
            feeds = generator_engine_feeds(cfg, prof, seed=11, kv_dtype=kv_dtype)
            ref, got = run_torch(eng, eng.io, feeds), run_onnx_cpu(onnx_path, feeds)
            err = max([err] + [rel_error(ref[n], got[n]) for n in ref])
        return err
    finally:
        src.ghost_(names)


def check_depth_reduced(a, where: Path, cfg, kv_dtype, precision, opset) -> tuple[float, int]:
    """``check_graph`` on a ``softmax_every_n``-block export of the same checkpoint through the same code path
    (FP8: calibrated on the random-input loop; the check is of the graph, not of the scales)."""
    from ...spec_dynamic import frame_bounds
    from ..scale import depth_reduced
    from ..streamed import export_streamed
    from .generator import generator_calibration, generator_engine_feeds

    k = min(cfg.num_layers, cfg.softmax_every_n)
    rcfg = depth_reduced(cfg, k)
    eng = ghost_engine(rcfg, kv_dtype)
    src = weight_source(a.checkpoint, eng)
    if precision == "fp8":
        _quantize(eng, src, generator_calibration(rcfg, None, 1), a)
    with tempfile.TemporaryDirectory(dir=where, prefix=".check-") as tmp:
        path = export_streamed(eng, eng.io, Path(tmp) / "generator.onnx", src, opset=opset, dims=frame_bounds(rcfg),
                               sample_inputs=generator_engine_feeds(rcfg, "next", seed=7, kv_dtype=kv_dtype))
        return check_graph(eng, src, path, rcfg, kv_dtype, precision), k
