"""Full-size device plan: what SANA-WM needs on a GPU, from the project's own code, without weights or a GPU.

    python bench/device_plan.py --config full --precision fp8 [--kv-dtype fp16|fp32] [--rest-bytes 4|2]
                                [--chunks 3] [--out FILE]

1. Model facts on the meta device (``device_plan_models``): parameter counts split by the exporter's FP8
   policy -> weight bytes; FLOPs per call (FlopCounterMode); activation-workspace ESTIMATES (live set of the
   eager forward with fused attention; see that module).
2. An emulated run (``device_plan_run``, ``sanawm.emulation`` with ``backing=False``): the real
   ``TensorRTEngine.load/activate`` on one shared arena, the real ``GeneratorRunner.run_chunk`` on a
   ``CudaMemory`` pool, and the planned device-resident decoder / refiner schedules, for stage 1 alone,
   stage 1 + VAE decoder and the full pipeline. Per chunk: host-device bytes, allocations, device bytes.
3. Roofline PROJECTION per chunk (``device_plan_roofline``) on RTX 5090 and H100 SXM against the 34 s target.

Writes a JSON (``--out``, default bench/results/device-plan-<config>-<precision>.json) and the printed table
next to it (.txt). No GPU is used: "emulated counting device + analytic estimates".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from device_plan_report import render, targets  # noqa: E402
from device_plan_roofline import roofline  # noqa: E402

KV_DTYPES = {"fp16": "float16", "fp32": "float32"}
WORKSPACE_ALIGN = 256
VARIANTS = ("stage1", "stage1+vae", "full")


def _align(n: int) -> int:
    return -(-int(n) // WORKSPACE_ALIGN) * WORKSPACE_ALIGN


def with_kv_dtype(io, kv_dtype: str):
    """The generator contract with its softmax windows and chunk K/V at ``kv_dtype`` (issue 11 item 3; the
    runtime's ``generator_engine_io`` is FP32 today)."""
    from sanawm.spec import StepIO, TensorSpec

    def conv(ts):
        return tuple(TensorSpec(t.name, kv_dtype, t.shape, t.doc) if t.name.endswith(("_win", "_chunk")) else t for t in ts)
    return StepIO(conv(io.inputs), conv(io.outputs), dict(io.state_map))


def model_facts(config: str, kv_dtype: str = "fp16"):
    """(cfg, vae config, refiner layout, facts dict, refiner core) for ``config`` ("full" or "tiny")."""
    from device_plan_models import generator_facts, refiner_facts, vae_decoder_facts

    from sanawm.config import get_config
    from sanawm.export.families.refiner import FULL_REFINER_CAPTION_LENGTH, TINY_REFINER_CAPTION_LENGTH
    from sanawm.models.refiner import RefinerLayout
    from sanawm.models.vae import full_vae_config, tiny_vae_config

    cfg = get_config(config)
    vae_cfg = full_vae_config() if config == "full" else tiny_vae_config(latent_channels=cfg.in_channels)
    caption = FULL_REFINER_CAPTION_LENGTH if config == "full" else TINY_REFINER_CAPTION_LENGTH
    layout = RefinerLayout(cfg.latent_height, cfg.latent_width, caption)
    ref, core = refiner_facts(layout, config != "full", cfg.in_channels, KV_DTYPES[kv_dtype])
    facts = {"generator": generator_facts(cfg), "vae_decoder": vae_decoder_facts(vae_cfg, (cfg.latent_height, cfg.latent_width)),
             "refiner": ref}
    return cfg, vae_cfg, layout, facts, core


def engine_plans(cfg, vae_cfg, layout, facts, core, precision: str, kv: str, rest_bytes: int) -> dict:
    from device_plan_engines import decoder_engine_io, refiner_engine_io
    from device_plan_run import EnginePlan

    from sanawm.constants import GENERATOR
    from sanawm.export.families.vae import VAE_PRECISION
    from sanawm.spec import generator_engine_io, generator_profiles

    g, v, r = facts["generator"], facts["vae_decoder"], facts["refiner"]
    dio, dprof = decoder_engine_io(vae_cfg, (cfg.latent_height, cfg.latent_width))
    rio, rprof = refiner_engine_io(core, layout, kv)
    return {
        "generator": EnginePlan(GENERATOR, with_kv_dtype(generator_engine_io(cfg), kv), generator_profiles(cfg),
                                g.weight_bytes(precision, rest_bytes),
                                {p: _align(c.peak_live_fused) for p, c in g.calls.items()}),
        # the VAE precision the exporter uses (FP32 today)
        "vae_decoder": EnginePlan("vae_decoder", dio, dprof, v.weight_bytes(VAE_PRECISION, 4),
                                  {p: _align(v.calls[p].peak_live) for p in dprof}),
        # the one refiner engine (sanawm.spec_refiner): history by ring + device copies, Euler and noise mix inside
        "refiner": EnginePlan("refiner", rio, rprof, r.weight_bytes(precision, rest_bytes),
                              {p: _align(r.calls[p].peak_live_fused) for p in rprof}),
    }


def host_path_refiner(core, layout, weight_bytes: int) -> dict:
    """The refiner as it ran BEFORE the one-engine change (three engines ``refiner_sink`` / ``refiner_step`` /
    ``refiner_capture``, each holding the full weights, on the host path): per block every call uploaded all its
    inputs and downloaded all its outputs (3 steps + 1 capture; the sink pass once at chunk 0). FP32 state, from
    the step modules' contract ``refiner_io``; the device I/O buffers it would need, double-buffering the
    history (``capture`` reads and writes it)."""
    from sanawm.models.refiner import refiner_io

    size = lambda ts: sum(t.nbytes for t in ts)  # noqa: E731
    io = {k: refiner_io(core, layout, k) for k in ("sink", "step", "capture")}
    block = {"h2d": 3 * size(io["step"].inputs) + size(io["capture"].inputs),
             "d2h": 3 * size(io["step"].outputs) + size(io["capture"].outputs)}
    buffers = size(io["capture"].inputs) + size(io["capture"].outputs)  # step / sink buffers alias into these
    return {"label": "three-engine refiner before issue 11 (host path)", "per_block": block,
            "chunk0_extra": {"h2d": size(io["sink"].inputs), "d2h": size(io["sink"].outputs)},
            "history_fp32_bytes": sum(t.nbytes for t in io["capture"].outputs),
            "weight_bytes": 3 * weight_bytes, "io_buffer_bytes": buffers}


NVFP4_BYTES = 0.5 + 1 / 16  # 4-bit weights + one FP8 scale per 16 (block-scaled NVFP4)


def what_if(run: dict, facts: dict, plans: dict) -> list[dict]:
    """Arithmetic on the counted components of ``run`` (not a run): changes that shrink the device peak,
    cumulative, in order of how little they change the design."""
    g, v, r = facts["generator"], facts["vae_decoder"], facts["refiner"]
    engines = run["engines"]
    steps = []
    if "vae_decoder" in engines:
        others = [run["workspace_bytes"][e] for e in engines if e != "vae_decoder"]
        per_frame = _align(v.calls["next_per_frame"].peak_live)
        steps.append(("VAE decoder: one latent frame per call (the release decodes frame by frame with the cache)",
                      run["arena_bytes"] - max(others + [per_frame])))
        caches = [t.nbytes for t in plans["vae_decoder"].io.concrete({"n": 3}).inputs if t.name.startswith("cache.")]
        steps.append(("VAE decoder caches: one copy + a scratch for the largest, instead of ping-pong",
                      sum(caches) - max(caches)))
    rest = (g.params - g.params_fp8) * 2 + (v.params * 2 if "vae_decoder" in engines else 0)
    if "refiner" in engines:
        rest += (r.params - r.params_fp8) * 2
    steps.append(("parameters outside the FP8 layers (and the VAE) in BF16 instead of FP32", rest))
    if "refiner" in engines:
        scratch = sum(t.nbytes for t in plans["refiner"].io.concrete({"n": 3}).outputs if t.name.endswith("_new"))
        steps.append(("refiner: K/V outputs bound straight into sink / history slot tensors (no scratch)", scratch))
        steps.append(("refiner FP8 layers as NVFP4 (4-bit, FP8 scale per 16)", int(r.params_fp8 * (1 - NVFP4_BYTES))))
    out, peak = [], run["device_peak_bytes"]
    for what, saved in steps:
        peak -= saved
        out.append({"change": what, "saves_bytes": int(saved), "peak_after_bytes": int(peak)})
    return out


def machine() -> dict:
    import numpy
    import torch

    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "torch": torch.__version__, "gpu": "none",
            "method": "no GPU: emulated counting device + analytic estimates"}


