"""Export benchmark: ONNX export and TensorRT-RTX AOT build time, bundle sizes per precision, FP8 vs FP32 error.

* tiny generator (random weights): generator_first / generator_next in FP32, FP16 and FP8 (1-chunk
  calibration / range check), ORT CPU checks, tensorrt_rtx builds (CPU-only AOT, --targets).
* full-size single blocks (``sanawm.export.blocks.BlockStep`` of generator_next: one GDN block, one softmax
  block; 3 x 880 tokens, window 7 x 880): FP32, FP16 and FP8 export, FP16 and FP8 (and unless
  --no-full-fp32-build FP32) builds, FP16 / FP8 vs FP32 error of the block output and state.

Writes bench/results/export-cpu.json. Errors are relative RMS (sanawm.testing.rel_error).

    python bench/export.py [--targets sm_89] [--skip-full] [--no-full-fp32-build] [--load "..."]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sanawm.config import full, tiny  # noqa: E402
from sanawm.export.blocks import BlockStep, block_feeds, fp8_layer_check, randomize_  # noqa: E402
from sanawm.export.build import build_engine  # noqa: E402
from sanawm.export.families.generator import generator_calibration, generator_feeds  # noqa: E402
from sanawm.export.half import convert_fp16  # noqa: E402
from sanawm.export.onnx import export_onnx, run_onnx_cpu, run_torch  # noqa: E402
from sanawm.export.quantize import quantize_fp8  # noqa: E402
from sanawm.models.generator_step import GeneratorStep  # noqa: E402
from sanawm.models.transformer import SanaWMGenerator  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _size(paths) -> int:
    return int(sum(Path(p).stat().st_size for p in paths))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(onnx_path, plan_path, targets):
    t0 = time.time()
    try:
        r = build_engine(onnx_path, plan_path, backend="tensorrt_rtx", compute_capabilities=targets)
        return {"seconds": round(r.seconds, 2), "plan_bytes": plan_path.stat().st_size, "targets": targets}
    except Exception as e:  # noqa: BLE001 - recorded in the results
        return {"seconds": round(time.time() - t0, 2), "error": f"{type(e).__name__}: {e}"[:2000], "targets": targets}


def _errs(ref: dict, got: dict) -> dict:
    return {n: float(rel_error(ref[n], got[n])) for n in ref}


def tiny_part(root: Path, targets) -> dict:
    cfg = tiny()
    model = randomize_(SanaWMGenerator(cfg), seed=3).eval()
    res = {"config": "tiny", "calib_chunks": 1, "engines": {}}
    for eng in ("first", "next"):
        first = eng == "first"
        step = GeneratorStep(model, first).eval()
        sample = generator_feeds(cfg, first, seed=7)
        check = generator_feeds(cfg, first, seed=21)
        e = {}
        t0 = time.time()
        r32 = export_onnx(step, step.io, root / "fp32" / f"g_{eng}.onnx", sample_inputs=sample, check_inputs=[check])
        e["fp32"] = {"export_s": round(time.time() - t0, 2), "onnx_bytes": _size([r32.onnx_path] + r32.external_data),
                     "ort_vs_torch_max_rel": r32.max_rel_error}
        torch.manual_seed(0)
        t0 = time.time()
        q, rep = quantize_fp8(step, generator_calibration(cfg, first, chunks=1))
        t_cal = time.time() - t0
        r8 = export_onnx(q, step.io, root / "fp8" / f"g_{eng}.onnx", sample_inputs=sample, check=False)
        c = fp8_layer_check(q, step.io, r8.onnx_path, check)
        ref32 = run_torch(step, step.io, check)
        vs32 = _errs(ref32, c["ort"])
        e["fp8"] = {"calibrate_s": round(t_cal, 2), "export_s": round(time.time() - t0 - t_cal, 2),
                    "onnx_bytes": _size([r8.onnx_path] + r8.external_data), "layers": len(rep.layers),
                    "ort_vs_fakequant_teacher_forced_max_rel": max(c["forced"].values()),
                    "ort_vs_fakequant_free_running_max_rel": max(c["free"].values()),
                    "qdq_exact_min": min(v["qdq_exact"] for v in c["layers"].values()),
                    "fp8_vs_fp32_velocity_rel": vs32["velocity"], "fp8_vs_fp32_max_rel": max(vs32.values())}
        t0 = time.time()
        h, hrep = convert_fp16(step, generator_calibration(cfg, first, chunks=1))
        r16 = export_onnx(h, step.io, root / "fp16" / f"g_{eng}.onnx", sample_inputs=sample, check=False)
        ort16 = run_onnx_cpu(r16.onnx_path, check)  # one ORT run serves both comparisons
        e["fp16"] = {"export_s": round(time.time() - t0, 2), "onnx_bytes": _size([r16.onnx_path] + r16.external_data),
                     "layers": len(hrep.layers),
                     "ort_vs_torch_fp16_max_rel": max(_errs(run_torch(h, step.io, check), ort16).values()),
                     "fp16_vs_fp32_velocity_rel": _errs(ref32, ort16)["velocity"]}
        for prec, r in (("fp32", r32), ("fp16", r16), ("fp8", r8)):
            e[prec]["tensorrt_rtx"] = _build(r.onnx_path, root / prec / f"g_{eng}.plan", targets)
            print(f"tiny {eng} {prec}: {json.dumps(e[prec])}", flush=True)
        res["engines"][f"generator_{eng}"] = e
    return res


def full_block_part(root: Path, kind: str, idx: int, targets, fp32_build: bool) -> dict:
    cfg = full()
    t_all = time.time()
    step = randomize_(BlockStep(cfg, idx, first=False), seed=idx).eval()
    io = step.io
    feeds = block_feeds(cfg, idx, seed=7)
    res = {"block_index": idx, "kind": kind, "tokens": io.input("x").shape[1] * cfg.patch_tokens,
           "window_tokens": cfg.patch_tokens * 7, "params": sum(p.numel() for p in step.parameters())}
    t0 = time.time()
    r32 = export_onnx(step, io, root / f"{kind}_fp32.onnx", sample_inputs=feeds, check=False)
    res["fp32"] = {"export_s": round(time.time() - t0, 2), "onnx_bytes": _size([r32.onnx_path] + r32.external_data)}
    t0 = time.time()
    ort32 = run_onnx_cpu(r32.onnx_path, feeds)
    ref32 = run_torch(step, io, feeds)
    res["fp32"]["ort_run_s"] = round(time.time() - t0, 2)
    res["fp32"]["ort_vs_torch_max_rel"] = max(_errs(ref32, ort32).values())
    del ort32
    t0 = time.time()
    q, rep = quantize_fp8(step, lambda m: [run_torch(m, io, block_feeds(cfg, idx, seed=100 + s)) for s in (1, 2)])
    t_cal = time.time() - t0
    r8 = export_onnx(q, io, root / f"{kind}_fp8.onnx", sample_inputs=feeds, check=False)
    t_exp = time.time() - t0 - t_cal
    c = fp8_layer_check(q, io, r8.onnx_path, feeds)
    vs32 = _errs(ref32, c["ort"])
    res["fp8"] = {"calibrate_s": round(t_cal, 2), "export_s": round(t_exp, 2),
                  "onnx_bytes": _size([r8.onnx_path] + r8.external_data), "layers": len(rep.layers),
                  "ort_vs_fakequant_teacher_forced_max_rel": max(c["forced"].values()),
                  "ort_vs_fakequant_free_running_max_rel": max(c["free"].values()),
                  "qdq_exact_min": min(v["qdq_exact"] for v in c["layers"].values()),
                  "fp8_vs_fp32_x_out_rel": vs32["x.out"], "fp8_vs_fp32_rel": vs32}
    del c
    t0 = time.time()
    h, _ = convert_fp16(step, lambda m: [run_torch(m, io, block_feeds(cfg, idx, seed=100 + s)) for s in (1, 2)])
    r16 = export_onnx(h, io, root / f"{kind}_fp16.onnx", sample_inputs=feeds, check=False)
    res["fp16"] = {"export_s": round(time.time() - t0, 2), "onnx_bytes": _size([r16.onnx_path] + r16.external_data)}
    ort16 = run_onnx_cpu(r16.onnx_path, feeds)
    res["fp16"]["ort_vs_torch_fp16_max_rel"] = max(_errs(run_torch(h, io, feeds), ort16).values())
    res["fp16"]["fp16_vs_fp32_rel"] = _errs(ref32, ort16)
    res["fp16"]["fp16_vs_fp32_x_out_rel"] = res["fp16"]["fp16_vs_fp32_rel"]["x.out"]
    del ort16, h
    print(f"full {kind}: {json.dumps({k: v for k, v in res.items()})}", flush=True)
    for prec, r in (("fp8", r8), ("fp16", r16)):
        res[prec]["tensorrt_rtx"] = _build(r.onnx_path, root / f"{kind}_{prec}.plan", targets)
        print(f"full {kind} {prec} build: {res[prec]['tensorrt_rtx']}", flush=True)
    if fp32_build:
        res["fp32"]["tensorrt_rtx"] = _build(r32.onnx_path, root / f"{kind}_fp32.plan", targets)
        print(f"full {kind} fp32 build: {res['fp32']['tensorrt_rtx']}", flush=True)
    res["total_s"] = round(time.time() - t_all, 1)
    res["peak_rss_gib_so_far"] = round(_rss_gib(), 2)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="sm_89", help="TensorRT-RTX compute capabilities (comma list)")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--no-full-fp32-build", action="store_true")
    ap.add_argument("--load", default="shared machine: other agents ran builds/tests concurrently; timings are upper bounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export-cpu.json")
    a = ap.parse_args(argv)
    targets = [t for t in a.targets.split(",") if t]
    import onnx
    import onnxruntime
    import tensorrt_rtx

    torch.set_num_threads(os.cpu_count() or 1)
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": None,
        "load": a.load,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "tensorrt_rtx": tensorrt_rtx.__version__},
        "notes": ("errors are relative RMS; FP8 ORT vs torch fake quant 'teacher_forced' feeds ORT's quantized "
                  "activations to the torch layers (isolates graph correctness from FP8 rounding flips), "
                  "'free_running' is the plain comparison; plan builds are TensorRT-RTX CPU-only AOT"),
    }
    with tempfile.TemporaryDirectory(prefix="sanawm-bench-export-") as tmp:
        root = Path(tmp)
        if not a.skip_tiny:
            out["tiny"] = tiny_part(root / "tiny", targets)
        if not a.skip_full:
            out["full_blocks"] = {}
            for kind, idx in (("gdn", 0), ("softmax", 3)):
                out["full_blocks"][kind] = full_block_part(root / "full", kind, idx, targets, not a.no_full_fp32_build)
                for f in (root / "full").glob("*"):
                    f.unlink()
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps(out, indent=1))  # partial results survive a later failure
    out["peak_rss_gib"] = round(_rss_gib(), 2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
