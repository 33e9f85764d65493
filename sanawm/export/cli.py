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
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..bundle import BACKENDS, PLAN_BACKENDS
from ..spec import StepIO

log = logging.getLogger("sanawm.export")
GENERATOR_ENGINES = ("generator_first", "generator_next")
VAE_ENGINES = ("vae_encoder", "vae_decoder_first", "vae_decoder_next")
REFINER_ENGINES = ("refiner_sink", "refiner_step", "refiner_capture")
ALL_ENGINES = GENERATOR_ENGINES + VAE_ENGINES + REFINER_ENGINES + ("toy",)
VAE_PRECISION = "fp32"  # FP16/BF16/FP8 only once a test shows the decoder error stays small
CALIBRATED_PRECISIONS = ("fp8", "fp16")  # run the calibration loop (FP8 scales, FP16 range check): it keys the stage
TINY_REFINER_CAPTION_LENGTH = 16  # `sanawm encode-prompt --refiner-encoder tiny` default
FULL_REFINER_CAPTION_LENGTH = 1024  # LTX-2 connector tokens


@dataclass
class EngineJob:
    name: str
    kind: str
    module: object  # torch module, StepIO convention
    io: StepIO
    calibrate: Callable | None  # calibrate(qmodule) for FP8 (None: the engine is never quantized)
    sample: dict | Callable[[], dict]  # numpy feeds for tracing and the ORT check (callable: made on demand)
    notes: str
    precision: str | None = None  # fixed precision (VAE: fp32) or None = the CLI's --precision
    key: dict | None = None  # stage-key inputs replacing the generator's source/config (VAE engines)
    chains_to: str | None = None  # engine fed by this one's state outputs (vae_decoder_first -> _next)


