"""``sanawm-export --streamed``: the ``refiner`` engine through the memory-bounded path (``sanawm.export.streamed``).

Same bundle entry as the whole-model path (``prepare_refiner``: engine, io, profiles, layout, manifest section);
only the model and the ONNX stage differ: a ghost ``SanaWMLTX2RefinerTransformer3DModel`` built from the folder's
``config.json`` (no weight memory; its audio modules are ghosts too and are never read: the video-only engine does
not use them), FP8 calibration streaming one ``transformer_blocks.i`` at a time (the engine's ``core.layers.i``), and
the weights streamed from the diffusers safetensors (one file or sharded; bf16 on disk is read and cast per tensor)
into ``refiner.onnx.data``. The ORT check runs on the written graph while the model is small, else on a one-layer
graph exported by the same code path from the same files.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from .generator_streamed import CHECK_WHOLE_BYTES, checked

log = logging.getLogger("sanawm.export")
ENGINE_LAYERS, CKPT_LAYERS = "core.layers.", "transformer_blocks."  # RefinerEngine name -> diffusers checkpoint key
ENGINE_CORE = "core."
CHECK_LAYERS = 1  # depth of the ORT check graph of a large refiner (every layer has the same structure)


def checkpoint_key(name: str) -> str:
    """The diffusers checkpoint key of a ``RefinerEngine`` parameter name."""
    if name.startswith(ENGINE_LAYERS):
        return CKPT_LAYERS + name[len(ENGINE_LAYERS):]
    return name[len(ENGINE_CORE):] if name.startswith(ENGINE_CORE) else name


def refiner_folder(path) -> Path:
    """The folder holding the refiner's ``config.json``: ``path`` or its ``transformer/`` (the repo root)."""
    p = Path(path)
    sub = p / "transformer"
    return sub if not (p / "config.json").is_file() and (sub / "config.json").is_file() else p


def refiner_refusal(path) -> str | None:
    """Why ``--streamed`` cannot read the refiner at ``path`` (one line naming the fix), or None."""
    if path is None:
        return ("--streamed reads the refiner's weights from its diffusers folder; the random refiner has none: pass "
                "--refiner DIR, or leave the refiner out of --engines / drop --streamed")
    from ..weights_stream import INDEX_SUFFIX

    d = refiner_folder(path)
    if not (d / "config.json").is_file():
        return (f"--streamed reads a diffusers refiner folder (config.json + safetensors); {path} has no config.json "
                "(nor transformer/config.json): pass the refiner's transformer/ folder or drop --streamed")
    if not any(d.glob("*.safetensors")) and not any(d.glob("*" + INDEX_SUFFIX)):
        return (f"--streamed reads safetensors weights; {d} has none (a .bin checkpoint?): convert it to safetensors "
                "or drop --streamed")
    return None


def calib_device_refusal(a) -> str | None:
    """Why ``--calib-device`` (not cpu) cannot apply to the options ``a`` (one line naming the fix), or None."""
    import torch

    if a.calib_device == "cuda" and not torch.cuda.is_available():
        return ("--calib-device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); use "
                "--calib-device cpu (the default) or run on a machine with an NVIDIA GPU and a CUDA build of torch")
    if a.precision != "fp8":
        return f"--calib-device sets where FP8 calibration runs; --precision is {a.precision}: drop --calib-device"
    if not a.streamed:
        return ("--calib-device applies to the streamed export (block-streamed calibration): add --streamed "
                "or drop --calib-device")
    return None


def ghost_refiner_transformer(path, num_layers: int | None = None):
    """``SanaWMLTX2RefinerTransformer3DModel`` of the folder's ``config.json`` (``num_layers``: depth-reduced) with
    ghost parameters: shapes only, no weight memory."""
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel

    from ..weights_stream import ghost_parameters_, meta_parameters

    cfg = json.loads((refiner_folder(path) / "config.json").read_text())
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    with meta_parameters():
        model = SanaWMLTX2RefinerTransformer3DModel.from_config(cfg)
    ghost_parameters_(model)
    return model.eval()


def weight_source(path, eng, device: str = "cpu"):
    """The checkpoint tensors behind ``eng``'s parameters (single or sharded diffusers safetensors)."""
    from ..job import ExportInputError
    from ..weights_stream import StreamError, WeightSource, open_safetensors

    try:
        return WeightSource(open_safetensors(refiner_folder(path)), eng, key_map=checkpoint_key, device=device)
    except StreamError as e:
        raise ExportInputError(str(e)) from None


def streamed_refiner_jobs(a, cfg, names, kv_dtype: str, calibrated: bool):
    """``prepare_refiner`` over a ghost refiner, its calibration the engine loop (``refiner_loop``) and its ONNX
    stage streamed."""
    from ...refiner_layout import RefinerLayout
    from .refiner import prepare_refiner
    from .refiner_loop import use_calibration_set

    jobs, info = prepare_refiner(a.refiner, a.seed, cfg, a.precision, names, a.refiner_caption_length,
                                 a.refiner_kv_max_frames, a.refiner_fps, a.calib_chunks, calibrated,
                                 kv_dtype=kv_dtype, build=ghost_refiner_transformer)
    if calibrated:
        use_calibration_set(a, jobs, info, streamed=True)
    layout = RefinerLayout.from_manifest(info)
    for job in jobs:
        job.key = {**(job.key or {}), "streamed": True}
        job.export = lambda job, art, precision, a, opset: export_refiner_streamed(job, art, precision, a, opset,
                                                                                 layout)
    return jobs, info


