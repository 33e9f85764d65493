"""The runtime's refiner stage on ONNX Runtime CPU over a tiny refiner bundle: per-chunk wall time and bundle bytes.

    PYTHONPATH=<a sanawm checkout> python bench/refiner_stage.py --bundle DIR [--chunks 12] [--label new] [--out FILE]

Exports the tiny random refiner (``sanawm-export --random --config tiny --engines <the checkout's refiner
engines>``) into ``--bundle`` unless it is there, then refines ``--chunks`` stage-1 chunks of seeded random latents
with ``RefinerStage.from_executors`` (chunk 0 = sink + one block, later chunks one block each) and times each
``process`` call. Only names both the three-engine refiner (before issue 11) and the one-engine refiner share are
used, so the same script measures either checkout: run it once per checkout, alternately, and compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--label", default="run")
    ap.add_argument("--out", type=Path, default=None, help="append this run as one JSON line")
    a = ap.parse_args(argv)

    import sanawm
    from sanawm.config import tiny
    from sanawm.constants import REFINER_ENGINES
    from sanawm.engines import load_executor
    from sanawm.runtime.refiner_stage import RefinerStage
    from sanawm.runtime.stages import Chunk

    if not (a.bundle / "manifest.json").is_file():
        from sanawm.export.cli import main as export

        assert export(["--random", "--config", "tiny", "--seed", "3", "--out", str(a.bundle), "--backends",
                       "onnxruntime", "--engines", ",".join(REFINER_ENGINES)]) == 0
    m = json.loads((a.bundle / "manifest.json").read_text())
    cfg = tiny()
    C, H, W = cfg.in_channels, cfg.latent_height, cfg.latent_width
    T = cfg.first_chunk_size + (a.chunks - 1) * cfg.chunk_size
    g = np.random.default_rng(0)
    z = g.standard_normal((1, C, T, H, W)).astype(np.float32)
    L, D = m["refiner"]["layout"]["caption_length"], m["refiner"]["layout"]["caption_channels"]
    stage = RefinerStage.from_executors({n: load_executor(a.bundle, n, "onnxruntime") for n in REFINER_ENGINES},
                                        layout=m["refiner"])
    stage.set_text((g.standard_normal((1, L, D)).astype(np.float32), np.ones((1, L), np.float32)))
    times = []
    for c, (s, e) in enumerate(cfg.chunk_bounds(T)):
        t0 = time.perf_counter()
        out = stage.process(Chunk(c, s, e, np.ascontiguousarray(z[:, :, s:e]))).refined  # read out: same work both
        times.append(time.perf_counter() - t0)
        assert out.shape == (1, C, e - s, H, W)
    data = sum(f.stat().st_size for n in REFINER_ENGINES for f in a.bundle.glob(f"{n}.onnx*"))
    res = {"label": a.label, "sanawm": str(Path(sanawm.__file__).parent), "engines": list(REFINER_ENGINES),
           "chunks": a.chunks, "per_chunk_ms": [round(t * 1e3, 2) for t in times],
           "median_ms_later_chunks": round(statistics.median(times[1:]) * 1e3, 2), "bundle_onnx_bytes": data}
    print(json.dumps(res))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
