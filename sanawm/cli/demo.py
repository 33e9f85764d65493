"""``sanawm demo``: build (once) the tiny random bundle (generator + VAE) and render a short clip on CPU.

This process stays torch-free: the bundle is built by ``sanawm-export`` in a subprocess and the prompt is
encoded by the tiny random Gemma-2 in a subprocess (cached).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from ..constants import GENERATOR_ENGINES, VAE_ENGINES
from ..worlds.demo import DEMO_SCENE
from ..worlds.scene import EVAL_SEEDS
from .base import SectionedCommand, UserError, common_options, option, say
from .inputs import default_intrinsics, read_manifest, target_num_frames
from .prompting import encode_for_run, prompt_inputs
from .render import render, report

DEMO_ENGINES = GENERATOR_ENGINES + VAE_ENGINES
# Six bytes: the tiny config keeps caption_length = 8 tokens (<bos> + the last 7 of preamble + prompt) and the
# tiny tokenizer is byte-level, so a longer prompt is truncated, with a warning (the full model keeps 300 tokens).
DEMO_PROMPT = "a road"


def demo_image(hw: tuple[int, int]) -> np.ndarray:
    """A synthetic RGB first frame [H, W, 3] uint8 for the demo (sky/ground gradient with a few blocks)."""
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    sky = y < 0.55 * h
    img[..., 0] = np.where(sky, 90 + 80 * y / h, 70 + 60 * x / w)
    img[..., 1] = np.where(sky, 140 + 60 * y / h, 110 + 40 * y / h)
    img[..., 2] = np.where(sky, 230 - 40 * y / h, 60 + 20 * x / w)
    for cx, cw, ch, col in ((0.2, 0.12, 0.35, (200, 80, 60)), (0.55, 0.18, 0.25, (220, 200, 170)),
                            (0.8, 0.08, 0.45, (80, 80, 110))):
        x0, x1 = int((cx - cw / 2) * w), int((cx + cw / 2) * w)
        y0, y1 = int((0.55 - ch) * h), int(0.55 * h)
        img[y0:y1, x0:x1] = col
    return np.clip(img, 0, 255).astype(np.uint8)


def demo_bundle_ready(bundle: Path) -> bool:
    mp = bundle / "manifest.json"
    if not mp.is_file():
        return False
    try:
        have = json.loads(mp.read_text()).get("engines", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return all(n in have for n in DEMO_ENGINES)


def build_demo_bundle(bundle: Path) -> None:
    say(f"building the tiny random bundle (generator + VAE, ONNX Runtime, FP32) in {bundle} (once; needs the "
        "build side: torch, onnx, diffusers) ...")
    t0 = time.perf_counter()
    # a subprocess keeps this process torch-free. Lean: ONNX Runtime only, FP32, one ORT-vs-torch comparison per
    # engine; stages already in the folder are skipped.
    args = ["--random", "--config", "tiny", "--out", str(bundle), "--backends", "onnxruntime", "--precision", "fp32",
            "--engines", ",".join(DEMO_ENGINES)]
    r = subprocess.run([sys.executable, "-m", "sanawm.export.cli", *args])
    if r.returncode != 0:
        raise UserError(f"building the demo bundle failed (exit {r.returncode}; its message is above): "
                        f"sanawm-export {' '.join(args)}")
    say(f"demo: bundle built in {time.perf_counter() - t0:.1f} s")


@click.command("demo", cls=SectionedCommand,
               short_help="build (once) a tiny random bundle (generator + VAE) and render a short clip on CPU")
@option("output", "--out", default="demo.mp4", show_default=True, help="output MP4")
@option("output", "--seconds", type=float, default=3.0, show_default=True, help="clip length at 16 fps")
@option("output", "--seed", type=int, default=0, show_default=True, help="seed of the generator's noise")
@option("prompt", "--prompt", default=DEMO_PROMPT, show_default=True,
        help="encoded by the tiny random Gemma-2 on CPU (cached)")
@option("prompt", "--cache-dir", help="prompt cache (default: $SANAWM_CACHE/prompts or ~/.cache/sanawm/prompts)")
@option("inputs", "--bundle-dir", default="sanawm-demo-bundle", show_default=True,
        help="where the bundle is built (reused when present)")
@option("camera", "--scene", type=click.IntRange(0, len(EVAL_SEEDS) - 1), default=DEMO_SCENE, show_default=True,
        help="held-out scene index of the toy world (sanawm.worlds.EVAL_SEEDS, never trained on)")
@option("camera", "--action", default=None, help='camera path in the action language, e.g. "w-24,d-48,w-24"')
@option("output", "--compare", is_flag=True, help="write generated | ray-traced ground truth side by side")
@option("output", "--display-scale", type=click.IntRange(1, 16), default=4, show_default=True,
        help="toy world: enlarge the 32x48 frames this many times in the MP4 (nearest neighbour; display only)")
@option("inputs", "--random", is_flag=True,
        help="the tiny random-weight bundle and an orbit instead of the trained toy world model")
@common_options
def demo(**params) -> int:
    """Build (once) the bundle of the trained toy world model shipped in the package and render a held-out
    scene along an action path on CPU with ONNX Runtime (``--compare``: next to its ray-traced ground truth).
    ``--random``: the tiny random-weight bundle (structured noise; proves the pipeline, not image quality)."""
    from .. import camera as cam
    from ..runtime import Runtime

    t_start = time.perf_counter()
    o = SimpleNamespace(**params, tiny_encoder=True, stage1_encoder=None, encoder_device="cpu")
    if not o.random:
        from ..worlds.demo import run_demo

        def world_prompt(runtime, manifest):
            with tempfile.TemporaryDirectory(prefix="sanawm-prompt-") as tmp:
                return prompt_inputs(runtime, o, manifest, encode_for_run(o, manifest, Path(tmp), "demo"))

        return run_demo(o, world_prompt)
    if o.compare or o.action:
        raise UserError("--compare and --action need the toy world model; drop --random")
    bundle = Path(o.bundle_dir) if o.bundle_dir != "sanawm-demo-bundle" else Path("sanawm-demo-random-bundle")
    if not demo_bundle_ready(bundle):
        build_demo_bundle(bundle)
    manifest = read_manifest(bundle)
    F = target_num_frames(o.seconds)
    with tempfile.TemporaryDirectory(prefix="sanawm-prompt-") as tmp:
        encoded = encode_for_run(o, manifest, Path(tmp), "demo")  # tiny random Gemma-2, subprocess, CPU, cached
        runtime = Runtime.load(bundle, "onnxruntime")
        prompt = prompt_inputs(runtime, o, manifest, encoded)
    cfg = runtime.cfg
    path = cam.preset_path("orbit", F, default_intrinsics(runtime.image_hw), image_hw=runtime.image_hw)
    inputs = cam.prepare_camera(path, F, latent_hw=(cfg.latent_height, cfg.latent_width), image_hw=runtime.image_hw)
    if runtime.has_encoder:  # the full path: a first frame through the VAE encoder
        first = demo_image(runtime.image_hw)
    else:
        rng = np.random.default_rng(0)
        first = rng.standard_normal((1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width)).astype(np.float32)
    with runtime:
        session = runtime.start(first, prompt, (inputs.camera_conditions, inputs.chunk_plucker), seed=o.seed,
                                num_frames=F)
        ih, iw = runtime.image_hw
        what = f"decoded {iw}x{ih} video" if runtime.has_decoder else "latent preview (no VAE decoder in the bundle)"
        say(f"demo: {session.num_chunks} chunks on CPU (onnxruntime), {what} -> {o.out}")
        report(render(session, o.out), t_start)
    return 0