def _quantize(eng, src, calibrate, a) -> dict:
    from ..streamed import quantize_streamed

    pol = getattr(a, "policy", None)
    exclude = (pol.exclude_patterns(eng) or None) if pol is not None else None
    dev = getattr(a, "calib_device", "cpu")
    rep = quantize_streamed(eng, src, calibrate, exclude=exclude, device=dev)
    return {"fp8_layers": rep.layers, "calib_device": dev,
            **({"precision_policy": pol.to_manifest(eng)} if pol is not None else {})}


def export_refiner_streamed(job, art, precision, a, opset, layout) -> dict:
    """The streamed ONNX stage of the ``refiner`` job (``EngineJob.export``): facts for the manifest."""
    from ..streamed import export_streamed

    eng = job.module
    src = weight_source(a.refiner, eng)
    facts = {"opset": opset, "streamed": True}
    if precision == "fp8":
        log.info("[%s] fp8: layer-streamed calibration over %d block(s) on %s ...", job.name,
                 max(1, a.calib_chunks) + 1, getattr(a, "calib_device", "cpu"))
        facts.update(_quantize(eng, src, job.calibrate, a))
    sample = job.sample() if callable(job.sample) else job.sample
    export_streamed(eng, job.io, art.onnx, src, sample_inputs=sample, opset=opset, dims=job.dims)
    if src.nbytes(src.params) <= CHECK_WHOLE_BYTES:
        err, facts["ort_check_depth"] = check_graph(eng, src, art.onnx, layout, precision), eng.core.num_layers
    else:
        err, facts["ort_check_depth"] = check_depth_reduced(a, art.onnx.parent, job, layout, precision, opset)
    return checked(job.name, facts, err, precision, "layers")


def check_graph(eng, src, onnx_path, layout, precision) -> float:
    """Max relative error of the streamed graph vs its torch module (weights loaded for the check, then dropped):
    FP32 per output over both profiles; FP8 teacher-forced (``fp8_layer_check``) at the block profile."""
    from ...spec_refiner import BLOCK, refiner_profiles
    from ...testing import rel_error
    from ..onnx import run_onnx_cpu, run_torch
    from .refiner import refiner_feeds

    kv = str(eng.kv_dtype).replace("torch.", "")
    names = list(src.params)
    src.materialize_(names)
    try:
        profiles = refiner_profiles(layout)
        if precision == "fp8":
            from ..blocks import fp8_layer_check

            feeds = refiner_feeds(eng.core, layout, BLOCK, seed=11, kv_dtype=kv)
            return max(fp8_layer_check(eng, eng.io.concrete(profiles[BLOCK]), onnx_path, feeds)["forced"].values())
        err = 0.0
        for prof, dims in profiles.items():
            feeds = refiner_feeds(eng.core, layout, prof, seed=11, kv_dtype=kv)
            ref, got = run_torch(eng, eng.io.concrete(dims), feeds), run_onnx_cpu(onnx_path, feeds)
            err = max([err] + [rel_error(ref[n], got[n]) for n in ref])
        return err
    finally:
        src.ghost_(names)


def ghost_engine(path, layout, kv_dtype: str, num_layers: int | None = None, fps: float | None = None):
    """A ``RefinerEngine`` over a ghost refiner of the folder's config (``num_layers``: depth-reduced)."""
    from ...constants import FPS
    from ...models.refiner import RefinerCore
    from ...models.refiner.engine import RefinerEngine

    core = RefinerCore(ghost_refiner_transformer(path, num_layers), fps=FPS if fps is None else fps).eval()
    return RefinerEngine(core, layout, kv_dtype).eval()


def check_depth_reduced(a, where: Path, job, layout, precision, opset) -> tuple[float, int]:
    """``check_graph`` on a ``CHECK_LAYERS``-layer export of the same files through the same code path (FP8:
    calibrated on one random block; the check is of the graph, not of the scales)."""
    from ..streamed import export_streamed
    from .refiner import refiner_feeds
    from .refiner_loop import engine_calibration
    from ...spec_refiner import BLOCK

    big = job.module
    kv = str(big.kv_dtype).replace("torch.", "")
    eng = ghost_engine(a.refiner, layout, kv, CHECK_LAYERS, big.core.fps)
    src = weight_source(a.refiner, eng)
    if precision == "fp8":
        _quantize(eng, src, engine_calibration(layout, 1), a)
    with tempfile.TemporaryDirectory(dir=where, prefix=".check-") as tmp:
        path = export_streamed(eng, eng.io, Path(tmp) / "refiner.onnx", src, opset=opset, dims=job.dims,
                               sample_inputs=refiner_feeds(eng.core, layout, BLOCK, seed=7, kv_dtype=kv))
        return check_graph(eng, src, path, layout, precision), CHECK_LAYERS
