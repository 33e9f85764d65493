"""``sanawm demo`` on the trained toy world model (run side: never imports torch in this process).

Builds (once) an ONNX Runtime FP32 bundle from the weights shipped in ``sanawm/assets/tiny_world`` through
``sanawm-export --checkpoint world`` in a subprocess, renders a held-out scene's first frame, follows an
action path and writes the MP4; ``--compare`` writes the generated frames and the ray-traced ground truth
side by side (generated left, truth right).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..constants import GENERATOR_ENGINES, VAE_ENGINES
from .data import render_clip
from .scene import EVAL_SEEDS

DEMO_ENGINES = GENERATOR_ENGINES + VAE_ENGINES
DEMO_ACTION = "w-24,d-48,w-24"  # forward, turn right, forward: the world visibly follows the camera
DEMO_SCENE = 2  # index into EVAL_SEEDS: a turn past a pillar and a box, where following the camera shows
DEMO_PROMPT = "a road"  # = sanawm.cli.DEMO_PROMPT (<= 6 bytes: the tiny text encoder keeps 8 tokens)
WORLD_CHECKPOINT = "world"  # sanawm-export spelling of the shipped weights


def bundle_ready(bundle: Path, checkpoint: str = WORLD_CHECKPOINT) -> bool:
    mp = bundle / "manifest.json"
    if not mp.is_file():
        return False
    try:
        m = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return all(n in m.get("engines", {}) for n in DEMO_ENGINES) and m.get("export", {}).get("config") == "world"


def build_bundle(bundle: Path, checkpoint: str = WORLD_CHECKPOINT, precision: str = "fp32",
                 backends: str = "onnxruntime", quiet: bool = False, vae: str | None = None) -> None:
    """``sanawm-export --checkpoint world --config world`` in a subprocess (keeps this process torch-free);
    another ``checkpoint`` (generator safetensors) needs its ``vae`` folder."""
    code = "import sys; from sanawm.export.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "--checkpoint", str(checkpoint), "--config", "world", "--out", str(bundle),
           "--backends", backends, "--precision", precision, "--engines", ",".join(DEMO_ENGINES)]
    if vae is not None:
        cmd += ["--vae", str(vae)]
    r = subprocess.run(cmd, capture_output=quiet, text=True)
    if r.returncode != 0:
        tail = (r.stderr or "")[-2000:] if quiet else ""
        raise ValueError(f"building the world bundle failed (exit {r.returncode}): sanawm-export "
                         f"{' '.join(cmd[3:])}\n{tail}")


def generate(runtime, prompt, seed: int, action: str, num_frames: int, noise_seed: int = 0):
    """Generate scene ``seed`` along ``action``: (generated frames (F-1, H, W, 3), truth (F-1, ...)) uint8,
    both without the condition frame."""
    clip = render_clip(seed, action, num_frames)
    session = runtime.start(clip.frames[0], prompt, (clip.camera, clip.plucker), seed=noise_seed, num_frames=num_frames)
    gen = np.concatenate([c.frames for c in session], axis=0)  # frames are host arrays (uint8)
    return gen, clip.frames[1:1 + len(gen)]


def run_demo(args, prompt_fn) -> int:
    """The ``sanawm demo`` command. ``prompt_fn(runtime, manifest)`` returns the prompt embeddings (the CLI's
    own tiny-encoder path, so this module does not depend on the CLI's internals)."""
    from ..cli.inputs import target_num_frames
    from ..runtime import Runtime
    from ..runtime.video import ProgressiveMP4Writer

    bundle = Path(args.bundle_dir)
    if not bundle_ready(bundle):
        print(f"building the world bundle (trained toy model, ONNX Runtime, FP32) in {bundle} (once; needs the build "
              "side: torch, onnx, diffusers) ...", file=sys.stderr)
        t0 = time.perf_counter()
        build_bundle(bundle)
        print(f"demo: bundle built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    runtime = Runtime.load(bundle, "onnxruntime")
    prompt = prompt_fn(runtime, json.loads((bundle / "manifest.json").read_text()))
    F = target_num_frames(args.seconds)
    seed = EVAL_SEEDS[int(getattr(args, "scene", DEMO_SCENE))]
    action = getattr(args, "action", None) or DEMO_ACTION
    t0 = time.perf_counter()
    gen, truth = generate(runtime, prompt, seed, action, F, args.seed)
    frames = np.concatenate([gen, truth], axis=2) if getattr(args, "compare", False) else gen
    frames = enlarge(frames, int(getattr(args, "display_scale", 1) or 1))
    w = ProgressiveMP4Writer(args.out)
    try:
        w.write_chunk(frames)
    finally:
        w.close()
    what = "generated | ground truth" if getattr(args, "compare", False) else "generated"
    print(f"demo: held-out scene {seed}, path {action!r}: {len(gen)} frames ({what}) in "
          f"{time.perf_counter() - t0:.1f} s -> {args.out}", file=sys.stderr)
    return 0


def enlarge(frames: np.ndarray, scale: int) -> np.ndarray:
    """(F, H, W, 3) -> (F, H*scale, W*scale, 3) by pixel repetition: the 32x48 model frames are too small to watch
    as they are; repetition adds no detail the model did not make."""
    return frames if scale == 1 else frames.repeat(scale, axis=1).repeat(scale, axis=2)


def strip_png(clips: list[tuple[np.ndarray, np.ndarray]], path, every: int = 8, scale: int = 4) -> None:
    """A PNG of every ``every``-th frame of each (generated, truth) clip: generated above its ground truth, clips
    stacked with a wider gap (README figure)."""
    from PIL import Image

    blocks = []
    for gen, truth in clips:
        idx = list(range(every - 1, len(gen), every))
        top = np.concatenate([gen[i] for i in idx], axis=1)
        bottom = np.concatenate([truth[i] for i in idx], axis=1)
        if blocks:
            blocks.append(np.full((6, top.shape[1], 3), 255, np.uint8))
        blocks += [top, np.full((2, top.shape[1], 3), 255, np.uint8), bottom]
    img = np.concatenate(blocks, axis=0)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)
