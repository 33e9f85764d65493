"""The export pipeline: load the model families -> (quantize) -> export ONNX -> check on ORT -> build plans -> bundle.

``options`` is the parsed ``sanawm-export`` command line (``sanawm.export.cli.parse_args``). Bad input raises
``ExportInputError`` (the CLI logs it as one line and exits 2); anything else is a bug and propagates.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import __version__
from ..bundle import PLAN_BACKENDS
from ..constants import GENERATOR_ENGINES, REFINER_ENGINES, VAE_ENGINES
from .job import EngineJob, ExportInputError, sha256_path

log = logging.getLogger("sanawm.export")
CALIBRATED_PRECISIONS = ("fp8", "fp16", "nvfp4")  # run the calibration loop (FP8 scales, FP16 range check): it keys the stage


def collect_jobs(a) -> tuple[list[EngineJob], object, dict, dict | None, dict | None]:
    """Load every requested model family: (jobs, generator config or None, source, vae section, refiner section)."""
    ckpt_sha = None
    if a.checkpoint is not None:
        if not a.checkpoint.exists():
            raise ExportInputError(f"checkpoint {a.checkpoint} does not exist")
        log.info("hashing checkpoint %s ...", a.checkpoint)
        ckpt_sha = sha256_path(a.checkpoint)
    source = {"checkpoint": str(a.checkpoint) if a.checkpoint else None, "checkpoint_sha256": ckpt_sha,
              "random_seed": a.seed if a.random else None}
    gen_names = [e for e in a.engines if e in GENERATOR_ENGINES]
    vae_names = [e for e in a.engines if e in VAE_ENGINES]
    ref_names = [e for e in a.engines if e in REFINER_ENGINES]
    cfg = vae_info = ref_info = None
    jobs: list[EngineJob] = []
    if gen_names or vae_names or ref_names:
        from .families.generator import generator_config

        # a real checkpoint names its own config (detected; a mismatching --config is refused); --random: a.config
        cfg, a.config = generator_config(a.checkpoint, a.config)
        source["config_detected"] = a.checkpoint is not None
    kv = getattr(a, "kv_dtype", "auto")
    kv = ("fp16" if a.precision in CALIBRATED_PRECISIONS else "fp32") if kv == "auto" else kv
    kv = {"fp16": "float16", "fp32": "float32"}[kv]  # the K/V windows' storage type (generator and refiner)
    if gen_names:
        from .families.generator import generator_jobs, load_generator_model

        if getattr(a, "streamed", False):  # ghost model, weights streamed from the file (families.generator_streamed)
            from .families.generator_streamed import streamed_generator_jobs

            jobs += streamed_generator_jobs(a, cfg, gen_names, kv, calibrate=_generator_calibration(a, cfg))
        else:
            model = load_generator_model(a.checkpoint, cfg, a.seed)
            jobs += generator_jobs(cfg, model, gen_names, a.calib_chunks, kv_dtype=kv,
                                   calibrate=_generator_calibration(a, cfg))
    if vae_names:
        from .families.vae import prepare_vae

        vjobs, vae_info = prepare_vae(a.vae, a.config, a.seed, cfg, a.precision, vae_names)
        jobs += vjobs
    if ref_names:
        from .families.refiner import prepare_refiner
        from .families.refiner_loop import use_calibration_set

        if getattr(a, "streamed", False):  # ghost refiner, weights streamed from its folder (families.refiner_streamed)
            from .families.refiner_streamed import streamed_refiner_jobs

            rjobs, ref_info = streamed_refiner_jobs(a, cfg, ref_names, kv, a.precision in CALIBRATED_PRECISIONS)
        else:
            rjobs, ref_info = prepare_refiner(a.refiner, a.seed, cfg, a.precision, ref_names,
                                              a.refiner_caption_length, a.refiner_kv_max_frames, a.refiner_fps,
                                              a.calib_chunks, a.precision in CALIBRATED_PRECISIONS, kv_dtype=kv)
            if a.precision in CALIBRATED_PRECISIONS:
                use_calibration_set(a, rjobs, ref_info, streamed=False)
        jobs += rjobs
    if "toy" in a.engines:
        from .families.toy import toy_job

        jobs.append(toy_job(a.seed))
    return jobs, cfg, source, vae_info, ref_info


def _generator_calibration(a, cfg):
    """The generator's calibration loop over the export's calibration set (None: the random-input loop);
    records the set on ``a.calibration`` for the manifest and the stage keys."""
    a.calibration = None
    if a.precision not in CALIBRATED_PRECISIONS:
        return None
    from .calibration import calibration_set, streaming_calibration, wants_real_set
    from .calibration_data import random_set

    if a.precision == "fp16" and not wants_real_set(a):  # FP16 range check: real inputs when given, else random
        cset = random_set()
    else:
        cset = calibration_set(a, cfg)
    a.calibration = cset.to_manifest()
    log.info("calibration set: %s (%d clip(s) x %d chunk(s), sha256 %s)", cset.name, cset.clips, a.calib_chunks,
             (cset.sha256 or "-")[:12])
    return None if cset.name == "random" else streaming_calibration(cfg, cset, a.calib_chunks)


def export_and_check(job: EngineJob, art, precision: str, a, opset: int) -> dict:
    """One engine's ONNX stage: quantize or convert, export, and check the graph against torch on ORT CPU."""
    from .half import convert_fp16
    from .onnx import export_onnx
    from .quantize import quantize_fp8

    module, facts = job.module, {"opset": opset}
    calibrate, kv_seen = job.calibrate, None
    if calibrate is not None and precision in CALIBRATED_PRECISIONS and any(
            t.name.endswith("_chunk") and t.dtype == "float16" for t in job.io.outputs):
        from .kv_range import observe_kv

        calibrate, kv_seen = observe_kv(calibrate)  # the FP16 K/V window is range-checked over the same run
    what = f"{max(1, a.calib_chunks) + 1} refiner block(s)" if job.name in REFINER_ENGINES else f"{a.calib_chunks} chunk(s)"
    if precision == "fp8":
        log.info("[%s] fp8: calibrating over %s ...", job.name, what)
        pol = getattr(a, "policy", None)
        kw = {} if pol is None else {"exclude": pol.exclude_patterns(job.module) or None, "act_scale": pol.act_scale}
        module, rep = quantize_fp8(job.module, calibrate, **kw)
        facts["fp8_layers"] = rep.layers
        if pol is not None:
            facts["precision_policy"] = pol.to_manifest(job.module)
    elif precision == "nvfp4":
        from .nvfp4 import quantize_nvfp4

        log.info("[%s] nvfp4: calibrating over %s ...", job.name, what)
        pol = getattr(a, "policy", None)
        module, rep = quantize_nvfp4(job.module, calibrate,
                                     exclude=(pol.exclude_patterns(job.module) or None) if pol is not None else None)
        facts["nvfp4_layers"] = rep.layers
        if pol is not None:
            facts["precision_policy"] = pol.to_manifest(job.module)
    elif precision == "fp16":
        log.info("[%s] fp16: converting, range check over %s ...", job.name, what)
        module, hrep = convert_fp16(job.module, calibrate)
        facts["fp16_layers"] = hrep.layers
        facts["fp16_max_activation"] = hrep.max_activation
    if kv_seen is not None:
        from .kv_range import check_kv_range

        facts["kv_max_abs"] = check_kv_range(job.name, kv_seen)
        log.info("[%s] fp16 K/V window: max |K/V| %.4g over the calibration run", job.name, facts["kv_max_abs"])
    sample = job.sample() if callable(job.sample) else job.sample
    checks = [job.profile_samples(p) for p in job.profiles] if job.profiles else None
    res = export_onnx(module, job.io, art.onnx, opset=opset, sample_inputs=sample, dims=job.dims, check_inputs=checks)
    facts["opset"] = res.opset  # NVFP4 graphs are lifted to opset 23
    if precision == "nvfp4":  # ONNX Runtime has no FP4 kernels: export_onnx checked on onnx's reference evaluator
        from .nvfp4_onnx import NVFP4_CHECK_BOUND

        log.info("[%s] onnx check on onnx's reference evaluator: max rel err %.2e vs torch fake quant", job.name,
                 res.max_rel_error)
        facts["reference_check_rel_error"] = res.max_rel_error
    else:
        log.info("[%s] onnx check on ORT CPU: max rel err %.2e vs torch", job.name, res.max_rel_error)
        facts["ort_check_rel_error"] = res.max_rel_error
    # FP16: a 1-ulp FP32 difference before a Cast moves the FP16 value by one FP16 ulp (2^-11 relative),
    # and chained layers add them up (tiny generator: 1.2e-3); a wrong graph is O(1)
    err, what, bound = res.max_rel_error, "rel err", 5e-3 if precision == "fp16" else 1e-3
    if precision == "nvfp4":
        what, bound = "free-running NVFP4 rel err", NVFP4_CHECK_BOUND
    if precision == "fp8":
        # Free-running FP8 outputs drift apart by FP8 rounding flips however correct the graph is
        # (see fp8_layer_check); gate on the teacher-forced comparison where it is defined.
        from .blocks import AmbiguousTaps, fp8_layer_check
        from .onnx import random_inputs

        try:
            io = job.io.concrete(list(job.profiles.values())[-1]) if job.profiles else job.io  # the largest call
            chk = fp8_layer_check(module, io, art.onnx, sample if sample is not None else random_inputs(job.io))
            err, what = max(chk["forced"].values()), "teacher-forced FP8 rel err"
            facts["ort_check_fp8_forced_rel_error"] = err
        except AmbiguousTaps:  # a layer runs twice per call: keep the free-running check, FP8-level bound
            what, bound = "free-running FP8 rel err", 5e-2
        log.info("[%s] fp8 check: %s %.2e (bound %.0e)", job.name, what, err, bound)
    if not err < bound:
        raise RuntimeError(f"[{job.name}] ONNX and torch disagree ({what} {err:.2e} >= {bound:.0e}); "
                           "not writing the bundle")
    return facts


