"""``sanawm generate``: a clip from an engine bundle, a first frame, a camera path and a prompt (torch-free).

A text ``--prompt`` is encoded by `sanawm encode-prompt` in a subprocess (through the prompt cache) before any
engine loads, so the encoder's memory is gone when generation starts. ``--save-session`` writes the session's
state when the run stops at its end or at ``--max-chunks`` (not on Ctrl-C: a chunk may be half done); ``--resume`` continues such a file on
the same bundle into a new video (the chunks an uninterrupted run would have produced next).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import click

from ..bundle import BACKENDS
from ..camera import PRESETS
from ..constants import FPS
from .base import SectionedCommand, UserError, common_options, option, say, user_input
from .inputs import parse_budget, prepare_inputs, read_manifest, target_num_frames
from .prompting import REFINER_ZERO_WARNING, check_refiner_prompt, encode_for_run, prompt_inputs
from .render import render, report

ACTION_STYLES = ("current", "diffusers")
ENCODER_DEVICES = ("cpu", "cuda")


def generate_options(f):
    """The options, bottom-up (click applies decorators in reverse): output, backend, prompt, camera, inputs."""
    out = [
        option("output", "--seconds", type=float, default=10.0, show_default=True,
               help="clip length at 16 fps (snapped to 1.5 s steps)"),
        option("output", "--seed", type=int, default=0, show_default=True, help="seed of the generator's noise"),
        option("output", "--out", default="clip.mp4", show_default=True,
               help="output MP4 (playable while it is being written)"),
        option("output", "--png-dir", help="also write every frame as PNG here"),
        option("output", "--save-latents", help="also write the clip's latents [1, C, T, h, w] to this .npy"),
        option("output", "--save-session", help="write the session's state here when the run stops (its end or "
               "--max-chunks); continue it with --resume"),
        option("output", "--max-chunks", type=click.IntRange(min=1), help="stop after this many chunks (with "
               "--save-session: render a long clip in pieces)"),
    ]
    backend = [
        option("backend", "--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True,
               help="executor library (the bundle must hold its files)"),
        option("backend", "--verify", is_flag=True, help="re-hash every bundle file against the manifest (slow for "
               "large bundles; by default existence, sizes and path safety are checked)"),
        option("backend", "--no-cuda-graphs", is_flag=True, help="TensorRT backends: run without CUDA graph capture"),
        option("backend", "--weight-streaming-budget", help="TensorRT engines built with --weight-streaming: device "
               "memory for their weights, bytes ('2G') or a fraction ('50%'); the rest streams from host memory"),
    ]
    prompt = [
        option("prompt", "--prompt-embeddings", help="prompt file from `sanawm encode-prompt` (.safetensors) or .npz"),
        option("prompt", "--prompt", help="text prompt, encoded (cached) by `sanawm encode-prompt` in a subprocess; "
               "needs --stage1-encoder DIR or --tiny-encoder"),
        option("prompt", "--no-prompt", is_flag=True, help="run on all-zero prompt features: a constant, "
               "out-of-distribution condition (the output does not ignore it), not 'no text'"),
        option("prompt", "--stage1-encoder", help="local Gemma-2 (gemma-2-2b-it) folder or SANA-WM pipeline folder, "
               "for --prompt"),
        option("prompt", "--tiny-encoder", is_flag=True, help="encode --prompt with the tiny random Gemma-2 (tiny bundles)"),
        option("prompt", "--refiner-encoder", help="refiner text encoder folder (or 'tiny' with --tiny-encoder), for --prompt"),
        option("prompt", "--refiner-max-length", type=int, help="refiner text tokens for --prompt (default: encode-prompt's)"),
        option("prompt", "--encoder-device", type=click.Choice(ENCODER_DEVICES), help="device of the text encoder "
               "(default: cuda when available; cpu for --tiny-encoder)"),
        option("prompt", "--cache-dir", help="prompt cache (default: $SANAWM_CACHE/prompts or ~/.cache/sanawm/prompts)"),
        option("prompt", "--no-refiner", is_flag=True, help="skip the stage-2 refiner even if the bundle has one"),
        option("prompt", "--zero-refiner-prompt", is_flag=True, help="run the refiner on all-zero text features when "
               "the prompt has no refiner text (a constant condition, not 'no text')"),
        option("prompt", "--refiner-seed", type=int, default=42, show_default=True,
               help="seed of the refiner's per-block noise (release default 42)"),
    ]
    camera = [
        option("camera", "--camera", help="camera path: c2w .npy (F, 4, 4), SANA-WM-Bench .npz or RealEstate10K .txt"),
        option("camera", "--intrinsics", help="intrinsics .npy for --camera .npy: (4,), (3, 3), (F, 4) or (F, 3, 3) "
               "in image pixels"),
        option("camera", "--action", help='action string, e.g. "w-80,dw-40,none-10" (one pose per frame)'),
        option("camera", "--action-style", type=click.Choice(ACTION_STYLES), default="current", show_default=True,
               help="--action key mapping: current upstream (a/d yaw, j/l strafe, 0.025 m / 0.6 deg per frame) or "
               "diffusers' first-release mapping (a/d strafe, j/l yaw, 0.05 m / 1.2 deg)"),
        option("camera", "--preset", type=click.Choice(PRESETS), help="named camera motion"),
    ]
    inputs = [
        option("inputs", "--bundle", required=True, help="engine bundle folder (from sanawm-export)"),
        option("inputs", "--image", help="first frame (any size: resized and centre-cropped to the model frame)"),
        option("inputs", "--latent", help="first-frame latent .npy [1, C, 1, h, w] instead of --image (no VAE "
               "encoder needed)"),
        option("inputs", "--resume", help="continue a session saved with --save-session (no image, camera or prompt: "
               "they are in the file)"),
    ]
    for deco in reversed(inputs + camera + prompt + backend + out):
        f = deco(f)
    return f


def check_options(o) -> None:
    """Combinations click cannot express; each message says what to give instead."""
    fresh = ("image", "latent", "camera", "action", "preset", "prompt", "prompt_embeddings", "no_prompt")
    if o.resume is not None:
        given = [k for k in fresh if getattr(o, k)]
        if given:
            raise UserError(f"--resume continues a saved session with its own inputs; drop --{given[0].replace('_', '-')}")
        return
    if (o.image is None) == (o.latent is None):
        raise UserError("give exactly one of --image start.png or --latent first_latent.npy")
    if sum(x is not None for x in (o.camera, o.action, o.preset)) != 1:
        raise UserError("give exactly one camera source: --camera path.npy, --action \"w-80,...\" or --preset NAME")
    if o.intrinsics is not None and o.camera is None:
        raise UserError("--intrinsics goes with --camera (actions and presets use a default 60 degree lens)")
    if o.prompt is not None and o.prompt_embeddings is not None:
        raise UserError("give either --prompt \"text\" or --prompt-embeddings FILE, not both")
    if o.no_prompt and (o.prompt is not None or o.prompt_embeddings is not None):
        raise UserError("--no-prompt runs without a prompt; drop it or drop --prompt / --prompt-embeddings")
    if o.prompt is None and (o.tiny_encoder or o.stage1_encoder is not None):
        raise UserError("--stage1-encoder / --tiny-encoder encode a text --prompt; give --prompt \"...\"")
    if o.no_refiner and o.zero_refiner_prompt:
        raise UserError("--no-refiner and --zero-refiner-prompt conflict; drop one of them")


def load_runtime(o, bundle: Path):
    from ..runtime import Runtime

    options = {"use_cuda_graph": False} if o.no_cuda_graphs else {}
    return Runtime.load(bundle, o.backend, refiner=not o.no_refiner, refiner_seed=o.refiner_seed,
                        weight_streaming_budget=parse_budget(o.weight_streaming_budget), verify=o.verify, **options)


def start_session(o, bundle: Path):
    """(runtime, session): a fresh session from the inputs, or the one in --resume."""
    from ..runtime.session import Session

    if o.resume is not None:
        if not Path(o.resume).is_file():
            raise UserError(f"--resume {o.resume} does not exist; write one with --save-session")
        runtime = load_runtime(o, bundle)
        with user_input(f"--resume {o.resume}"):
            session = Session.resume(o.resume, runtime)
        if session.done:
            raise UserError(f"--resume {o.resume}: the saved session has no chunks left (it ran to its end)")
        return runtime, session
    num_frames = target_num_frames(o.seconds)
    manifest = read_manifest(bundle)
    with tempfile.TemporaryDirectory(prefix="sanawm-prompt-") as tmp:
        # encode first: the encoder subprocess has exited (its memory released) before any engine loads
        encoded = encode_for_run(o, manifest, Path(tmp), "generate") if o.prompt is not None else None
        runtime = load_runtime(o, bundle)
        first, camera, F = prepare_inputs(runtime, o, num_frames)
        prompt = prompt_inputs(runtime, o, manifest, encoded)
    check_refiner_prompt(runtime, prompt, o)
    return runtime, runtime.start(first, prompt, camera, seed=o.seed, num_frames=F)


@click.command("generate", cls=SectionedCommand,
               short_help="generate a clip from a bundle, a first frame, a camera path and a prompt")
@generate_options
@common_options
def generate(**params) -> int:
    """Generate a clip from an engine bundle (torch-free): a first frame (--image or --latent), ONE camera
    source (--camera, --action or --preset) and a prompt (--prompt, --prompt-embeddings or --no-prompt)."""
    t0 = time.perf_counter()
    o = SimpleNamespace(**params)
    check_options(o)
    bundle = Path(o.bundle)
    if not bundle.is_dir():
        raise UserError(f"--bundle {bundle} does not exist; build one with `sanawm-export --out {bundle} ...`")
    with warnings.catch_warnings():
        if o.zero_refiner_prompt:  # asked for explicitly: the refiner stage need not warn about it
            warnings.filterwarnings("ignore", message=REFINER_ZERO_WARNING)
        runtime, session = start_session(o, bundle)
        try:
            ih, iw = runtime.image_hw
            what = f"decoded {iw}x{ih} video" if runtime.has_decoder else "latent preview (the bundle has no VAE decoder)"
            say(f"generating {session.num_output_frames} frames ({session.num_output_frames / FPS:.1f} s) in "
                f"{session.num_chunks - session.next_chunk} chunks, {what} -> {o.out}")
            summary = render(session, o.out, o.png_dir, o.save_latents, max_chunks=o.max_chunks)
            if o.save_session:  # not on Ctrl-C (an exception skips this): a chunk may be half done then
                session.save(o.save_session)
                say(f"session saved to {o.save_session} after chunk {session.next_chunk}/{session.num_chunks}"
                    + ("" if session.done else f"; continue with --resume {o.save_session}"))
            report(summary, t0)
        finally:
            runtime.close()
    return 0