def build(config: str, precision: str, kv_dtype: str, chunks: int, rest_bytes: int = 4) -> dict:
    from device_plan_run import run_pipeline

    from sanawm.models.refiner import STAGE_2_SIGMAS

    kv = KV_DTYPES[kv_dtype]
    cfg, vae_cfg, layout, facts, core = model_facts(config, kv_dtype)
    plans = engine_plans(cfg, vae_cfg, layout, facts, core, precision, kv, rest_bytes)
    runs = {v: run_pipeline(v, cfg, plans, chunks, layout, STAGE_2_SIGMAS) for v in VARIANTS}
    result = {
        "machine": machine(), "config": config, "precision": precision, "kv_dtype": kv_dtype, "rest_bytes": rest_bytes,
        "chunks_run": chunks, "facts": {k: f.to_dict() for k, f in facts.items()},
        "plans": {k: {"weight_bytes": p.weight_bytes, "workspace": p.workspace, "profiles": p.profiles} for k, p in plans.items()},
        "runs": runs, "refiner_host_path": host_path_refiner(core, layout, plans["refiner"].weight_bytes),
    }
    result["roofline"] = roofline(cfg, facts, plans)
    result["what_if"] = {v: what_if(runs[v], facts, plans) for v in ("stage1+vae", "full")}
    result["targets"] = targets(result)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("full", "tiny"), default="full")
    ap.add_argument("--precision", choices=("fp8", "fp16", "fp32"), default="fp8")
    ap.add_argument("--kv-dtype", choices=sorted(KV_DTYPES), default="fp16")
    ap.add_argument("--rest-bytes", type=int, choices=(2, 4), default=4,
                    help="bytes per parameter outside the FP8 layers: 4 = FP32 as the exporter keeps them today, 2 = BF16")
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.chunks < 2:
        ap.error("--chunks must be >= 2 (chunk 0 and at least one steady-state chunk)")
    result = build(a.config, a.precision, a.kv_dtype, a.chunks, a.rest_bytes)
    text = render(result)
    print(text)
    out = a.out or ROOT / "bench" / "results" / f"device-plan-{a.config}-{a.precision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
