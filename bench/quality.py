"""Quality of the shipped toy world model against ray-traced ground truth, per bundle precision.

    python bench/quality.py [--pairs 32] [--drift-pairs 4] [--drift-chunks 40] [--out bench/results/quality-cpu.json]

For each held-out (scene, path) pair (``sanawm.worlds.eval_pairs``): PSNR / SSIM per second over the first
``--seconds``, the repeat-first-frame baseline and the camera-following score (``sanawm.worlds.quality``),
for the torch reference and the FP32 / FP16 / FP8 ONNX Runtime bundles built from the shipped weights; each
bundle's PSNR against the FP32 bundle's frames; and on ``--drift-pairs`` pairs a ``--drift-chunks``-chunk
clip (the path, then holding still) with PSNR per second against the truth and against FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sanawm.worlds.data import eval_pairs  # noqa: E402
from sanawm.worlds.metrics import per_second, psnr_frames  # noqa: E402
from sanawm.worlds.quality import evaluate_pair, per_second_mean, run_session, summarize  # noqa: E402

PRECISIONS = ("fp32", "fp16", "fp8")


def machine_facts() -> dict:
    import onnxruntime
    import torch

    return {"host": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "load_average_at_start": list(os.getloadavg())}


def prompt_embeddings(text: str):
    from sanawm.runtime.prompt import PromptEmbeddings
    from sanawm.text.stage1 import encode_stage1
    from sanawm.text.tiny import tiny_gemma2, tiny_tokenizer
    from sanawm.config import world

    f, m = encode_stage1([text], tiny_tokenizer(), tiny_gemma2(), caption_length=world().caption_length)
    return PromptEmbeddings(f.numpy().astype(np.float32), m.numpy().astype(np.float32))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length of the per-pair table (24k+1 frames)")
    ap.add_argument("--drift-pairs", type=int, default=4)
    ap.add_argument("--drift-chunks", type=int, default=40)
    ap.add_argument("--bundles", default="torch,fp32,fp16,fp8")
    ap.add_argument("--work", type=Path, default=Path("bench-quality-work"), help="bundles are built here (once)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/quality-cpu.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strip", type=Path, default=None, help="also write a PNG strip (generated above, truth below) "
                    "of pairs --strip-pairs from the first bundle, e.g. docs/world-strip.png")
    ap.add_argument("--strip-pairs", default="0,2", help="comma-separated pair indices shown in --strip")
    a = ap.parse_args(argv)
    import torch

    from sanawm.cli.inputs import target_num_frames
    from sanawm.runtime import Runtime
    from sanawm.worlds.demo import DEMO_PROMPT, build_bundle, bundle_ready
    from sanawm.worlds.models import shipped_paths
    from sanawm.worlds.reference import TorchWorld

    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    t_start = time.perf_counter()
    prompt = prompt_embeddings(DEMO_PROMPT)
    F = target_num_frames(a.seconds)
    F_drift = 24 * a.drift_chunks - 24 + 25  # 4 + 3 (chunks - 1) latent frames
    names = [b.strip() for b in a.bundles.split(",") if b.strip()]
    gens = {}
    for name in names:
        if name == "torch":
            tw = TorchWorld(*shipped_paths())
            gens[name] = lambda first, cam, n, tw=tw: tw.generate(first, (prompt.text, prompt.text_mask), cam, n)
            continue
        if name not in PRECISIONS:
            raise SystemExit(f"unknown bundle {name!r}; choose from torch,{','.join(PRECISIONS)}")
        d = a.work / f"world-{name}"
        if not bundle_ready(d):
            t0 = time.perf_counter()
            fp32 = a.work / "world-fp32"
            if name != "fp32" and bundle_ready(fp32) and not d.exists():
                shutil.copytree(fp32, d)  # the VAE engines are FP32 in every bundle: their export is skipped
            build_bundle(d, precision=name, quiet=True)
            print(f"built {name} bundle in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rt = Runtime.load(d, "onnxruntime")
        gens[name] = lambda first, cam, n, rt=rt: run_session(rt, first, prompt, cam, n)
    pairs = eval_pairs(a.pairs)
    results: dict = {n: [] for n in names}
    for i, (seed, action) in enumerate(pairs):
        for name in names:
            r = evaluate_pair(lambda f, c: gens[name](f, c, F), seed, action, F, wrong=name in ("fp32", "torch"))
            results[name].append(r)
        ref = results["fp32"][-1]["_gen"] if "fp32" in results else None
        for name in names:
            r = results[name][-1]
            if ref is not None:
                r["psnr_vs_fp32_per_second"] = per_second(psnr_frames(r["_gen"], ref))
        print(f"pair {i + 1}/{len(pairs)} scene {seed} {action!r}: " + ", ".join(
            f"{n} {np.mean(results[n][-1]['psnr_per_second']):.2f} dB" for n in names), file=sys.stderr, flush=True)
    if a.strip is not None:
        from sanawm.worlds.data import render_clip
        from sanawm.worlds.demo import strip_png

        shown = [int(i) for i in a.strip_pairs.split(",")]
        strip_png([(results[names[0]][i]["_gen"], render_clip(*pairs[i], F).frames[1:]) for i in shown], a.strip)
    table = {}
    for name in names:
        s = summarize(results[name], a.seconds)
        if "fp32" in results:
            s["psnr_vs_fp32_db"] = float(np.mean([np.mean(np.minimum(r["psnr_vs_fp32_per_second"], 100.0))
                                                   for r in results[name]]))
        s["psnr_per_second"] = per_second_mean(results[name])
        table[name] = s
    drift = {}
    for seed, action in pairs[: a.drift_pairs]:
        runs = {}
        for name in names:
            runs[name] = evaluate_pair(lambda f, c: gens[name](f, c, F_drift), seed, action, F_drift, wrong=False)
        for name in names:
            r = runs[name]
            entry = drift.setdefault(name, {"pairs": [], "psnr_per_second": [], "psnr_vs_fp32_per_second": []})
            entry["pairs"].append([seed, action])
            entry["psnr_per_second"].append(r["psnr_per_second"])
            if "fp32" in runs:
                entry["psnr_vs_fp32_per_second"].append(per_second(psnr_frames(r["_gen"], runs["fp32"]["_gen"])))
        print(f"drift scene {seed}: " + ", ".join(f"{n} last s {runs[n]['psnr_per_second'][-1]:.2f} dB" for n in names),
              file=sys.stderr, flush=True)
    for name, e in drift.items():
        e["mean_psnr_per_second"] = [float(np.mean(v)) for v in zip(*e["psnr_per_second"])]
        if e["psnr_vs_fp32_per_second"]:
            e["mean_psnr_vs_fp32_per_second"] = [float(np.mean(v)) for v in zip(*e["psnr_vs_fp32_per_second"])]
    for name in names:
        for r in results[name]:
            r.pop("_gen", None)
    out = {
        "what": "toy world model (sanawm/assets/tiny_world) vs ray-traced ground truth on held-out scenes",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_facts(),
        "pairs": a.pairs, "seconds": a.seconds, "num_frames": F, "prompt": DEMO_PROMPT,
        "drift": {"pairs": a.drift_pairs, "chunks": a.drift_chunks, "num_frames": F_drift,
                  "path": "the pair's action, then holding still", "per_bundle": drift},
        "summary": table, "per_pair": results, "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    for name, s in table.items():
        print(f"{name}: PSNR {s['psnr_db']:.2f} dB, SSIM {s['ssim']:.3f}, repeat-first {s['repeat_first_psnr_db']:.2f} dB, "
              f"camera-following {s.get('camera_following_db', float('nan')):.2f} dB, "
              f"vs FP32 {s.get('psnr_vs_fp32_db', float('nan')):.1f} dB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