def build_plans(w, job: EngineJob, a) -> None:
    """The TensorRT / TensorRT-RTX plan stages of one engine (one per requested plan backend)."""
    for b in a.backends:
        if b not in PLAN_BACKENDS:
            continue
        from ..engines.tensorrt import import_trt
        from .build import build_engine

        trt = import_trt(b)
        targets = [t for t in a.rtx_targets.split(",") if t] if b == "tensorrt_rtx" else None
        stream = job.name in a.weight_streaming
        bkey = {"backend": b, "version": trt.__version__, "opt": a.opt_level, "targets": targets}
        if stream:
            bkey["weight_streaming"] = True

        profiles = None
        if job.profiles:  # one optimization profile per call shape, in the manifest's profile order
            profiles = [{t.name: (t.shape,) * 3 for t in job.io.concrete(dims).inputs
                         if next(x for x in job.io.inputs if x.name == t.name).is_dynamic}
                        for dims in job.profiles.values()]

        def build(art, b=b, targets=targets, stream=stream, profiles=profiles):
            return build_engine(art.onnx, art.plan(b), backend=b, optimization_level=a.opt_level,
                                timing_cache=a.timing_cache, compute_capabilities=targets,
                                weight_streaming=stream, profiles=profiles).build

        w.stage_plan(job.name, b, bkey, build)


