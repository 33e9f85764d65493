"""Benchmark the frame-wise GDN forms at the model's shapes: reference vs Triton vs decomposed.

    python bench/gdn.py [--shapes chunk,clip] [--iters N] [--no-save]

Shapes (main branch: numerator + denominator, reverse on, initial state given, float32 inputs):
    chunk  B=1, H=20, T=4,   S=880, D=Dv=112   (one AR chunk: first chunk = conditioning frame + 3)
    clip   B=1, H=20, T=121, S=880, D=Dv=112   (whole clip, bidirectional)

On CPU: reference and decomposed at the chunk shape only (the clip is minutes per call there); Triton is
skipped (it needs CUDA). On a GPU: every form at both shapes, with achieved bandwidth (q, k, v, qz, kz
read once, o written once) and FLOP rate next to the measured copy bandwidth and matmul rate, and the
results go to bench/results/gdn-<gpu>.json (GPU name, versions, date). No file is written on CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sanawm.kernels.gdn import gdn_recurrent_ref, gdn_scan_decomposed  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

SHAPES = {"chunk": (1, 20, 4, 880, 112, 112), "clip": (1, 20, 121, 880, 112, 112)}


def make_inputs(B, H, T, S, D, Dv, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    ks = 1.0 / math.sqrt(D * S)  # the model's key scale kappa

    def r(*s, scale=1.0, normal=False):
        t = torch.randn(*s, generator=g) if normal else torch.rand(*s, generator=g)
        return (t * scale).to(device)

    return dict(
        q=r(B, H, T, S, D), k=r(B, H, T, S, D, scale=ks), v=r(B, H, T, S, Dv, normal=True),
        beta=r(B, H, T, S), gamma=0.9 + 0.1 * r(B, H, T),
        qz=r(B, H, T, S, D), kz=r(B, H, T, S, D, scale=ks),
        state=r(B, H, D, Dv, normal=True), z=r(B, H, D),
    )  # fmt: skip


def io_bytes(x) -> int:
    """Minimum traffic: every token input read once, o written once (states are negligible)."""
    n = sum(x[n].numel() * x[n].element_size() for n in ("q", "k", "v", "qz", "kz", "beta"))
    return n + x["v"].numel() * x["v"].element_size()


def flops(B, H, T, S, D, Dv, reverse=True) -> float:
    """Useful FLOPs of the chunkwise form (multiply-add = 2)."""
    per_frame = (
        2 * S * D * D * 2  # K^T B K and Kz^T B Kz
        + 2 * S * D * Dv  # K^T B V
        + 2 * D * D * (Dv + 1) * (2 if reverse else 1)  # scan steps (KV + z), forward (+ reverse)
        + 2 * S * D * Dv + 2 * S * D  # q H and qz Hz
    )
    return float(B * H * T * per_frame)


def timeit(fn, iters, device) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    ts = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def roofline(device) -> dict:
    """Measured copy bandwidth (bytes/s, read + write) and matmul rates (FLOP/s) on this device."""
    n = (256 << 20) // 4 if device == "cuda" else (32 << 20) // 4
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    t = timeit(lambda: b.copy_(a), 5, device)
    out = {"copy_GBps": 2 * a.numel() * 4 / t / 1e9}
    m = 8192 if device == "cuda" else 1024
    for name, dt, tf32 in (("matmul_fp32_TFLOPs", torch.float32, False), ("matmul_tf32_TFLOPs", torch.float32, True),
                           ("matmul_bf16_TFLOPs", torch.bfloat16, None)):  # fmt: skip
        if device != "cuda" and name != "matmul_fp32_TFLOPs":
            continue
        if tf32 is not None and device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        x = torch.randn(m, m, device=device, dtype=dt)
        t = timeit(lambda: x @ x, 5, device)
        out[name] = 2 * m**3 / t / 1e12
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None, help="comma list from: chunk, clip (default: chunk on CPU, both on GPU)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = (a.shapes or ("chunk,clip" if device == "cuda" else "chunk")).split(",")
    iters = a.iters or (10 if device == "cuda" else 3)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is the fp32 oracle
    torch.manual_seed(0)

    forms = {"reference": gdn_recurrent_ref, "decomposed": gdn_scan_decomposed}
    if device == "cuda":
        from sanawm.kernels.gdn.triton_gdn import gdn_scan_triton

        forms["triton"] = gdn_scan_triton
        forms["triton_tf32"] = lambda *args, **kw: gdn_scan_triton(*args, **kw, dot_precision="tf32")
    else:
        print("triton: skipped (needs a CUDA GPU; on CPU the kernels only run under TRITON_INTERPRET=1, for tests)")

    roof = roofline(device)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    print("roofline: " + ", ".join(f"{k} {v:.3g}" for k, v in roof.items()))
    results = []
    for sh in shapes:
        B, H, T, S, D, Dv = SHAPES[sh]
        x = make_inputs(B, H, T, S, D, Dv, device)
        nbytes, nflop = io_bytes(x), flops(B, H, T, S, D, Dv)
        ref = None
        for fname, fn in forms.items():
            call = lambda: fn(**x, reverse=True)  # noqa: E731
            t = timeit(call, iters, device)
            o = call()[0]
            if ref is None:
                ref = o
            row = {
                "shape": sh, "form": fname, "B": B, "H": H, "T": T, "S": S, "D": D, "Dv": Dv,
                "ms": t * 1e3, "GBps": nbytes / t / 1e9, "TFLOPs": nflop / t / 1e12,
                "rel_err_vs_reference": rel_error(ref, o),
            }  # fmt: skip
            results.append(row)
            print(f"{sh:5s} T={T:3d} {fname:12s} {row['ms']:10.2f} ms  {row['GBps']:8.2f} GB/s "
                  f"({100 * row['GBps'] / roof['copy_GBps']:5.1f}% of copy)  {row['TFLOPs']:7.3f} TFLOP/s  "
                  f"rel err {row['rel_err_vs_reference']:.1e}")  # fmt: skip
    if device == "cuda" and not a.no_save:
        import triton

        gpu = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        out = Path(__file__).parent / "results" / f"gdn-{gpu}.json"
        out.parent.mkdir(exist_ok=True)
        meta = {"gpu": name, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        out.write_text(json.dumps({"meta": meta, "roofline": roof, "results": results}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
