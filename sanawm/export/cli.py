"""``sanawm-export``: checkpoint -> engine bundle (ONNX, FP8 Q/DQ, TensorRT / TensorRT-RTX plans, manifest).

    sanawm-export --checkpoint PATH | --random  [--config tiny|full|world]  --out DIR  [--vae VAE_DIR] [--streamed]
                  [--backends onnxruntime,tensorrt_rtx,tensorrt] [--fp8 | --precision fp32|fp16|fp8|nvfp4]
                  [--engines generator,vae_encoder,vae_decoder,refiner]
                  [--refiner REFINER_DIR | --no-refiner] [--weight-streaming [ENGINES]]
                  [--calib-chunks N] [--calib-prompts F] [--calib-images F] [--calib-cameras C]
                  [--calib-device cpu|cuda]
                  [--keep-high-precision LIST] [--act-scale max|percentile:P] [--timing-cache PATH]

VAE engines (``vae_encoder``, ``vae_decoder``) come from ``--vae`` (a diffusers
``AutoencoderKLLTX2Video`` folder) or, with ``--random``, a seeded random VAE (tiny config: latent channels =
the generator's ``in_channels``); they are always exported in FP32 (``--precision`` applies to the generator and refiner).
The manifest's ``vae`` section records the VAE config and the image size the runtime crops first frames to.

The refiner engine (``refiner``: one weight set, profiles sink / block; ``sanawm.models.refiner``) comes from
``--refiner`` (a diffusers ``SanaWMLTX2RefinerTransformer3DModel`` folder: the refiner's ``transformer/`` or its
repo root) or, with ``--random``, the seeded tiny random refiner (latent channels = the generator's
``in_channels``). Same latent H x W as the generator; ``--precision`` as the generator's (FP8 calibration and the FP16
range check run the sink pass, the three sigmas and the sigma-0 capture over ``--calib-chunks`` + 1 blocks). The manifest's ``refiner`` section
records the layout (block size, kv_max_frames, sink frames, sigmas, caption length/channels, timestep scale), so
the runtime needs nothing else. ``--no-refiner`` skips them. ``--weight-streaming`` builds the TensorRT plans of
the refiner engines (or of the listed engines, or ``all``) with ``BuilderFlag.WEIGHT_STREAMING``.

The generator config is detected from ``--checkpoint`` (``sanawm.models.pretrained``); ``--config`` only picks
between built-in configs of the same structure and must fit the checkpoint. FP8 calibration data
(``--calib-prompts/-images/-cameras`` and their defaults, ``sanawm.export.calibration``) and the per-layer policy
(``--keep-high-precision``, ``--act-scale``; ``sanawm.export.precision_policy``) are recorded in the manifest.

Each stage is skipped when its artifact exists with its recorded hash and unchanged inputs (one log line
per stage). Engine ``toy`` (``sanawm.export.toy``) is a small stand-in for smoke tests.

Errors: bad input (flags, missing weights, a missing backend library, ``ExportInputError``) prints one line and
exits 2; anything else is a bug: traceback, exit 1 (``sanawm.cli.base.run``).

Layout: this module parses arguments (click; option sections in ``--help``); ``sanawm.export.families`` holds one export spec per model family;
``sanawm.export.pipeline`` runs load -> quantize -> export -> check -> build -> bundle.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import click

from ..bundle import BACKENDS, PLAN_BACKENDS
from ..cli.base import BoundaryCommand, UserError, common_options, option, run, version_option
from ..constants import FPS, GENERATOR_ENGINES, REFINER_ENGINES, VAE_ENGINES
from .families.refiner import FULL_REFINER_CAPTION_LENGTH, TINY_REFINER_CAPTION_LENGTH

log = logging.getLogger("sanawm.export")
ALL_ENGINES = GENERATOR_ENGINES + VAE_ENGINES + REFINER_ENGINES + ("toy",)
PROG = "sanawm-export"
PRECISIONS = ("fp32", "fp16", "fp8", "nvfp4")
KV_DTYPES = ("auto", "fp16", "fp32")
CONFIGS = ("tiny", "full", "world")


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


def _bad(msg: str):
    raise click.UsageError(msg)


def _engine_list(text: str) -> list[str]:
    return [e.strip() for e in text.split(",") if e.strip()]


def resolve(p: dict) -> SimpleNamespace:
    """The export options from the parsed flags: defaults filled in, combinations checked (``click.UsageError``)."""
    a = SimpleNamespace(**p)
    if a.checkpoint is None and not a.random:
        _bad("give the weights: --checkpoint PATH (or 'tiny') or --random")
    if a.checkpoint is not None and a.random:
        _bad("--checkpoint and --random conflict; drop one of them")
    if a.checkpoint is not None and str(a.checkpoint) == "tiny" and not a.checkpoint.exists():
        if a.config not in (None, "tiny"):
            _bad(f"--checkpoint tiny is the built-in random tiny model; it conflicts with --config {a.config}")
        a.checkpoint, a.random = None, True
    if a.checkpoint is not None and str(a.checkpoint) == "world" and not a.checkpoint.exists():
        from ..worlds.models import shipped_paths  # the trained toy world model in sanawm/assets/tiny_world

        if a.config not in (None, "world"):
            _bad(f"--checkpoint world is the shipped toy world model (--config world); it conflicts with --config {a.config}")
        try:
            a.checkpoint, shipped_vae = shipped_paths()
        except ValueError as e:
            _bad(str(e))
        a.config, a.vae = "world", a.vae or shipped_vae
    if a.random and a.config is None:
        a.config = "tiny"  # seeded random weights have no config of their own; a real --checkpoint is detected
    a.precision = a.fp8 or a.precision or "fp32"
    if a.fp8 and p.get("precision") not in (None, "fp8"):
        _bad(f"--fp8 conflicts with --precision {p['precision']}; drop one of them")
    a.backends = [normalize_backend(b) for b in a.backends.split(",") if b.strip()]
    for b in a.backends:
        if b not in BACKENDS:
            _bad(f"unknown backend {b!r}; choose from {','.join(BACKENDS)}")
    if a.engines is None:
        a.engines = list(GENERATOR_ENGINES) + (list(VAE_ENGINES) if (a.random or a.vae is not None) else [])
        if (a.random or a.refiner is not None) and not a.no_refiner:
            a.engines += list(REFINER_ENGINES)
    else:
        a.engines = _engine_list(a.engines)
        if a.no_refiner and any(e in REFINER_ENGINES for e in a.engines):
            _bad("--no-refiner conflicts with refiner engines in --engines; drop one of them")
    for e in a.engines:
        if e not in ALL_ENGINES:
            _bad(f"unknown engine {e!r}; choose from {','.join(ALL_ENGINES)}")
    if "toy" in a.engines and not a.random:
        _bad("engine 'toy' has no checkpoint; use --random")
    if a.refiner is not None and a.no_refiner:
        _bad("--refiner and --no-refiner conflict; drop one of them")
    if any(e in REFINER_ENGINES for e in a.engines) and a.refiner is None and not a.random:
        _bad("the refiner engines need the refiner weights: pass --refiner PATH (a diffusers "
             "SanaWMLTX2RefinerTransformer3DModel folder), leave them out of --engines, or pass --no-refiner")
    a.weight_streaming = _weight_streaming(a.weight_streaming, a.backends)
    _precision_policy(a)
    if a.calib_device != "cpu":  # where the FP8 calibration forwards run (families.refiner_streamed)
        from .families.refiner_streamed import calib_device_refusal

        msg = calib_device_refusal(a)
        if msg:
            _bad(msg)
    if a.streamed:  # the memory-bounded generator / refiner export (sanawm.export.families.*_streamed)
        from .families.generator_streamed import streamed_refusal

        msg = streamed_refusal(a)
        if msg:
            _bad(msg)
    if any(e in VAE_ENGINES for e in a.engines) and a.vae is None and not a.random:
        _bad("the VAE engines need the VAE weights: pass --vae PATH (the checkpoint's vae/ folder, a diffusers "
             "AutoencoderKLLTX2Video) or leave them out of --engines")
    return a


def _precision_policy(a) -> None:
    """``a.policy`` from --keep-high-precision / --act-scale; calibration flags only where something calibrates."""
    from .act_scale import ActScaleError
    from .precision_policy import PolicyError, PrecisionPolicy

    try:
        a.policy = PrecisionPolicy.parse(a.keep_high_precision, a.act_scale)
    except (PolicyError, ActScaleError) as e:
        _bad(str(e))
    if a.precision != "fp8" and (a.keep_high_precision is not None or a.act_scale != "max"):
        _bad("--keep-high-precision and --act-scale shape FP8 quantization; add --precision fp8 or drop them")
    if (a.calib_prompts or a.calib_images or a.calib_cameras) and a.random:
        _bad("--calib-prompts/--calib-images/--calib-cameras calibrate a real checkpoint; random weights calibrate on "
             "random inputs (drop them, or pass --checkpoint)")


def _weight_streaming(value, backends) -> list[str]:
    if value is None:
        return []
    ws = _engine_list(value)
    if ws in (["refiner"], []):
        ws = list(REFINER_ENGINES)
    elif ws == ["all"]:
        ws = list(ALL_ENGINES)
    bad = [e for e in ws if e not in ALL_ENGINES]
    if bad:
        _bad(f"--weight-streaming: unknown engines {bad}; give none (the refiner engines), 'all' or a comma "
             f"list of {','.join(ALL_ENGINES)}")
    if not any(b in PLAN_BACKENDS for b in backends):
        _bad(f"--weight-streaming applies to TensorRT plans; add one of {','.join(PLAN_BACKENDS)} to --backends")
    return ws


def export_options(f):
    """The options, in help order (click applies decorators bottom-up, so they are applied reversed)."""
    opts = [
        option("inputs", "--checkpoint", type=click.Path(path_type=Path), help="stage-1 checkpoint (official "
               ".pth/.safetensors or diffusers folder), or 'tiny' for the built-in random tiny model (= --random "
               "--config tiny), or 'world' for the shipped trained toy world model (its generator and --vae, "
               "--config world)"),
        option("inputs", "--random", is_flag=True, help="seeded random weights (tests, smoke runs)"),
        option("inputs", "--seed", type=int, default=0, show_default=True, help="seed for --random weights"),
        option("inputs", "--config", type=click.Choice(CONFIGS), default=None,
               help="generator config; default: detected from --checkpoint (config.json or the weight shapes; a "
               "given --config that does not fit the checkpoint is an error), tiny with --random"),
        option("inputs", "--vae", type=click.Path(path_type=Path), help="diffusers AutoencoderKLLTX2Video folder "
               "(config.json + safetensors) for the VAE engines"),
        option("inputs", "--refiner", type=click.Path(path_type=Path), help="diffusers "
               "SanaWMLTX2RefinerTransformer3DModel folder (the refiner's transformer/ or repo root)"),
        option("inputs", "--no-refiner", is_flag=True, help="do not export the refiner engines"),
        option("inputs", "--streamed", is_flag=True, help="memory-bounded generator and refiner export: the graph "
               "is traced without weights, FP8 calibration loads one block / layer at a time and the weights stream "
               "from the official .safetensors or .pt --checkpoint (generator) and the --refiner folder's safetensors (one "
               "file or sharded; bf16 is cast per tensor) into <engine>.onnx.data (peak RAM ~ one block + "
               "activations); fp32 / fp8; the VAE engines take the whole-model path"),
        option("inputs", "--engines", default=None, help=f"comma list of {','.join(ALL_ENGINES)}; default: the "
               "generator, plus the VAE engines with --random or --vae, plus the refiner engines with --random or "
               "--refiner (unless --no-refiner)"),
        option("refiner", "--refiner-caption-length", type=int, default=None, help=f"refiner prompt tokens (default "
               f"{TINY_REFINER_CAPTION_LENGTH} for the tiny random refiner, {FULL_REFINER_CAPTION_LENGTH} for --refiner)"),
        option("refiner", "--refiner-kv-max-frames", type=int, default=11, show_default=True,
               help="refiner sink + history latent frames"),
        option("refiner", "--refiner-fps", type=float, default=float(FPS), show_default=True,
               help="frame rate the refiner's RoPE assumes"),
        option("precision", "--fp8", "fp8", flag_value="fp8", default=None, help="= --precision fp8"),
        option("precision", "--precision", type=click.Choice(PRECISIONS), default=None, help="fp32 (default); fp16: "
               "FP16 weights and GEMMs on the block linears, for GPUs without FP8 (range-checked over the "
               "calibration run); fp8: E4M3 W8A8 Q/DQ on the same layers; nvfp4: FP4 W4A4 (16-element blocks, FP8 "
               "block scales) on the same layers, for RTX 50 (sm_120) with --backends tensorrt_rtx (ONNX Runtime "
               "cannot run it). The VAE stays fp32; state, norms, softmax "
               "and the GDN recurrence stay fp32 in every case"),
        option("precision", "--kv-dtype", type=click.Choice(KV_DTYPES), default="auto", show_default=True,
               help="storage of the generator's softmax K/V window and the refiner's sink / history K/V (the largest "
               "carried state): auto = fp16 for "
               "fp16/fp8/nvfp4 exports (the generator's window range-checked over the calibration run: an overflow "
               "is refused), fp32 for fp32 exports; the engine computes in fp32 and casts at its boundary"),
        option("precision", "--calib-chunks", type=int, default=3, show_default=True,
               help="chunks of a streaming run used for FP8 calibration"),
        # --- FP8 calibration inputs and per-layer precision policy (sanawm.export.calibration, .precision_policy)
        option("calibration", "--calib-prompts", type=click.Path(path_type=Path), multiple=True, help="prompt files "
               "from `sanawm encode-prompt` (or folders of them; repeatable) for FP8 calibration; required for a real "
               "checkpoint other than the shipped world model"),
        option("calibration", "--calib-images", type=click.Path(path_type=Path), multiple=True, help="first-frame "
               "images (PNG/JPEG or folders; repeatable), encoded with --vae; default: ray-traced built-in scenes"),
        option("calibration", "--calib-cameras", multiple=True, help="camera paths (trajectory .npy/.npz/.txt, a "
               "preset name or an action string like 'w-24,d-48'; repeatable); default: every built-in preset"),
        option("calibration", "--calib-device", type=click.Choice(("cpu", "cuda")), default="cpu",
               show_default=True, help="where the FP8 calibration forwards run (--streamed: each block's / layer's "
               "weights go to the device as they load; amax comes back to the CPU); recorded in the manifest"),
        option("calibration", "--keep-high-precision", default=None, metavar="LIST", help="layers kept out of FP8: "
               "comma list of embedders, final, first:N, last:N, blocks:I-J or module patterns (default "
               "'embedders,final')"),
        option("calibration", "--act-scale", default="max", show_default=True, help="FP8 activation scales: max or "
               "percentile:P (e.g. percentile:99.99) of |x| over the calibration run"),
        option("backend", "--backends", "--backend", default="onnxruntime", show_default=True,
               help=f"comma list of {','.join(BACKENDS)} ('onnx' and 'tensorrt-rtx' spellings are accepted)"),
        option("backend", "--weight-streaming", is_flag=False, flag_value="refiner", default=None, metavar="ENGINES",
               help="build TensorRT plans with weight streaming: for the refiner engines (no value), a comma list "
               "of engines, or 'all'; the runtime then takes weight_streaming_budget"),
        option("backend", "--timing-cache", type=click.Path(path_type=Path), default=None,
               help="TensorRT timing cache file (loaded and saved)"),
        option("backend", "--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
               help="TensorRT builder optimisation level"),
        option("backend", "--rtx-targets", default="sm_86,sm_89,sm_120", show_default=True,
               help="TensorRT-RTX compute capabilities"),
        option("backend", "--opset", type=int, default=None, help="ONNX opset (default 21)"),
        option("output", "--out", type=click.Path(path_type=Path), required=True, help="bundle folder"),
    ]
    for deco in reversed(opts):
        f = deco(f)
    return f


def _setup_logging() -> None:
    from ..cli.base import STATE

    level = logging.DEBUG if STATE["verbosity"] > 0 else logging.WARNING if STATE["verbosity"] < 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sanawm").setLevel(level)
    for noisy in ("onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.command(PROG, cls=BoundaryCommand, context_settings={"help_option_names": ["-h", "--help"]})
@version_option(PROG)
@export_options
@common_options
def export_command(**params) -> int:
    """Checkpoint -> engine bundle (ONNX, FP8 Q/DQ, TensorRT / TensorRT-RTX plans, manifest)."""
    a = resolve(params)
    _setup_logging()
    missing = missing_backend_library(a.backends)
    if missing:  # before any export work, not after minutes of it
        raise UserError(missing)
    from .pipeline import run_export

    run_export(a)
    return 0


def parse_args(argv=None) -> SimpleNamespace:
    """The resolved options of a ``sanawm-export`` command line (raises ``click.UsageError`` on bad flags)."""
    with export_command.make_context(PROG, list(sys.argv[1:] if argv is None else argv)) as ctx:
        return resolve(ctx.params)


def main(argv=None) -> int:
    """Entry point of ``sanawm-export``; returns the exit status (0, 1: a bug, 2: bad input)."""
    return run(export_command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