def _precision_record(a) -> dict:
    """The manifest's ``export.calibration`` (set name, hash, sources) and ``export.precision_policy``."""
    out = {}
    if getattr(a, "calibration", None) is not None:
        out["calibration"] = a.calibration
    if a.precision == "fp8" and getattr(a, "policy", None) is not None:
        out["precision_policy"] = a.policy.to_manifest()
    return out


def run_export(a) -> Path:
    """The whole export for parsed options ``a``; returns the manifest path."""
    from .bundle_writer import BundleWriter
    from .half import FP16RangeError
    from .onnx import DEFAULT_OPSET

    opset = a.opset or DEFAULT_OPSET
    jobs, cfg, source, vae_info, ref_info = collect_jobs(a)
    w = BundleWriter(
        a.out,
        source=source,
        export={"config": a.config, "precision": a.precision, "opset": opset, "calib_chunks": a.calib_chunks,
                **_precision_record(a)},
        generator_config=cfg.to_dict() if cfg is not None else None,
        vae=vae_info,
        refiner=ref_info,
    )
    if cfg is not None:  # what the runtime checks prompt files against (sanawm.text.spec)
        from ..text.spec import expected_stage1_encoder

        w.manifest["text"] = {
            "stage1_encoder": expected_stage1_encoder(cfg),
            "caption_length": cfg.caption_length,
            "caption_channels": cfg.caption_channels,
            "refiner_channels": (ref_info or {}).get("layout", {}).get("caption_channels"),
        }
    for job in jobs:
        precision = job.precision or a.precision
        profiles = [{"name": k, "dims": v} for k, v in (job.profiles or {}).items()]
        w.engine(job.name, kind=job.kind, io=job.io, precision=precision, notes=job.notes, profiles=profiles)
        if job.key is not None:  # VAE: its own weights; the generator checkpoint does not matter
            key = {**job.key, "engine": job.name, "precision": precision, "opset": opset, "sanawm": __version__}
        else:
            key = {"source": source, "config": a.config, "cfg": cfg.to_dict() if cfg else None, "engine": job.name,
                   "precision": precision, "opset": opset, "sanawm": __version__,
                   "calib_chunks": a.calib_chunks if precision in CALIBRATED_PRECISIONS else None}
            if precision in CALIBRATED_PRECISIONS:  # another calibration set or policy re-exports the stage
                key.update(_precision_record(a))
        try:
            w.stage_onnx(job.name, key, lambda art, job=job, precision=precision:
                         (job.export or export_and_check)(job, art, precision, a, opset))
        except FP16RangeError as e:  # bad input for this precision, not a bug: say which layers and what to do
            raise ExportInputError(f"[{job.name}] {e}") from e
        build_plans(w, job, a)
    path = w.write()
    log.info("bundle written: %s (%d engines)", path, len(w.manifest["engines"]))
    return path
