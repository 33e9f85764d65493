"""``sanawm-export``: checkpoint -> engine bundle (ONNX, FP8 Q/DQ, TensorRT / TensorRT-RTX plans, manifest).

    sanawm-export --checkpoint PATH | --random  --config tiny|full  --out DIR  [--vae VAE_DIR]
                  [--backends onnxruntime,tensorrt_rtx,tensorrt] [--fp8 | --precision fp32|fp16|fp8]
                  [--engines generator_first,generator_next,vae_encoder,vae_decoder_first,vae_decoder_next,
                             refiner_sink,refiner_step,refiner_capture]
                  [--refiner REFINER_DIR | --no-refiner] [--weight-streaming [ENGINES]]
                  [--calib-chunks N] [--timing-cache PATH]

VAE engines (``vae_encoder``, ``vae_decoder_first``, ``vae_decoder_next``) come from ``--vae`` (a diffusers
``AutoencoderKLLTX2Video`` folder) or, with ``--random``, a seeded random VAE (tiny config: latent channels =
the generator's ``in_channels``); they are always exported in FP32 (``--precision`` applies to the generator and refiner).
The manifest's ``vae`` section records the VAE config and the image size the runtime crops first frames to.

Refiner engines (``refiner_sink``, ``refiner_step``, ``refiner_capture``; ``sanawm.models.refiner``) come from
``--refiner`` (a diffusers ``SanaWMLTX2RefinerTransformer3DModel`` folder: the refiner's ``transformer/`` or its
repo root) or, with ``--random``, the seeded tiny random refiner (latent channels = the generator's
``in_channels``). Same latent H x W as the generator; ``--precision`` as the generator's (FP8 calibration and the FP16
range check run the sink pass, the three sigmas and the sigma-0 capture over ``--calib-chunks`` + 1 blocks). The manifest's ``refiner`` section
records the layout (block size, kv_max_frames, sink frames, sigmas, caption length/channels, timestep scale), so
the runtime needs nothing else. ``--no-refiner`` skips them. ``--weight-streaming`` builds the TensorRT plans of
the refiner engines (or of the listed engines, or ``all``) with ``BuilderFlag.WEIGHT_STREAMING``.

Each stage is skipped when its artifact exists with its recorded hash and unchanged inputs (one log line
per stage). Engine ``toy`` (``sanawm.export.toy``) is a small stand-in for smoke tests.

Layout: this module parses arguments; ``sanawm.export.families`` holds one export spec per model family;
``sanawm.export.pipeline`` runs load -> quantize -> export -> check -> build -> bundle.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..bundle import BACKENDS, PLAN_BACKENDS
from ..constants import FPS, GENERATOR_ENGINES, REFINER_ENGINES, VAE_ENGINES
from .families.refiner import FULL_REFINER_CAPTION_LENGTH, TINY_REFINER_CAPTION_LENGTH
from .job import ExportInputError

log = logging.getLogger("sanawm.export")
ALL_ENGINES = GENERATOR_ENGINES + VAE_ENGINES + REFINER_ENGINES + ("toy",)


def normalize_backend(name: str) -> str:
    """The manifest's spelling of a backend: 'onnx' / 'ort' -> onnxruntime, 'tensorrt-rtx' -> tensorrt_rtx."""
    b = name.strip().lower().replace("-", "_")
    return {"onnx": "onnxruntime", "ort": "onnxruntime", "trt": "tensorrt", "trt_rtx": "tensorrt_rtx"}.get(b, b)