# --------------------------------------------------------------------------------- generator engines
def generator_feeds(cfg, first: bool, seed: int, t: float = 960.0, chunk: int | None = None) -> dict[str, np.ndarray]:
    """Plausible numpy feeds for one generator_step call (noise latents, identity cameras, zero state,
    a random half-filled window)."""
    from ..spec import generator_step_io

    io = generator_step_io(cfg, first)
    rng = np.random.default_rng(seed)
    n = cfg.first_chunk_size if first else cfg.chunk_size
    c = 0 if first else (chunk or 1)
    start = 0 if first else cfg.first_chunk_size + (c - 1) * cfg.chunk_size
    cam = np.zeros((1, n, 20), np.float32)
    cam[..., :16] = np.eye(4, dtype=np.float32).reshape(16)
    cam[..., 16:] = [cfg.latent_width, cfg.latent_width, cfg.latent_width / 2, cfg.latent_height / 2]
    feeds = {}
    for tsp in io.inputs:
        nm = tsp.name
        if nm == "timestep":
            a = np.full(tsp.shape, t, np.float32)
            if first:
                a[0, 0] = 0.0  # condition frame stays clean
        elif nm == "frame_index":
            a = np.arange(start, start + n, dtype=np.int64)
        elif nm == "camera":
            a = cam
        elif nm == "text_mask":
            a = np.ones(tsp.shape, np.float32)
            a[:, -max(1, tsp.shape[1] // 4):] = 0
        elif nm == "window_valid":
            a = np.zeros(tsp.shape, np.float32)
            a[: tsp.shape[0] // 2] = 1
        elif nm in io.state_map.values():
            a = np.zeros(tsp.shape, np.float32)
        elif nm == "plucker":
            a = (0.3 * rng.standard_normal(tsp.shape)).astype(np.float32)
        else:
            a = rng.standard_normal(tsp.shape).astype(np.float32)
        feeds[nm] = a
    return feeds


def generator_calibration(cfg, first: bool, chunks: int, seed: int = 1234) -> Callable:
    """Calibration loop for a quantized GeneratorStep: ``chunks`` chunks of a streaming run, every
    denoising timestep and the t = 0 cache pass, state chained through the cache passes. For the
    ``next`` engine, chunk 0 runs through the first graph with calibration paused."""
    import torch

    from ..config import StreamingSchedule
    from ..models.generator_step import GeneratorStep, window_inputs
    from .quantize import quantizers

    def loop(qstep) -> None:
        model = qstep.model
        steps = {True: GeneratorStep(model, True), False: GeneratorStep(model, False)}
        qs = quantizers(qstep).values()
        state: dict = {}
        chunk_kv: dict = {}
        # first graph: chunk 0 of `chunks` different clips; next graph: chunks 1..chunks of one clip
        runs = [(0, k) for k in range(max(1, chunks))] if first else [(c, c) for c in range(max(1, chunks) + 1)]
        for c, k in runs:
            is_first = c == 0
            for m in qs:
                m.mode = "float" if (is_first and not first) else "calib"
            if is_first:
                state, chunk_kv = {}, {}
            step = steps[is_first]
            io = step.io
            base = {nm_: torch.from_numpy(arr) for nm_, arr in generator_feeds(model.cfg, is_first, seed + k, chunk=c).items()}
            noise = base["latents"].clone()
            # seeded, so FP8 scales (and the stage's up-to-date check) are reproducible run to run
            x0 = torch.randn(noise.shape, generator=torch.Generator().manual_seed(seed + 7919 * k + c)) * 0.7
            if not is_first:
                base.update(window_inputs(model.cfg, chunk_kv, c))
            base.update(state)
            for t in list(StreamingSchedule().timesteps) + [0.0]:
                f = dict(base)
                f["latents"] = x0 + (t / 1000.0) * (noise - x0)
                f["timestep"] = torch.full_like(base["timestep"], t)
                if is_first:
                    f["timestep"][0, 0] = 0.0
                outs = dict(zip(step.output_names, step(*[f[tn.name] for tn in io.inputs])))
            state = {io.state_map[o]: outs[o] for o in io.state_map}
            chunk_kv[c] = [
                {nm: outs[f"b{i}.{nm}_chunk"] for nm in ("k", "v", "cam_k", "cam_v")} if model.cfg.is_softmax_block(i) else None
                for i in range(model.cfg.num_layers)
            ]
        for m in qs:
            m.mode = "calib"

    return loop


def generator_jobs(cfg, model, names, calib_chunks: int) -> list[EngineJob]:
    from ..models.generator_step import GeneratorStep
    from .onnx import FIXED_SHAPE_NOTE

    jobs = []
    for name in names:
        first = name == "generator_first"
        step = GeneratorStep(model, first).eval()
        jobs.append(
            EngineJob(
                name, "generator_step", step, step.io, generator_calibration(cfg, first, calib_chunks),
                generator_feeds(cfg, first, seed=7), f"{'first' if first else 'later'} chunk graph; {FIXED_SHAPE_NOTE}",
            )
        )
    return jobs


# --------------------------------------------------------------------------------------- VAE engines
def random_vae_config(config_name: str, latent_channels: int) -> dict:
    """Config of the seeded random VAE for ``--random``: the tiny VAE for the tiny generator (its latent
    channels set to the generator's ``in_channels``), the full LTX-2 VAE otherwise."""
    from ..models.vae import full_vae_config, tiny_vae_config

    if config_name == "tiny":
        return tiny_vae_config(latent_channels=latent_channels)
    c = full_vae_config()
    if c["latent_channels"] != latent_channels:
        raise ValueError(
            f"the full LTX-2 VAE has {c['latent_channels']} latent channels, the {config_name!r} generator takes "
            f"{latent_channels}; use a matching --config or pass --vae"
        )
    return c


def _json_config(cfg) -> dict:
    """A diffusers config as plain JSON values (tuples -> lists, private keys dropped)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(cfg).items() if not k.startswith("_")}


def vae_section(vae, cfg, source: dict) -> dict:
    """The manifest's ``vae`` entry: config, image and latent sizes, compression, source."""
    from ..models.vae import vae_compression

    s, t = vae_compression(vae.config)
    return {
        "config": _json_config(vae.config),
        "latent_channels": int(vae.config["latent_channels"]),
        "latent_hw": [cfg.latent_height, cfg.latent_width],
        "image_hw": [cfg.latent_height * s, cfg.latent_width * s],
        "spatial_compression": s,
        "temporal_compression": t,
        "precision": VAE_PRECISION,
        "source": source,
    }


def check_vae_matches(vae, cfg, where: str) -> None:
    C = int(vae.config["latent_channels"])
    if C != cfg.in_channels:
        raise ValueError(
            f"{where} has {C} latent channels, the generator config takes {cfg.in_channels}; use the VAE that "
            "belongs to this generator (LTX-2: 128 channels with --config full)"
        )


def vae_jobs(vae, cfg, names, key: dict) -> list[EngineJob]:
    """Export jobs of the VAE engines for the generator config's latent size (FP32, fixed shapes)."""
    from ..models.vae import VAEDecoderStep, VAEEncoderStep, vae_compression, vae_encoder_io
    from .onnx import FIXED_SHAPE_NOTE, random_inputs, run_torch

    s, _ = vae_compression(vae.config)
    lhw = (cfg.latent_height, cfg.latent_width)
    H, W = lhw[0] * s, lhw[1] * s
    jobs = []
    first = VAEDecoderStep(vae, True, lhw).eval()
    rng = np.random.default_rng(5)
    first_feeds = {"latents": rng.standard_normal(first.io.inputs[0].shape).astype(np.float32)}
    for name in names:
        if name == "vae_encoder":
            io = vae_encoder_io(vae.config, H, W)
            img = rng.uniform(-1, 1, io.inputs[0].shape).astype(np.float32)
            jobs.append(EngineJob(name, "vae_encoder", VAEEncoderStep(vae, H, W).eval(), io, None, {"image": img},
                                  f"first frame {W}x{H} -> normalised latent; {FIXED_SHAPE_NOTE}", VAE_PRECISION, key))
        elif name == "vae_decoder_first":
            jobs.append(EngineJob(name, "vae_decoder_step", first, first.io, None, first_feeds,
                                  "chunk 0: 4 latent frames (condition + 3) -> 24 frames (condition frame dropped), "
                                  f"no cache inputs; {FIXED_SHAPE_NOTE}", VAE_PRECISION, key, "vae_decoder_next"))
        else:
            nxt = VAEDecoderStep(vae, False, lhw).eval()

            def feeds(nxt=nxt) -> dict:
                """Trace and check on the caches a real chunk 0 leaves behind (not random noise); made only when
                the stage runs (a full-size first chunk costs a while on a CPU)."""
                outs = run_torch(first, first.io, first_feeds)
                f = random_inputs(nxt.io, seed=6)
                f.update({first.io.state_map[k]: v for k, v in outs.items() if k in first.io.state_map})
                return f

            jobs.append(EngineJob(name, "vae_decoder_step", nxt, nxt.io, None, feeds,
                                  "later chunks: 3 latent frames + cache.{i} -> 24 frames + cache.{i}.out; "
                                  f"{FIXED_SHAPE_NOTE}", VAE_PRECISION, key))
    return jobs


# ----------------------------------------------------------------------------------- refiner engines
def load_refiner(path: Path):
    """The refiner transformer (float32) from a diffusers folder: its ``transformer/`` or the repo root."""
    import torch

    from ..models.refiner import load_refiner_transformer

    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        return load_refiner_transformer(str(path), dtype=torch.float32, subfolder="transformer").float().eval()
    return load_refiner_transformer(str(path), dtype=torch.float32).float().eval()


def check_refiner_matches(transformer, cfg, where: str) -> None:
    c = transformer.config
    if int(c.in_channels) != cfg.in_channels or int(c.out_channels or c.in_channels) != cfg.in_channels:
        raise ValueError(
            f"{where} takes {c.in_channels} latent channels (out {c.out_channels}), the generator config takes "
            f"{cfg.in_channels}; use the refiner that belongs to this generator (LTX-2: 128 channels with --config full)"
        )
    if int(getattr(c, "patch_size", 1)) != 1 or int(getattr(c, "patch_size_t", 1)) != 1:
        raise ValueError(f"{where} has patch_size {c.patch_size}/{c.patch_size_t}; the refiner graphs support 1/1 (LTX-2)")


def refiner_section(core, layout, transformer, sigmas, source: dict, precision: str) -> dict:
    """The manifest's ``refiner`` entry: the layout the runtime's refiner stage checks and uses."""
    return {
        "layout": {
            "block_size": layout.block_size,
            "kv_max_frames": layout.kv_max_frames,
            "sink_frames": layout.sink_frames,
            "history_frames": layout.history_frames,
            "latent_hw": [layout.latent_height, layout.latent_width],
            "caption_length": layout.caption_length,
            "caption_channels": int(core.caption_channels),
        },
        "sigmas": [float(x) for x in sigmas],
        "timestep_scale_multiplier": float(core.timestep_scale_multiplier),
        "fps": float(core.fps),
        "latent_channels": int(core.in_channels),
        "num_layers": int(core.num_layers),
        "heads": int(core.heads),
        "head_dim": int(core.head_dim),
        "default_seed": 42,
        "config": _json_config(transformer.config),
        "precision": precision,
        "source": source,
    }


def _refiner_data(core, layout, blocks: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, core.in_channels, layout.sink_frames + layout.block_size * blocks, layout.latent_height,
                      layout.latent_width, generator=g)
    text = torch.randn(1, layout.caption_length, core.caption_channels, generator=g)
    mask = torch.ones(1, layout.caption_length)
    mask[:, -max(1, layout.caption_length // 4):] = 0
    return lat, text, mask


def refiner_calibration(layout, sigmas, blocks: int, seed: int = 4321) -> Callable:
    """FP8 calibration: the whole AR loop (sink pass, every sigma, sigma-0 capture) over ``blocks`` blocks, so
    the history fills and, past ``kv_max_frames``, slides (as tests/models/test_refiner_export.py does)."""
    import torch

    from ..models.refiner import refine_stream

    def loop(qmodule) -> None:
        core = qmodule.core
        lat, text, mask = _refiner_data(core, layout, blocks, seed)
        refine_stream(core, lat, text, mask, generator=torch.Generator().manual_seed(seed + 1),
                      block_size=layout.block_size, kv_max_frames=layout.kv_max_frames,
                      sink_frames=layout.sink_frames, sigmas=sigmas)

    return loop


def refiner_feeds(core, layout, kind: str, seed: int = 8) -> dict[str, np.ndarray]:
    """Plausible feeds for tracing and the ORT check: block 1 (frames 4..6) after one block of history."""
    from ..models.refiner import refiner_io, sink_rope_offset
    from .onnx import random_inputs

    io = refiner_io(core, layout, kind)
    f = random_inputs(io, seed)
    n, sk, S = layout.block_size, layout.sink_frames, layout.tokens_per_frame
    start = sk + n
    if "frame_pos" in f:
        f["frame_pos"] = np.arange(start, start + n, dtype=np.int64)
    if kind == "sink":
        f["sink_pos"] = np.arange(sk, dtype=np.int64)
    elif "sink_pos" in f:
        off = sink_rope_offset(start, min(n, layout.history_frames), sk)
        f["sink_pos"] = np.arange(off, off + sk, dtype=np.int64)
    if "hist_valid" in f:
        v = np.zeros(layout.history_tokens, np.float32)
        v[-min(n, layout.history_frames) * S:] = 1
        f["hist_valid"] = v
    if "timestep" in f:
        f["timestep"] = np.array([0.725 * core.timestep_scale_multiplier], np.float32)
    return f


def refiner_jobs(core, layout, sigmas, names, calib_blocks: int, key: dict) -> list[EngineJob]:
    from ..models.refiner import RefinerSinkCapture, RefinerStep, refiner_io
    from .onnx import FIXED_SHAPE_NOTE

    mods = {"refiner_sink": ("sink", lambda: RefinerSinkCapture(core)), "refiner_step": ("step", lambda: RefinerStep(core)),
            "refiner_capture": ("capture", lambda: RefinerStep(core, capture=True))}
    notes = {
        "sink": "raw stage-1 frame(s) [0, sink) -> per-layer pre-RoPE sink K/V (once per clip)",
        "step": "one block at one sigma under [sink ; history ; block] attention -> velocity",
        "capture": "refined block at sigma 0 -> history window shifted by one block (hist_*.out -> hist_*)",
    }
    calib = refiner_calibration(layout, sigmas, calib_blocks)
    jobs = []
    for name in names:
        kind, make = mods[name]
        io = refiner_io(core, layout, kind)
        jobs.append(EngineJob(name, name, make().eval(), io, calib, (lambda kind=kind: refiner_feeds(core, layout, kind)),
                              f"{notes[kind]}; {FIXED_SHAPE_NOTE}", None, key))
    return jobs


def toy_job(seed: int = 0) -> EngineJob:
    import torch

    from .onnx import FIXED_SHAPE_NOTE, random_inputs, run_torch
    from .toy import ToyStep, toy_step_io

    torch.manual_seed(seed)
    io = toy_step_io()

    def calib(q):
        for s in range(4):
            run_torch(q, io, random_inputs(io, seed=100 + s))

    return EngineJob("toy", "toy_step", ToyStep().eval(), io, calib, random_inputs(io, seed), f"toy engine; {FIXED_SHAPE_NOTE}")


# ------------------------------------------------------------------------------------------------ main
def _sha256_path(p: Path) -> str:
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else b"")
        with open(f, "rb") as fh:
            for b in iter(lambda: fh.read(1 << 22), b""):
                h.update(b)
    return h.hexdigest()


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
                     "folder), or 'tiny' for the built-in random tiny model (= --random --config tiny), or 'world' for the "
                     "shipped trained toy world model (= its generator and --vae, --config world)")
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
    ap.add_argument("--vae", type=Path, default=None,
                    help="diffusers AutoencoderKLLTX2Video folder (config.json + safetensors) for the VAE engines")
    ap.add_argument("--refiner", type=Path, default=None,
                    help="diffusers SanaWMLTX2RefinerTransformer3DModel folder (the refiner's transformer/ or repo root)")
    ap.add_argument("--no-refiner", action="store_true", help="do not export the refiner engines")
    ap.add_argument("--refiner-caption-length", type=int, default=None,
                    help=f"refiner prompt tokens (default {TINY_REFINER_CAPTION_LENGTH} for the tiny random refiner, "
                         f"{FULL_REFINER_CAPTION_LENGTH} for --refiner)")
    ap.add_argument("--refiner-kv-max-frames", type=int, default=11, help="refiner sink + history latent frames")
    ap.add_argument("--refiner-fps", type=float, default=16.0, help="frame rate the refiner's RoPE assumes")
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
    if a.checkpoint is not None and str(a.checkpoint) == "world" and not a.checkpoint.exists():
        from ..worlds.models import shipped_paths  # the trained toy world model in sanawm/assets/tiny_world

        if a.config not in ("tiny", "world"):
            ap.error(f"--checkpoint world is the shipped toy world model (--config world); it conflicts with --config {a.config}")
        try:
            a.checkpoint, shipped_vae = shipped_paths()
        except ValueError as e:
            ap.error(str(e))
        a.config, a.vae = "world", a.vae or shipped_vae
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
    from .bundle_writer import BundleWriter
    from .half import FP16RangeError, convert_fp16
    from .onnx import DEFAULT_OPSET, export_onnx
    from .quantize import quantize_fp8

    opset = a.opset or DEFAULT_OPSET
    ckpt_sha = None
    if a.checkpoint is not None:
        if not a.checkpoint.exists():
            log.error("checkpoint %s does not exist", a.checkpoint)
            return 2
        log.info("hashing checkpoint %s ...", a.checkpoint)
        ckpt_sha = _sha256_path(a.checkpoint)
    source = {"checkpoint": str(a.checkpoint) if a.checkpoint else None, "checkpoint_sha256": ckpt_sha,
              "random_seed": a.seed if a.random else None}
    gen_names = [e for e in a.engines if e in GENERATOR_ENGINES]
    vae_names = [e for e in a.engines if e in VAE_ENGINES]
    ref_names = [e for e in a.engines if e in REFINER_ENGINES]
    cfg = None
    vae_info = None
    ref_info = None
    jobs: list[EngineJob] = []
    if gen_names or vae_names or ref_names:
        from ..config import get_config

        cfg = get_config(a.config)
    if gen_names:
        import torch

        if a.checkpoint is not None:
            from ..models.loading import load_generator

            log.info("loading %s into the %s config ...", a.checkpoint, a.config)
            model = load_generator(a.checkpoint, cfg)
        else:
            from ..models.transformer import SanaWMGenerator

            torch.manual_seed(a.seed)
            model = SanaWMGenerator(cfg).eval()
        jobs += generator_jobs(cfg, model, gen_names, a.calib_chunks)
    if vae_names:
        from ..models.vae import build_vae, load_vae

        if a.vae is not None:
            if not a.vae.exists():
                log.error("--vae %s does not exist", a.vae)
                return 2
            log.info("hashing VAE %s ...", a.vae)
            vsrc = {"vae": str(a.vae), "vae_sha256": _sha256_path(a.vae), "random_seed": None}
            try:
                vae = load_vae(a.vae)
                check_vae_matches(vae, cfg, f"--vae {a.vae}")
            except (OSError, ValueError) as e:
                log.error("%s", e)
                return 2
        else:
            vsrc = {"vae": None, "vae_sha256": None, "random_seed": a.seed}
            try:
                vcfg = random_vae_config(a.config, cfg.in_channels)
            except ValueError as e:
                log.error("%s", e)
                return 2
            vae = build_vae(vcfg, seed=a.seed, random_latent_stats=True)
        vae_info = vae_section(vae, cfg, vsrc)
        if a.precision != VAE_PRECISION:
            log.info("VAE engines stay %s (--precision %s applies to the generator only)", VAE_PRECISION, a.precision)
        vkey = {"vae_source": vsrc, "vae_config": vae_info["config"], "latent_hw": vae_info["latent_hw"]}
        jobs += vae_jobs(vae, cfg, vae_names, vkey)
    if ref_names:
        from ..models.refiner import STAGE_2_SIGMAS, RefinerCore, RefinerLayout, make_tiny_refiner_transformer

        if a.refiner is not None:
            if not a.refiner.exists():
                log.error("--refiner %s does not exist", a.refiner)
                return 2
            log.info("hashing refiner %s ...", a.refiner)
            rsrc = {"refiner": str(a.refiner), "refiner_sha256": _sha256_path(a.refiner), "random_seed": None}
            try:
                transformer = load_refiner(a.refiner)
            except (OSError, ValueError) as e:
                log.error("%s", e)
                return 2
            default_len = FULL_REFINER_CAPTION_LENGTH
        else:
            rsrc = {"refiner": None, "refiner_sha256": None, "random_seed": a.seed}
            transformer = make_tiny_refiner_transformer(a.seed, in_channels=cfg.in_channels, out_channels=cfg.in_channels)
            default_len = TINY_REFINER_CAPTION_LENGTH
        try:
            check_refiner_matches(transformer, cfg, f"--refiner {a.refiner}" if a.refiner else "the random refiner")
            layout = RefinerLayout(cfg.latent_height, cfg.latent_width, a.refiner_caption_length or default_len,
                                   kv_max_frames=a.refiner_kv_max_frames)
            core = RefinerCore(transformer, fps=a.refiner_fps).eval()
        except (ValueError, NotImplementedError) as e:
            log.error("%s", e)
            return 2
        sigmas = STAGE_2_SIGMAS
        ref_info = refiner_section(core, layout, transformer, sigmas, rsrc, a.precision)
        calib_blocks = max(1, a.calib_chunks) + 1
        rkey = {"refiner_source": rsrc, "refiner_config": ref_info["config"], "refiner_layout": ref_info["layout"],
                "fps": a.refiner_fps, "calib_blocks": calib_blocks if a.precision in CALIBRATED_PRECISIONS else None}
        jobs += refiner_jobs(core, layout, sigmas, ref_names, calib_blocks, rkey)
    if "toy" in a.engines:
        jobs.append(toy_job(a.seed))

    w = BundleWriter(
        a.out,
        source=source,
        export={"config": a.config, "precision": a.precision, "opset": opset, "calib_chunks": a.calib_chunks},
        generator_config=cfg.to_dict() if cfg is not None else None,
        vae=vae_info,
        refiner=ref_info,
    )
    if cfg is not None:  # what the runtime checks prompt files against (sanawm.text.spec)
        from ..text.spec import expected_stage1_encoder

        w.manifest["text"] = {
            "stage1_encoder": expected_stage1_encoder(cfg),
            "caption_length": cfg.caption_length,
            "caption_channels": cfg.caption_channels,
            "refiner_channels": (ref_info or {}).get("layout", {}).get("caption_channels"),
        }
    for job in jobs:
        precision = job.precision or a.precision
        w.engine(job.name, kind=job.kind, io=job.io, precision=precision, notes=job.notes, chains_to=job.chains_to)
        if job.key is not None:  # VAE: its own weights; the generator checkpoint does not matter
            key = {**job.key, "engine": job.name, "precision": precision, "opset": opset, "sanawm": __version__}
        else:
            key = {"source": source, "config": a.config, "cfg": cfg.to_dict() if cfg else None, "engine": job.name,
                   "precision": precision, "opset": opset, "sanawm": __version__,
                   "calib_chunks": a.calib_chunks if precision in CALIBRATED_PRECISIONS else None}

        def export(art, job=job, precision=precision):
            module, facts = job.module, {"opset": opset}
            what = f"{max(1, a.calib_chunks) + 1} refiner block(s)" if job.name in REFINER_ENGINES else f"{a.calib_chunks} chunk(s)"
            if precision == "fp8":
                log.info("[%s] fp8: calibrating over %s ...", job.name, what)
                module, rep = quantize_fp8(job.module, job.calibrate)
                facts["fp8_layers"] = rep.layers
            elif precision == "fp16":
                log.info("[%s] fp16: converting, range check over %s ...", job.name, what)
                module, hrep = convert_fp16(job.module, job.calibrate)
                facts["fp16_layers"] = hrep.layers
                facts["fp16_max_activation"] = hrep.max_activation
            sample = job.sample() if callable(job.sample) else job.sample
            res = export_onnx(module, job.io, art.onnx, opset=opset, sample_inputs=sample)
            log.info("[%s] onnx check on ORT CPU: max rel err %.2e vs torch", job.name, res.max_rel_error)
            facts["ort_check_rel_error"] = res.max_rel_error
            # FP16: a 1-ulp FP32 difference before a Cast moves the FP16 value by one FP16 ulp (2^-11 relative),
            # and chained layers add them up (tiny generator: 1.2e-3); a wrong graph is O(1)
            err, what, bound = res.max_rel_error, "rel err", 5e-3 if precision == "fp16" else 1e-3
            if precision == "fp8":
                # Free-running FP8 outputs drift apart by FP8 rounding flips however correct the graph is
                # (see fp8_layer_check); gate on the teacher-forced comparison where it is defined.
                from .blocks import AmbiguousTaps, fp8_layer_check
                from .onnx import random_inputs

                try:
                    chk = fp8_layer_check(module, job.io, art.onnx, sample if sample is not None else random_inputs(job.io))
                    err, what = max(chk["forced"].values()), "teacher-forced FP8 rel err"
                    facts["ort_check_fp8_forced_rel_error"] = err
                except AmbiguousTaps:  # a layer runs twice per call: keep the free-running check, FP8-level bound
                    what, bound = "free-running FP8 rel err", 5e-2
                log.info("[%s] fp8 check: %s %.2e (bound %.0e)", job.name, what, err, bound)
            if not err < bound:
                raise RuntimeError(f"[{job.name}] ONNX and torch disagree ({what} {err:.2e} >= {bound:.0e}); "
                                   "not writing the bundle")
            return facts

        try:
            w.stage_onnx(job.name, key, export)
        except FP16RangeError as e:  # bad input for this precision, not a bug: say which layers and what to do
            log.error("[%s] %s", job.name, e)
            return 2
        for b in a.backends:
            if b not in PLAN_BACKENDS:
                continue
            from ..engines.tensorrt import import_trt
            from .build import build_engine

            trt = import_trt(b)
            targets = [t for t in a.rtx_targets.split(",") if t] if b == "tensorrt_rtx" else None
            stream = job.name in a.weight_streaming
            bkey = {"backend": b, "version": trt.__version__, "opt": a.opt_level, "targets": targets}
            if stream:
                bkey["weight_streaming"] = True

            def build(art, b=b, targets=targets, stream=stream):
                return build_engine(art.onnx, art.plan(b), backend=b, optimization_level=a.opt_level,
                                    timing_cache=a.timing_cache, compute_capabilities=targets,
                                    weight_streaming=stream).build

            w.stage_plan(job.name, b, bkey, build)
    path = w.write()
    log.info("bundle written: %s (%d engines)", path, len(w.manifest["engines"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
