"""FP8 vs FP32 drift of the shipped world model over a long streaming run, per calibration set and precision policy.

    python bench/fp8_quality.py [--chunks 40] [--calib-chunks 3] [--outlier-scale 30] \
        [--out bench/results/fp8-calibration-cpu.json]

One held-out clip (scene and action from ``sanawm.worlds.eval_pairs``; the path, then holding still) streams for
``--chunks`` chunks through the torch step (the release's 4-step sampler; FP8 as torch fake quant, which the
exported ONNX matches to rounding, tests/export/test_quantize.py) in FP32 and in each FP8 variant, each run
free-running on its own outputs. Per chunk: relative RMS error of the FP8 chunk latents against the FP32 ones.

Variants: calibration on the world model's default set (its training prompts and training-scene clips through
the same streaming sampler, ``sanawm.export.calibration``) vs on N(0, 1) text / identity cameras / random latents
(the old default, ``generator_calibration``); all blocks FP8 vs the first and last block kept FP32; activation
scales by max vs percentile:99.99.

Caveats, stated in the result file: the world model is a 4-block, width-64 toy whose generator trained for about
an hour on one CPU thread, and its text encoder is a random tiny Gemma whose features have no outlier channels;
real Gemma features do, so ``--outlier-scale`` multiplies ``OUTLIER_CHANNELS`` of the text features (evaluation
prompt and the real calibration prompts alike; N(0, 1) calibration text has none, as before).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sanawm.config import world  # noqa: E402
from sanawm.export.calibration import calib_frames, streaming_calibration, world_set  # noqa: E402
from sanawm.export.calibration_data import encode_frames  # noqa: E402
from sanawm.export.families.generator import generator_calibration  # noqa: E402
from sanawm.export.precision_policy import PrecisionPolicy  # noqa: E402
from sanawm.export.quantize import quantize_fp8  # noqa: E402
from sanawm.models.generator_engine import GeneratorEngine  # noqa: E402
from sanawm.models.generator_step import GeneratorStep  # noqa: E402
from sanawm.models.pretrained import from_pretrained  # noqa: E402
from sanawm.models.sampler import StreamingSampler  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

OUTLIER_CHANNELS = (3, 17)  # text-feature channels scaled by --outlier-scale (real Gemma has a few such channels)
EVAL_PROMPT = 1  # "a room" in sanawm.worlds.trainer.PROMPTS
VARIANTS = (  # (calibration set, --keep-high-precision, --act-scale)
    ("n01", "embedders,final", "max"),
    ("real", "embedders,final", "max"),
    ("n01", "embedders,final,first:1,last:1", "max"),
    ("real", "embedders,final,first:1,last:1", "max"),
    ("real", "embedders,final", "percentile:99.99"),
    ("real", "embedders,final,first:1,last:1", "percentile:99.99"),
)


def inject(text: np.ndarray, scale: float) -> np.ndarray:
    t = np.array(text, np.float32, copy=True)
    t[..., list(OUTLIER_CHANNELS)] *= scale
    return t


def eval_inputs(cfg, chunks: int, scale: float):
    """(first latent, noise, text, mask, camera, plucker) torch tensors of one held-out clip of ``chunks`` chunks."""
    from sanawm.models.vae import load_vae
    from sanawm.worlds.data import eval_pairs, render_clip
    from sanawm.worlds.models import shipped_paths
    from sanawm.worlds.paths import FRAME_HW
    from sanawm.worlds.quality import camera_inputs
    from sanawm.worlds.trainer import text_bank

    T, F = calib_frames(cfg, chunks)
    seed, action = eval_pairs(1)[0]
    cam, pl = camera_inputs(action, F)
    frame0 = render_clip(seed, action, 1 + 8).frames[0]  # the condition frame
    lat = encode_frames(load_vae(shipped_paths()[1]), [frame0], FRAME_HW)[0]
    feats, mask = text_bank()
    text = inject(feats[EVAL_PROMPT:EVAL_PROMPT + 1].numpy(), scale)
    noise = torch.randn((1, cfg.in_channels, T, cfg.latent_height, cfg.latent_width), generator=torch.Generator().manual_seed(7))
    return (torch.from_numpy(lat), noise, torch.from_numpy(text), mask[EVAL_PROMPT:EVAL_PROMPT + 1],
            torch.from_numpy(cam[None, :T]), torch.from_numpy(pl[None, :, :T])), {"scene": seed, "action": action}


def run(module, inputs) -> torch.Tensor:
    model = module.model if hasattr(module, "model") else module.step.model
    with torch.no_grad():
        return StreamingSampler(GeneratorStep(model, True), GeneratorStep(model, False)).sample(*inputs)


def per_chunk(cfg, ref: torch.Tensor, got: torch.Tensor) -> list[float]:
    return [round(rel_error(ref[:, :, s:e], got[:, :, s:e]), 6) for s, e in cfg.chunk_bounds(ref.shape[2])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--calib-chunks", type=int, default=3)
    ap.add_argument("--outlier-scale", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/fp8-calibration-cpu.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from sanawm.worlds.models import shipped_paths

    cfg = world()
    eng = GeneratorEngine(from_pretrained(shipped_paths()[0], "world")).eval()
    inputs, clip = eval_inputs(cfg, a.chunks, a.outlier_scale)
    t0 = time.time()
    ref = run(eng, inputs)
    fp32_s = time.time() - t0
    real = world_set(cfg, a.calib_chunks)
    real.texts = [(inject(t, a.outlier_scale), m) for t, m in real.texts]
    loops = {"real": streaming_calibration(cfg, real, a.calib_chunks), "n01": generator_calibration(cfg, None, a.calib_chunks)}
    rows = []
    for calib, keep, act in VARIANTS:
        pol = PrecisionPolicy.parse(keep, act)
        t0 = time.time()
        q, rep = quantize_fp8(eng, loops[calib], exclude=pol.exclude_patterns(eng) or None, act_scale=act)
        errs = per_chunk(cfg, ref, run(q, inputs))
        rows.append({"calibration": calib, "keep_high_precision": keep, "act_scale": act, "fp8_layers": len(rep.layers),
                     "first5_mean": float(np.mean(errs[:5])), "last5_mean": float(np.mean(errs[-5:])),
                     "max": float(np.max(errs)), "per_chunk_rel_err": errs, "seconds": round(time.time() - t0, 1)})
        print(f"{calib:5s} {keep:32s} {act:17s} first5 {rows[-1]['first5_mean']:.4f} last5 {rows[-1]['last5_mean']:.4f}"
              f" max {rows[-1]['max']:.4f}", flush=True)
    result = {
        "what": "FP8 (torch fake quant = the exported Q/DQ graph) vs FP32 latents per streaming chunk, shipped world model",
        "caveats": ["world model: 4 blocks, width 64, generator trained ~1 h on one CPU thread (a toy, not SANA-WM)",
                    f"text features: random tiny Gemma; channels {list(OUTLIER_CHANNELS)} scaled x{a.outlier_scale} "
                    "to stand in for real Gemma outlier channels (eval prompt and real calibration prompts)",
                    "one held-out clip, one noise seed; each run free-running on its own outputs"],
        "clip": clip, "chunks": a.chunks, "calib_chunks": a.calib_chunks, "real_calibration_set": real.to_manifest(),
        "fp32_run_seconds": round(fp32_s, 1), "variants": rows,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