def missing_backend_library(backends) -> str | None:
    """The executors' own message (with the install command) for the first library this export lacks, else None:
    ONNX Runtime always (every exported graph is checked on it), TensorRT / TensorRT-RTX for their plans."""
    from ..engines import tensorrt as trt_engines
    from ..engines.onnxruntime import import_ort

    try:
        import_ort()
        for b in backends:
            if b in PLAN_BACKENDS:
                trt_engines.import_trt(b)
    except ImportError as e:
        return str(e)
    return None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sanawm-export", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="stage-1 checkpoint (official .pth/.safetensors or diffusers "
                     "folder), or 'tiny' for the built-in random tiny model (= --random --config tiny)")
    src.add_argument("--random", action="store_true", help="seeded random weights (tests, smoke runs)")
    ap.add_argument("--seed", type=int, default=0, help="seed for --random weights")
    ap.add_argument("--config", default="tiny", help="generator config: tiny | full")
    ap.add_argument("--out", type=Path, required=True, help="bundle folder")
    ap.add_argument("--backends", "--backend", default="onnxruntime",
                    help=f"comma list of {','.join(BACKENDS)} ('onnx' and 'tensorrt-rtx' spellings are accepted)")
    prec = ap.add_mutually_exclusive_group()
    prec.add_argument("--fp8", action="store_const", const="fp8", dest="precision")
    prec.add_argument("--precision", choices=("fp32", "fp16", "fp8"),
                      help="fp32 (default); fp16: FP16 weights and GEMMs on the block linears, for GPUs without FP8 "
                           "(range-checked over the calibration run); fp8: E4M3 W8A8 Q/DQ on the same layers. The "
                           "VAE stays fp32; state, norms, softmax and the GDN recurrence stay fp32 in every case")
    ap.add_argument("--kv-dtype", choices=("auto", "fp16", "fp32"), default="auto",
                    help="storage of the generator's softmax K/V window (its largest carried state): auto = fp16 for "
                         "fp16/fp8 exports, fp32 for fp32 exports; the engine computes in fp32 and casts at its boundary")
    ap.add_argument("--vae", type=Path, default=None,
                    help="diffusers AutoencoderKLLTX2Video folder (config.json + safetensors) for the VAE engines")
    ap.add_argument("--refiner", type=Path, default=None,
                    help="diffusers SanaWMLTX2RefinerTransformer3DModel folder (the refiner's transformer/ or repo root)")
    ap.add_argument("--no-refiner", action="store_true", help="do not export the refiner engines")
    ap.add_argument("--refiner-caption-length", type=int, default=None,
                    help=f"refiner prompt tokens (default {TINY_REFINER_CAPTION_LENGTH} for the tiny random refiner, "
                         f"{FULL_REFINER_CAPTION_LENGTH} for --refiner)")
    ap.add_argument("--refiner-kv-max-frames", type=int, default=11, help="refiner sink + history latent frames")
    ap.add_argument("--refiner-fps", type=float, default=float(FPS), help="frame rate the refiner's RoPE assumes")
    ap.add_argument("--weight-streaming", nargs="?", const="refiner", default=None, metavar="ENGINES",
                    help="build TensorRT plans with weight streaming: for the refiner engines (no value), a comma "
                         "list of engines, or 'all'; the runtime then takes weight_streaming_budget")
    ap.add_argument("--engines", default=None,
                    help=f"comma list of {','.join(ALL_ENGINES)}; default: the generator, plus the VAE engines "
                         "with --random or --vae, plus the refiner engines with --random or --refiner "
                         "(unless --no-refiner)")
    ap.add_argument("--calib-chunks", type=int, default=3, help="chunks of a streaming run used for FP8 calibration")
    ap.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache file (loaded and saved)")
    ap.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimisation level (0-5)")
    ap.add_argument("--rtx-targets", default="sm_86,sm_89,sm_120", help="TensorRT-RTX compute capabilities")
    ap.add_argument("--opset", type=int, default=None, help="ONNX opset (default 21)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.checkpoint is not None and str(a.checkpoint) == "tiny" and not a.checkpoint.exists():
        if a.config != "tiny":
            ap.error(f"--checkpoint tiny is the built-in random tiny model; it conflicts with --config {a.config}")
        a.checkpoint, a.random = None, True
    a.precision = a.precision or "fp32"
    a.backends = [normalize_backend(b) for b in a.backends.split(",") if b.strip()]
    for b in a.backends:
        if b not in BACKENDS:
            ap.error(f"unknown backend {b!r}; choose from {','.join(BACKENDS)}")
    if a.engines is None:
        a.engines = list(GENERATOR_ENGINES) + (list(VAE_ENGINES) if (a.random or a.vae is not None) else [])
        if (a.random or a.refiner is not None) and not a.no_refiner:
            a.engines += list(REFINER_ENGINES)
    else:
        a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
        if a.no_refiner and any(e in REFINER_ENGINES for e in a.engines):
            ap.error("--no-refiner conflicts with refiner engines in --engines; drop one of them")
    for e in a.engines:
        if e not in ALL_ENGINES:
            ap.error(f"unknown engine {e!r}; choose from {','.join(ALL_ENGINES)}")
    if "toy" in a.engines and not a.random:
        ap.error("engine 'toy' has no checkpoint; use --random")
    if a.refiner is not None and a.no_refiner:
        ap.error("--refiner and --no-refiner conflict; drop one of them")
    if any(e in REFINER_ENGINES for e in a.engines) and a.refiner is None and not a.random:
        ap.error("the refiner engines need the refiner weights: pass --refiner PATH (a diffusers "
                 "SanaWMLTX2RefinerTransformer3DModel folder), leave them out of --engines, or pass --no-refiner")
    if a.weight_streaming is not None:
        ws = [e.strip() for e in a.weight_streaming.split(",") if e.strip()]
        if ws == ["refiner"]:
            ws = list(REFINER_ENGINES)
        elif ws == ["all"]:
            ws = list(ALL_ENGINES)
        bad = [e for e in ws if e not in ALL_ENGINES]
        if bad:
            ap.error(f"--weight-streaming: unknown engines {bad}; give none (the refiner engines), 'all' or a comma "
                     f"list of {','.join(ALL_ENGINES)}")
        if not any(b in PLAN_BACKENDS for b in a.backends):
            ap.error(f"--weight-streaming applies to TensorRT plans; add one of {','.join(PLAN_BACKENDS)} to --backends")
        a.weight_streaming = ws
    else:
        a.weight_streaming = []
    if any(e in VAE_ENGINES for e in a.engines) and a.vae is None and not a.random:
        ap.error("the VAE engines need the VAE weights: pass --vae PATH (the checkpoint's vae/ folder, a diffusers "
                 "AutoencoderKLLTX2Video) or leave them out of --engines")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    missing = missing_backend_library(a.backends)
    if missing:  # before any export work, not after minutes of it
        log.error("%s", missing)
        return 2
    from .pipeline import run_export

    try:
        run_export(a)
    except ExportInputError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
