"""Runtime benchmark: per-chunk latency (chunks 0..40, must be flat) and end-to-end seconds per video second.

    python bench/runtime.py [--chunks 40] [--bundle DIR] [--threads N] [--no-cli] [--gpu-chunks 10] [--no-save]

CPU (always): the tiny generator bundle (seeded random weights, FP32 ONNX, exported once into --bundle or a
temp folder) on ONNX Runtime CPU through the torch-free runtime (``Runtime.load`` -> ``Runtime.start`` ->
``Session``), orbit camera, zero prompt. Per chunk index: wall time of ``next(session)`` (generator: 4
denoise passes + the t = 0 commit pass, plus the stages), process RSS after the chunk, growth of the peak RSS
(``ru_maxrss``) during it, the exact bytes of the runtime's carried state (``GeneratorStatePool.state_dict``), and in
a second pass under ``tracemalloc`` the live numpy array bytes after the chunk (numpy's tracemalloc domain) and
the peak of all traced Python-side allocations during it (ORT's own arena is not traced; RSS covers it).
End to end: (1) the session loop alone and (2) ``python -m sanawm.cli generate`` in a subprocess on the same clip (process start, imports, bundle load, camera prep, generation, MP4 writing of the
latent preview), each as seconds of wall time per second of generated video (16 fps).

GPU (when torch sees CUDA): the full config with random weights in bf16, torch ``GeneratorStep`` streaming loop
with the GDN recurrence on the Triton kernels (``SANAWM_GDN_BACKEND`` auto) against the same loop in plain
eager bf16 (``SANAWM_GDN_BACKEND=reference``) in the same run: per-chunk latency, seconds per video second,
peak CUDA memory and the max latent difference between the two.

Writes bench/results/runtime-cpu.json (and runtime-<gpu>.json on a GPU) with machine facts and versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FPS = 16
FLAT_RATIO_MAX = 1.25  # chunk-time ratio (late / early) counted as flat


# ----------------------------------------------------------------------------------------- machine facts
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def versions() -> dict:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "onnx", "torch", "av", "triton"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    try:
        import sanawm

        v["sanawm"] = sanawm.__version__
    except Exception:  # noqa: BLE001
        pass
    return v


def facts(device: str) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "shared_machine_note": "measured on a VM shared with other agents' jobs (tests, exports) running at the "
        "same time; absolute times are noisy (see loadavg), compare chunk indices within this run",
        "versions": versions(),
    }


def flatness(times: list[float], early: int = 2, late: int | None = None) -> dict:
    """Median of chunks [early, early+5) vs the last 5 chunks, plus the least-squares slope over chunks >= 1."""
    late = late if late is not None else len(times) - 1
    a = statistics.median(times[early : early + 5])
    b = statistics.median(times[max(late - 4, early) : late + 1])
    x = np.arange(1, len(times))
    slope = float(np.polyfit(x, np.asarray(times[1:]), 1)[0])
    return {
        f"chunk{early}_s": times[early],
        f"chunk{late}_s": times[late],
        f"median_chunks_{early}_{early + 4}_s": a,
        f"median_chunks_{late - 4}_{late}_s": b,
        "late_over_early": b / a,
        "slope_pct_of_median_per_chunk": 100 * slope / statistics.median(times[1:]),
        "flat": b / a <= FLAT_RATIO_MAX,
        "flat_criterion": f"median(last 5) / median(chunks {early}..{early + 4}) <= {FLAT_RATIO_MAX}",
    }


# ----------------------------------------------------------------------------------------------- CPU
def ensure_bundle(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    cmd = [sys.executable, "-m", "sanawm.export.cli", "--random", "--seed", "0", "--config", "tiny", "--out", str(path),
           "--backends", "onnxruntime", "--engines", "generator"]
    print("exporting the tiny bundle:", " ".join(cmd[2:]), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return path


def cpu_inputs(runtime, num_chunks: int):
    from sanawm import camera as cam
    from sanawm.cli import default_intrinsics
    from sanawm.runtime import PromptEmbeddings

    cfg = runtime.cfg
    T = cfg.first_chunk_size + num_chunks * cfg.chunk_size
    F = 8 * (T - 1) + 1
    hw = runtime.image_hw
    path = cam.preset_path("orbit", F, default_intrinsics(hw), image_hw=hw)
    ci = cam.prepare_camera(path, F, latent_hw=(cfg.latent_height, cfg.latent_width), image_hw=hw)
    rng = np.random.default_rng(0)
    first = rng.standard_normal((1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width)).astype(np.float32)
    return first, PromptEmbeddings.zeros(cfg), (ci.camera_conditions, ci.chunk_plucker), F


def state_bytes(session) -> int:
    return int(sum(np.asarray(v).nbytes for v in session.generator_state.state_dict().values()))


def cpu_pass(runtime, inputs, trace: bool) -> list[dict]:
    first, prompt, camera, F = inputs
    session = runtime.start(first, prompt, camera, seed=0, num_frames=F)
    rows = []
    if trace:
        tracemalloc.start()
    for c in range(session.num_chunks):
        if trace:
            tracemalloc.reset_peak()
        peak0 = peak_rss_mib()
        t0 = time.perf_counter()
        chunk = next(session)
        wall = time.perf_counter() - t0
        row = {"chunk": c}
        if trace:
            _, peak = tracemalloc.get_traced_memory()  # all Python-side allocations during the chunk
            del chunk  # keep only what the session itself holds
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
            row.update(numpy_live_bytes_after=sum(t.size for t in snap.traces), traced_peak_bytes=peak)
        else:
            row.update(
                wall_s=wall,
                generator_s=chunk.timings.get("generator"),
                latent_frames=chunk.end - chunk.start,
                rss_mib_after=rss_mib(),
                peak_rss_mib_after=peak_rss_mib(),
                peak_rss_growth_mib=peak_rss_mib() - peak0,
                state_bytes_after=state_bytes(session),
                window_chunks_held=sorted(session.generator_state.ring.held.values()),
            )
        rows.append(row)
    if trace:
        tracemalloc.stop()
    return rows


def cli_run(bundle: Path, num_chunks: int, tmp: Path) -> dict:
    """``sanawm generate`` end to end in a subprocess on a clip of ``num_chunks + 1`` chunks."""
    from sanawm.config import tiny

    cfg = tiny()
    T = cfg.first_chunk_size + num_chunks * cfg.chunk_size
    frames = 8 * (T - 1)
    lat = tmp / "first.npy"
    np.save(lat, np.random.default_rng(0).standard_normal((1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width)).astype(np.float32))
    out = tmp / "bench.mp4"
    cmd = [sys.executable, "-m", "sanawm.cli", "generate", "--bundle", str(bundle), "--latent", str(lat), "--preset",
           "orbit", "--seconds", str(frames / FPS), "--seed", "0", "--out", str(out),
           "--no-prompt", "--zero-refiner-prompt"]  # zeros, as before the CLI required saying so
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    m = re.search(r"generating (\d+) frames .* in (\d+) chunks", r.stderr)
    got_frames, got_chunks = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    import av

    with av.open(str(out)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    video_s = (got_frames or frames) / FPS
    return {
        "command": "python -m sanawm.cli generate --bundle B --latent first.npy --preset orbit --seconds "
                   f"{frames / FPS} --seed 0 --out bench.mp4 --no-prompt --zero-refiner-prompt",
        "chunks": got_chunks, "video_frames": got_frames, "decoded_frames": decoded, "video_seconds": video_s,
        "wall_s": wall, "seconds_per_video_second": wall / video_s,
    }


def run_cpu(a) -> dict:
    import onnxruntime as ort

    from sanawm.runtime import Runtime

    tmpd = tempfile.TemporaryDirectory(prefix="sanawm-bench-")
    tmp = Path(tmpd.name)
    bundle = ensure_bundle(Path(a.bundle) if a.bundle else tmp / "bundle")
    opts = {"threads": a.threads} if a.threads else {}
    t0 = time.perf_counter()
    runtime = Runtime.load(bundle, "onnxruntime", **opts)
    load_s = time.perf_counter() - t0
    inputs = cpu_inputs(runtime, a.chunks)
    t0 = time.perf_counter()
    rows = cpu_pass(runtime, inputs, trace=False)
    loop_s = time.perf_counter() - t0
    traced = cpu_pass(runtime, inputs, trace=True)
    for r, t in zip(rows, traced):
        r.update({k: v for k, v in t.items() if k != "chunk"})
    cfg = runtime.cfg
    video_frames = inputs[3] - 1  # F - 1: the condition frame is not output
    video_s = video_frames / FPS
    times = [r["wall_s"] for r in rows]
    for r in rows:
        print(f"chunk {r['chunk']:2d}  {r['wall_s'] * 1e3:7.2f} ms  state {r['state_bytes_after'] / 1024:6.1f} KiB  "
              f"rss {r['rss_mib_after']:6.1f} MiB  numpy live {r['numpy_live_bytes_after'] / 1024:7.1f} KiB  "
              f"traced peak {r['traced_peak_bytes'] / 1024:7.1f} KiB")
    c2, c20 = rows[2], rows[min(20, len(rows) - 1)]
    mem = {
        "state_bytes_chunk2": c2["state_bytes_after"], "state_bytes_chunk20": c20["state_bytes_after"],
        "state_bytes_last": rows[-1]["state_bytes_after"],
        "rss_mib_chunk2": c2["rss_mib_after"], "rss_mib_chunk20": c20["rss_mib_after"], "rss_mib_last": rows[-1]["rss_mib_after"],
        "peak_rss_mib_chunk2": c2["peak_rss_mib_after"], "peak_rss_mib_chunk20": c20["peak_rss_mib_after"],
        "numpy_live_bytes_chunk2": c2["numpy_live_bytes_after"],
        "numpy_live_bytes_chunk20": c20["numpy_live_bytes_after"],
        "numpy_live_bytes_last": rows[-1]["numpy_live_bytes_after"],
        "traced_peak_bytes_chunk2": c2["traced_peak_bytes"],
        "traced_peak_bytes_chunk20": c20["traced_peak_bytes"],
    }
    mem["state_constant_from_chunk2"] = len({r["state_bytes_after"] for r in rows[2:]}) == 1
    mem["numpy_live_constant_from_chunk2"] = len({r["numpy_live_bytes_after"] for r in rows[2:]}) == 1
    res = {
        **facts("cpu"),
        "backend": "onnxruntime CPUExecutionProvider " + ort.__version__,
        "ort_threads": a.threads or "onnxruntime default",
        "bundle": "tiny config, seeded random weights (export --random --seed 0), FP32 ONNX, generator engines only "
                  "(no VAE / refiner: stages are the pass-through refiner)",
        "config": {"layers": cfg.num_layers, "hidden": cfg.hidden_size, "latent": [cfg.in_channels, cfg.latent_height, cfg.latent_width],
                   "first_chunk_size": cfg.first_chunk_size, "chunk_size": cfg.chunk_size,
                   "num_cached_chunks": cfg.num_cached_chunks},
        "chunks": len(rows), "latent_frames": cfg.first_chunk_size + a.chunks * cfg.chunk_size,
        "video_frames": video_frames, "video_seconds": video_s,
        "bundle_load_s": load_s,
        "session_loop": {"wall_s": loop_s, "seconds_per_video_second": loop_s / video_s,
                         "note": "Runtime.start + iterating the session (no video writing); bundle already loaded"},
        "flatness_time": flatness(times),
        "memory": mem,
        "per_chunk": rows,
    }
    if not a.no_cli:
        res["cli_end_to_end"] = cli_run(bundle, a.chunks, tmp)
        print("cli:", json.dumps(res["cli_end_to_end"]))
    print("flatness:", json.dumps(res["flatness_time"]))
    print("memory:", json.dumps(mem))
    print(f"session loop {loop_s:.2f} s for {video_s:.1f} s of video = {loop_s / video_s:.3f} s per video second")
    res["loadavg_at_end"] = list(os.getloadavg())
    tmpd.cleanup()
    return res


# ----------------------------------------------------------------------------------------------- GPU
def run_gpu(a) -> dict | None:
    """Full config, random weights, bf16: Triton GDN vs plain eager loop (same weights, inputs, run)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from sanawm.config import StreamingSchedule, full
    from sanawm.models.generator_step import GeneratorStep, initial_state, window_inputs
    from sanawm.models.transformer import SanaWMGenerator

    cfg = full()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = SanaWMGenerator(cfg).to(dev, torch.bfloat16).eval()
    steps = {True: GeneratorStep(model, True).eval(), False: GeneratorStep(model, False).eval()}
    sched = StreamingSchedule()
    T = cfg.first_chunk_size + a.gpu_chunks * cfg.chunk_size
    g = torch.Generator(device="cpu").manual_seed(0)
    C, H, W = cfg.in_channels, cfg.latent_height, cfg.latent_width
    noise = torch.randn(1, C, T, H, W, generator=g).to(dev)
    first_lat = torch.randn(1, C, 1, H, W, generator=g).to(dev)
    text = torch.randn(1, cfg.caption_length, cfg.caption_channels, generator=g).to(dev)
    mask = torch.ones(1, cfg.caption_length, device=dev)
    cam = torch.zeros(1, T, 20, device=dev)
    cam[..., :16] = torch.eye(4, device=dev).reshape(16)
    cam[..., 16:] = torch.tensor([W * 0.9, W * 0.9, W / 2, H / 2], device=dev)
    plucker = 0.3 * torch.randn(1, cfg.plucker_channels, T, H, W, generator=g).to(dev)

    def loop(gdn_backend: str):
        if gdn_backend == "auto":
            os.environ.pop("SANAWM_GDN_BACKEND", None)
        else:
            os.environ["SANAWM_GDN_BACKEND"] = gdn_backend
        state = {k: v.to(dev) for k, v in initial_state(cfg, True).items()}
        chunk_kv, out, times = {}, [], []
        torch.cuda.reset_peak_memory_stats()
        t_all = time.perf_counter()
        with torch.inference_mode():
            for c, (s, e) in enumerate(cfg.chunk_bounds(T)):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                first = c == 0
                step, n = steps[first], e - s
                cond = torch.zeros(n, dtype=torch.bool, device=dev)
                x = noise[:, :, s:e].clone()
                if first:
                    x[:, :, :1] = first_lat
                    cond[0] = True
                base = {"frame_index": torch.arange(s, e, device=dev), "text": text, "text_mask": mask,
                        "camera": cam[:, s:e], "plucker": plucker[:, :, s:e], **state}
                if not first:
                    base.update({k: v.to(dev) for k, v in window_inputs(cfg, chunk_kv, c).items()})
                call = lambda f: dict(zip(step.output_names, step(*[f[nm] for nm in step.input_names])))  # noqa: E731
                for i, t in enumerate(sched.timesteps):
                    tvec = torch.where(cond, 0.0, float(t)).view(1, n)
                    v = call(dict(base, latents=x, timestep=tvec))["velocity"]
                    x = x + torch.where(cond, 0.0, sched.sigmas[i + 1] - sched.sigmas[i]).view(1, 1, n, 1, 1) * v
                    if first:
                        x[:, :, :1] = first_lat
                outs = call(dict(base, latents=x, timestep=torch.zeros(1, n, device=dev)))
                state = {step.io.state_map[k]: v for k, v in outs.items() if k in step.io.state_map}
                chunk_kv[c] = [{nm: outs[f"b{i}.{nm}_chunk"] for nm in ("k", "v", "cam_k", "cam_v")}
                               if cfg.is_softmax_block(i) else None for i in range(cfg.num_layers)]
                chunk_kv = {d: kv for d, kv in chunk_kv.items() if d in set(cfg.window_chunks(c + 1))}
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                out.append(x.float())
        total = time.perf_counter() - t_all
        video_s = 8 * (T - 1) / FPS
        return {"per_chunk_s": times, "wall_s": total, "seconds_per_video_second": total / video_s,
                "steady_seconds_per_video_second": statistics.median(times[1:]) / (8 * cfg.chunk_size / FPS),
                "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20,
                "flatness_time": flatness(times, early=2) if len(times) > 8 else None}, torch.cat(out, 2)

    res = {**facts("cuda: " + torch.cuda.get_device_name(0)), "config": "full, random weights (seed 0), bf16",
           "chunks": a.gpu_chunks + 1}
    try:
        loop("auto")  # warm-up: Triton compile / autotune, cuBLAS handles
        tri, x_tri = loop("auto")
        eag, x_eag = loop("reference")
        res.update(torch_triton=tri, eager_bf16=eag, speedup=eag["wall_s"] / tri["wall_s"],
                   max_abs_latent_diff=float((x_tri - x_eag).abs().max()))
    except Exception as e:  # noqa: BLE001 - record, do not lose the CPU results
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        os.environ.pop("SANAWM_GDN_BACKEND", None)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=40, help="last chunk index on CPU (chunks 0..N)")
    ap.add_argument("--bundle", help="tiny bundle folder to use / create (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--no-cli", action="store_true", help="skip the `sanawm generate` subprocess run")
    ap.add_argument("--gpu-chunks", type=int, default=10, help="last chunk index on the GPU")
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args(argv)
    if a.chunks < 20:
        ap.error("--chunks must be >= 20")
    results = {"cpu": run_cpu(a)}
    gpu = None if a.no_gpu else run_gpu(a)
    if gpu is None:
        print("no CUDA GPU: GPU part skipped", file=sys.stderr)
    if not a.no_save:
        p = ROOT / "bench" / "results" / "runtime-cpu.json"
        p.write_text(json.dumps(results["cpu"], indent=1) + "\n")
        print(f"wrote {p}")
        if gpu is not None:
            name = re.sub(r"[^a-z0-9]+", "-", gpu["device"].split(":", 1)[-1].strip().lower()).strip("-")
            q = ROOT / "bench" / "results" / f"runtime-{name}.json"
            q.write_text(json.dumps(gpu, indent=1) + "\n")
            print(f"wrote {q}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
