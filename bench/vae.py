"""VAE streaming-decoder benchmark: time per latent chunk and peak memory.

    python bench/vae.py                 # CPU: tiny config, torch and ONNX Runtime; GPU part if CUDA is present
    python bench/vae.py --cpu-only
    python bench/vae.py --gpu-only --gpu-chunks 6

CPU: tiny config (8 latent channels, 64x96 pixels, 2x3 latents), ``VAEDecoderStep`` first (4 latent frames)
and next (3 latent frames) chunks in torch and as exported ONNX on ONNX Runtime CPU. Each backend runs in
its own child process so its peak RSS (``ru_maxrss``) is its own.
GPU (CUDA only): full LTX-2 VAE config (128 latent channels, 704x1280 -> 22x40 latents), random weights,
torch eager in float32 and bfloat16, peak ``torch.cuda.max_memory_allocated``.
Writes bench/results/vae-<device>.json (device, versions, date, results).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _versions() -> dict:
    import importlib

    out = {"python": platform.python_version()}
    for m in ("torch", "diffusers", "onnx", "onnxruntime", "numpy"):
        try:
            out[m] = importlib.import_module(m).__version__
        except Exception:  # noqa: BLE001
            out[m] = None
    return out


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _stats(ts: list[float]) -> dict:
    ts = sorted(ts)
    return {"median_ms": 1e3 * ts[len(ts) // 2], "min_ms": 1e3 * ts[0], "runs": len(ts)}


# ---------------------------------------------------------------------------------------------- CPU
def _cpu_worker(backend: str, reps: int, threads: int) -> dict:
    """One backend, tiny config; prints a JSON line."""
    import numpy as np
    import torch

    from sanawm.models.vae import VAEDecoderStep, build_vae, tiny_vae_config

    torch.set_num_threads(threads)
    vae = build_vae(tiny_vae_config(), seed=0, random_latent_stats=True)
    lhw = (2, 3)
    steps = {"first": VAEDecoderStep(vae, True, lhw), "next": VAEDecoderStep(vae, False, lhw)}
    rng = np.random.default_rng(0)
    res = {"backend": backend, "threads": threads, "config": "tiny", "latent_hw": list(lhw), "pixel_hw": [64, 96]}
    rss0 = _peak_rss_mib()
    if backend == "torch":
        for kind, step in steps.items():
            args = [torch.from_numpy(rng.standard_normal(t.shape).astype(np.float32)) for t in step.io.inputs]
            ts = []
            with torch.no_grad():
                for i in range(reps + 2):
                    t0 = time.perf_counter()
                    step(*args)
                    if i >= 2:  # 2 warm-up runs
                        ts.append(time.perf_counter() - t0)
            res[kind] = {**_stats(ts), "latent_frames": step.io.inputs[0].shape[2], "pixel_frames": step.io.outputs[0].shape[2]}
    else:
        import onnxruntime as ort

        from sanawm.export.onnx import export_onnx

        with tempfile.TemporaryDirectory() as d:
            for kind, step in steps.items():
                r = export_onnx(step, step.io, Path(d) / f"vae_decoder_{kind}.onnx", check=False)
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.log_severity_level = 3
                sess = ort.InferenceSession(str(r.onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
                feeds = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in step.io.inputs}
                rss_before_run = _peak_rss_mib()
                ts = []
                for i in range(reps + 2):
                    t0 = time.perf_counter()
                    sess.run(None, feeds)
                    if i >= 2:
                        ts.append(time.perf_counter() - t0)
                res[kind] = {**_stats(ts), "latent_frames": step.io.inputs[0].shape[2], "pixel_frames": step.io.outputs[0].shape[2],
                             "export_s": round(r.seconds, 2), "peak_rss_before_runs_mib": round(rss_before_run, 1)}
    res["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    res["rss_after_setup_mib"] = round(rss0, 1)
    return res


def run_cpu(reps: int, threads: int) -> list[dict]:
    out = []
    for backend in ("torch", "onnxruntime"):
        p = subprocess.run(
            [sys.executable, __file__, "--_cpu-worker", backend, "--reps", str(reps), "--threads", str(threads)],
            capture_output=True, text=True, cwd=ROOT,
        )
        if p.returncode != 0:
            raise RuntimeError(f"{backend} worker failed:\n{p.stderr[-3000:]}")
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


# ---------------------------------------------------------------------------------------------- GPU
def run_gpu(chunks: int) -> list[dict]:
    import torch

    from sanawm.models.vae import VAEDecoderStep, build_vae, full_vae_config

    dev = torch.device("cuda")
    lhw = (22, 40)
    results = []
    vae = build_vae(full_vae_config(), seed=0).to(dev)
    for dtype in (torch.float32, torch.bfloat16):
        vae = vae.to(dtype)
        first, nxt = VAEDecoderStep(vae, True, lhw).to(dev), VAEDecoderStep(vae, False, lhw).to(dev)
        res = {"backend": "torch-eager", "dtype": str(dtype).replace("torch.", ""), "config": "full",
               "latent_hw": list(lhw), "pixel_hw": [704, 1280]}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = {"first": [], "next": []}
        with torch.no_grad():
            for rep in range(2):  # rep 0 = warm-up
                z = torch.randn(1, 128, 4, *lhw, device=dev, dtype=dtype)
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
                ev[0].record()
                _, *caches = first(z)
                ev[1].record()
                torch.cuda.synchronize()
                if rep:
                    times["first"].append(ev[0].elapsed_time(ev[1]) / 1e3)
                for _ in range(chunks):
                    z = torch.randn(1, 128, 3, *lhw, device=dev, dtype=dtype)
                    ev[0].record()
                    _, *caches = nxt(z, *caches)
                    ev[1].record()
                    torch.cuda.synchronize()
                    if rep:
                        times["next"].append(ev[0].elapsed_time(ev[1]) / 1e3)
        res["first"] = _stats(times["first"])
        res["next"] = _stats(times["next"])
        res["weights_mib"] = round(base / 2**20, 1)
        res["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["cache_mib"] = round(sum(c.numel() * c.element_size() for c in caches) / 2**20, 1)
        results.append(res)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu-chunks", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--_cpu-worker", dest="worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(_cpu_worker(a.worker, a.reps, a.threads)))
        return

    import torch

    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "processor": platform.processor()}}
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.gpu_only:
        res = run_cpu(a.reps, a.threads)
        doc = {**meta, "device": "cpu", "results": res}
        (a.out / "vae-cpu.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2))
    if not a.cpu_only:
        if not torch.cuda.is_available():
            print("no CUDA device: GPU part (full LTX-2 config, 704x1280) skipped")
            return
        name = torch.cuda.get_device_name(0)
        res = run_gpu(a.gpu_chunks)
        doc = {**meta, "device": name, "cuda": torch.version.cuda, "results": res}
        slug = name.lower().replace("nvidia", "").strip().replace(" ", "-")
        (a.out / f"vae-{slug}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
