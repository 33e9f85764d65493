"""``sanawm``: generate a clip from an engine bundle, run the CPU demo, encode a prompt.

    sanawm generate --bundle DIR --image start.png (--camera c2w.npy [--intrinsics K.npy] | --action "w-80,..."
                    | --preset orbit) [--prompt-embeddings prompt.safetensors
                    | --prompt "text" (--stage1-encoder DIR | --tiny-encoder) [--cache-dir DIR]] --seconds 60 --seed 0
                    --backend onnxruntime --out clip.mp4 [--png-dir DIR] [--save-latents PATH] [--no-refiner]
    sanawm demo [--out demo.mp4] [--bundle-dir DIR] [--seconds N] [--prompt "text"]
    sanawm encode-prompt ...            (build side: Gemma text encoder; see `sanawm encode-prompt -h`)

The generate and demo commands never import torch: the demo builds its tiny bundle in a subprocess, and a text
``--prompt`` is encoded by `sanawm encode-prompt` in a subprocess (through the prompt cache, ``--cache-dir``,
default ``$SANAWM_CACHE/prompts`` or ``~/.cache/sanawm/prompts``), so the encoder's memory is released before the
engines load and generation starts.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

FPS = 16  # output video frame rate of SANA-WM
TEMPORAL_STRIDE = 8
DEFAULT_HFOV_DEG = 60.0  # intrinsics when none are given: 60 degree horizontal field of view, centred


class CLIError(ValueError):
    """A user-facing error: printed as `error: ...` with exit status 2."""


# ------------------------------------------------------------------------------------------- inputs
def default_intrinsics(hw: tuple[int, int]) -> np.ndarray:
    """[fx, fy, cx, cy] in pixels of an (H, W) image for a 60 degree horizontal field of view."""
    h, w = hw
    f = 0.5 * w / math.tan(math.radians(DEFAULT_HFOV_DEG) / 2)
    return np.array([f, f, w / 2.0, h / 2.0])


def load_image(path) -> np.ndarray:
    """RGB uint8 [H, W, 3] from an image file; refuses non-RGB images with the fix."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--image {p} does not exist")
    with Image.open(p) as im:
        if im.mode not in ("RGB", "RGBA", "L", "P"):
            raise CLIError(f"--image {p} has mode {im.mode}; convert it to 8-bit RGB")
        if im.mode == "RGBA" and np.asarray(im)[..., 3].min() < 255:
            raise CLIError(f"--image {p} has transparent pixels (RGBA); flatten it onto a background as RGB first")
        if im.mode != "RGB":
            warnings.warn(f"--image {p} is {im.mode}; converting to RGB", stacklevel=2)
        return np.asarray(im.convert("RGB"))


def target_num_frames(seconds: float) -> int:
    """Video frames F = 24k + 1 closest to ``seconds`` at 16 fps (the output has F - 1 frames)."""
    from .camera import snap_streaming_num_frames

    if not seconds > 0:
        raise CLIError(f"--seconds must be positive; got {seconds}")
    return snap_streaming_num_frames(int(round(seconds * FPS)) + 1)


def camera_path(args, image_hw: tuple[int, int], num_frames: int):
    """The trajectory from --camera / --action / --preset, intrinsics in pixels of the source image."""
    from . import camera as cam

    if args.intrinsics is not None and args.camera is None:
        raise CLIError("--intrinsics goes with --camera (actions and presets use a default 60 degree lens)")
    K = default_intrinsics(image_hw)
    if args.camera is not None:
        p = Path(args.camera)
        if p.suffix == ".npz":
            return cam.load_bench_npz(p, image_hw=image_hw)
        if p.suffix == ".txt":
            return cam.load_re10k_txt(p, image_hw)
        return cam.load_c2w_npy(p, str(args.intrinsics) if args.intrinsics else K, image_hw=image_hw)
    if args.action is not None:
        return cam.action_path(args.action, K, image_hw=image_hw, style=args.action_style)
    return cam.preset_path(args.preset, num_frames, K, image_hw=image_hw)


def prepare_inputs(runtime, args, num_frames: int):
    """(first frame or latent, (camera_conditions, plucker), F) for ``runtime`` from the CLI arguments."""
    from . import camera as cam

    cfg = runtime.cfg
    if args.latent is not None:
        first = np.load(args.latent, allow_pickle=False).astype(np.float32)
        src_hw = runtime.image_hw
    else:
        first = load_image(args.image)
        src_hw = first.shape[:2]
    path = camera_path(args, src_hw, num_frames)
    if args.latent is None:
        first, path = cam.prepare_first_frame(first, path, runtime.image_hw)
    else:
        path = path.with_image_hw(src_hw)
    if len(path) < num_frames:
        have = (len(path) - 1) / FPS
        warnings.warn(f"the camera path covers {have:.1f} s; the clip is cut to that length", stacklevel=2)
    path = cam.fit_num_frames(path, num_frames, stride=TEMPORAL_STRIDE * cfg.chunk_size)
    F = len(path)
    inputs = cam.prepare_camera(path, F, latent_hw=(cfg.latent_height, cfg.latent_width), image_hw=runtime.image_hw)
    return first, (inputs.camera_conditions, inputs.chunk_plucker), F


def read_manifest(bundle) -> dict:
    """The bundle's manifest.json as a dict ({} when missing or unreadable; Runtime.load reports those)."""
    try:
        m = json.loads((Path(bundle) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def _manifest_config(manifest: dict):
    from .config import GeneratorConfig

    try:
        return GeneratorConfig.from_dict(manifest["generator_config"])
    except (KeyError, TypeError, ValueError):
        return None


def encode_prompt_text(prompt: str, out: Path, *, tiny: bool = False, stage1_encoder=None, refiner_encoder=None,
                       refiner_max_length=None, caption_length=None, cache_dir=None, device=None) -> dict:
    """Encode ``prompt`` into ``out`` by running `sanawm encode-prompt` in a SUBPROCESS (this process never imports
    torch; the encoder's memory goes with the subprocess). Returns its status: cache_hit, key, stage1_encoder, ..."""
    from .text.spec import default_cache_dir

    if tiny == (stage1_encoder is not None):
        raise CLIError("--prompt needs exactly one text encoder: --stage1-encoder DIR (the local gemma-2-2b-it "
                       "folder, or the SANA-WM pipeline folder) or --tiny-encoder (tiny random bundles)")
    args = ["--prompt", prompt, "--out", str(out), "--status-json",
            "--cache-dir", str(Path(cache_dir) if cache_dir else default_cache_dir())]
    args += ["--tiny", "--device", device or "cpu"] if tiny else ["--stage1-encoder", str(stage1_encoder)]
    if device and not tiny:
        args += ["--device", device]
    if caption_length is not None:
        args += ["--caption-length", str(int(caption_length))]
    if refiner_encoder is not None:
        args += ["--refiner-encoder", str(refiner_encoder)]
    if refiner_max_length is not None:
        args += ["--refiner-max-length", str(int(refiner_max_length))]
    cmd = [sys.executable, "-m", "sanawm.text.cli", *args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (encoder logs, errors) goes to the user
    status = None
    for line in reversed((r.stdout or "").splitlines()):
        try:
            status = json.loads(line)
            break
        except ValueError:
            continue
    if r.returncode != 0 or not isinstance(status, dict) or not Path(out).is_file():
        shown = " ".join(a if " " not in a else repr(a) for a in args)
        raise CLIError(f"encoding the prompt failed (exit {r.returncode}): sanawm encode-prompt {shown}")
    return status


def prompt_inputs(runtime, args, manifest: dict | None = None, encoded: Path | None = None):
    """The clip's prompt: a text --prompt (already encoded to ``encoded``), --prompt-embeddings, or zeros."""
    from .runtime.prompt import PromptEmbeddings, load_prompt
    from .text.spec import encode_command

    path = encoded if encoded is not None else getattr(args, "prompt_embeddings", None)
    if path is None:
        print("warning: no --prompt-embeddings or --prompt given, using an empty (all-zero) prompt; encode one with "
              f"--prompt \"...\" or `{encode_command(runtime.cfg, manifest)}`", file=sys.stderr)
        return PromptEmbeddings.zeros(runtime.cfg)
    return load_prompt(path, runtime.cfg, manifest)


def _encode_for_generate(args, manifest: dict, tmp: Path, what: str) -> Path:
    """Run the prompt encoder (subprocess, cached) for ``args.prompt``; prints one line: from cache or encoded."""
    import time

    cfg = _manifest_config(manifest)
    out = tmp / "prompt.safetensors"
    t0 = time.perf_counter()
    status = encode_prompt_text(
        args.prompt, out, tiny=args.tiny_encoder, stage1_encoder=args.stage1_encoder,
        refiner_encoder=getattr(args, "refiner_encoder", None),
        refiner_max_length=getattr(args, "refiner_max_length", None),
        caption_length=None if cfg is None else cfg.caption_length, cache_dir=args.cache_dir,
        device=getattr(args, "encoder_device", None),
    )
    from .text.spec import default_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    short = args.prompt if len(args.prompt) <= 40 else args.prompt[:37] + "..."
    if status.get("cache_hit"):
        print(f"{what}: prompt {short!r} from cache ({cache}, key {str(status.get('key'))[:12]})", file=sys.stderr)
    else:
        print(f"{what}: prompt {short!r} encoded with {status.get('stage1_encoder')} in {time.perf_counter() - t0:.1f} s "
              f"(not in cache; stored in {cache})", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------ running
def render(session, out, png_dir=None, save_latents=None, stream=None) -> dict:
    """Run ``session`` to the end, writing MP4 (+ PNG, latents) chunk by chunk; returns a summary."""
    from .runtime.frames import latent_preview
    from .runtime.progress import Progress
    from .runtime.video import LatentWriter, PNGWriter, ProgressiveMP4Writer

    writers = []
    mp4 = ProgressiveMP4Writer(out) if out else None
    png = PNGWriter(png_dir) if png_dir else None
    lat = LatentWriter(save_latents) if save_latents else None
    writers = [w for w in (mp4, png, lat) if w is not None]
    progress = Progress(session.num_chunks, session.num_output_frames, stream)
    cfg = session.cfg
    scale = max(2, 2 * math.ceil(128 / (2 * cfg.latent_width)))  # preview at least ~128 px wide, even size
    previewed = False
    try:
        for chunk in session:
            frames = chunk.frames
            if frames is None:
                if not previewed:
                    print("warning: the bundle has no VAE decoder; the video is a latent preview (channels 0-2)",
                          file=sys.stderr)
                    previewed = True
                frames = latent_preview(chunk.refined, scale=scale, drop_first=chunk.index == 0)
            for w in (mp4, png):
                if w is not None:
                    w.write_chunk(frames)
            if lat is not None:
                lat.write_chunk(chunk.refined)
            progress.update(frames.shape[0])
    finally:
        for w in writers:  # finish the files; the MP4 is playable even when this never runs
            w.close()
    return {"chunks": progress.chunks, "frames": progress.frames, "preview": previewed}


def _budget(text):
    if not text:
        return None
    from .engines.tensorrt import parse_budget  # torch-free; tensorrt itself is imported only when an engine loads

    try:
        return parse_budget(text)
    except ValueError:
        raise ValueError(f"--weight-streaming-budget {text!r}: give bytes ('2G', '512M'), a fraction ('0.5') or "
                         "a percentage ('50%')") from None


def cmd_generate(args) -> int:
    from .runtime import Runtime

    if (args.image is None) == (args.latent is None):
        raise CLIError("give exactly one of --image start.png or --latent first_latent.npy")
    if sum(x is not None for x in (args.camera, args.action, args.preset)) != 1:
        raise CLIError("give exactly one camera source: --camera path.npy, --action \"w-80,...\" or --preset NAME")
    if args.prompt is not None and args.prompt_embeddings is not None:
        raise CLIError("give either --prompt \"text\" or --prompt-embeddings FILE, not both")
    if args.prompt is None and (args.tiny_encoder or args.stage1_encoder is not None):
        raise CLIError("--stage1-encoder / --tiny-encoder encode a text --prompt; give --prompt \"...\"")
    bundle = Path(args.bundle)
    if not bundle.is_dir():
        raise CLIError(f"--bundle {bundle} does not exist; build one with `sanawm-export --out {bundle} ...`")
    num_frames = target_num_frames(args.seconds)
    manifest = read_manifest(bundle)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sanawm-prompt-") as tmp:
        # encode first: the encoder subprocess has exited (its memory released) before any engine loads
        encoded = _encode_for_generate(args, manifest, Path(tmp), "generate") if args.prompt is not None else None
        runtime = Runtime.load(bundle, args.backend, refiner=not args.no_refiner, refiner_seed=args.refiner_seed,
                               weight_streaming_budget=_budget(args.weight_streaming_budget))
        first, camera, F = prepare_inputs(runtime, args, num_frames)
        prompt = prompt_inputs(runtime, args, manifest, encoded)
    session = runtime.start(first, prompt, camera, seed=args.seed, num_frames=F)
    ih, iw = runtime.image_hw
    what = f"decoded {iw}x{ih} video" if runtime.has_decoder else "latent preview (the bundle has no VAE decoder)"
    print(f"generating {session.num_output_frames} frames ({session.num_output_frames / FPS:.1f} s) in "
          f"{session.num_chunks} chunks, {what} -> {args.out}", file=sys.stderr)
    render(session, args.out, args.png_dir, args.save_latents)
    return 0


DEMO_ENGINES = ("generator_first", "generator_next", "vae_encoder", "vae_decoder_first", "vae_decoder_next")


def demo_image(hw: tuple[int, int]) -> np.ndarray:
    """A synthetic RGB first frame [H, W, 3] uint8 for the demo (sky/ground gradient with a few blocks)."""
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    sky = y < 0.55 * h
    img[..., 0] = np.where(sky, 90 + 80 * y / h, 70 + 60 * x / w)
    img[..., 1] = np.where(sky, 140 + 60 * y / h, 110 + 40 * y / h)
    img[..., 2] = np.where(sky, 230 - 40 * y / h, 60 + 20 * x / w)
    for i, (cx, cw, ch, col) in enumerate(((0.2, 0.12, 0.35, (200, 80, 60)), (0.55, 0.18, 0.25, (220, 200, 170)),
                                           (0.8, 0.08, 0.45, (80, 80, 110)))):
        x0, x1 = int((cx - cw / 2) * w), int((cx + cw / 2) * w)
        y0, y1 = int((0.55 - ch) * h), int(0.55 * h)
        img[y0:y1, x0:x1] = col
    return np.clip(img, 0, 255).astype(np.uint8)


def _demo_bundle_ready(bundle: Path) -> bool:
    import json

    mp = bundle / "manifest.json"
    if not mp.is_file():
        return False
    try:
        have = json.loads(mp.read_text()).get("engines", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return all(n in have for n in DEMO_ENGINES)


# Six bytes: the tiny config keeps caption_length = 8 tokens (<bos> + the last 7 of preamble + prompt) and the
# tiny tokenizer is byte-level, so a longer prompt is truncated, with a warning (the full model keeps 300 tokens).
DEMO_PROMPT = "a road"


def cmd_demo(args) -> int:
    import tempfile
    import time

    from .runtime import Runtime

    if not args.random:  # the trained toy world model and its ray-traced ground truth (sanawm.worlds.demo)
        from .worlds.demo import run_demo

        def world_prompt(runtime, manifest):
            with tempfile.TemporaryDirectory(prefix="sanawm-prompt-") as tmp:
                args.tiny_encoder, args.stage1_encoder, args.encoder_device = True, None, "cpu"
                return prompt_inputs(runtime, args, manifest, _encode_for_generate(args, manifest, Path(tmp), "demo"))

        return run_demo(args, world_prompt)
    bundle = Path(args.bundle_dir)
    if not _demo_bundle_ready(bundle):
        print(f"building the tiny random bundle (generator + VAE, ONNX Runtime, FP32) in {bundle} (once; needs the "
              "build side: torch, onnx, diffusers) ...", file=sys.stderr)
        t0 = time.perf_counter()
        # a subprocess keeps this process torch-free; sanawm.export is imported only there. Lean: ONNX Runtime
        # only, FP32, one ORT-vs-torch comparison per engine; stages already in the folder are skipped.
        code = "import sys; from sanawm.export.cli import main; sys.exit(main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, "--random", "--config", "tiny", "--out", str(bundle),
               "--backends", "onnxruntime", "--precision", "fp32", "--engines", ",".join(DEMO_ENGINES)]
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise CLIError(f"building the demo bundle failed (exit {r.returncode}): sanawm-export {' '.join(cmd[3:])}")
        print(f"demo: bundle built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    manifest = read_manifest(bundle)
    with tempfile.TemporaryDirectory(prefix="sanawm-prompt-") as tmp:
        # the prompt through the tiny random Gemma-2 (subprocess, CPU, cached): the whole pipeline runs on CPU
        args.tiny_encoder, args.stage1_encoder, args.encoder_device = True, None, "cpu"
        encoded = _encode_for_generate(args, manifest, Path(tmp), "demo")
        t0 = time.perf_counter()
        runtime = Runtime.load(bundle, "onnxruntime")
        prompt = prompt_inputs(runtime, args, manifest, encoded)
    cfg = runtime.cfg
    from . import camera as cam

    F = target_num_frames(args.seconds)
    path = cam.preset_path("orbit", F, default_intrinsics(runtime.image_hw), image_hw=runtime.image_hw)
    inputs = cam.prepare_camera(path, F, latent_hw=(cfg.latent_height, cfg.latent_width), image_hw=runtime.image_hw)
    if runtime.has_encoder:  # the full path: a first frame through the VAE encoder
        first = demo_image(runtime.image_hw)
    else:
        rng = np.random.default_rng(0)
        first = rng.standard_normal((1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width)).astype(np.float32)
    session = runtime.start(first, prompt, (inputs.camera_conditions, inputs.chunk_plucker), seed=args.seed, num_frames=F)
    ih, iw = runtime.image_hw
    what = f"decoded {iw}x{ih} video" if runtime.has_decoder else "latent preview (no VAE decoder in the bundle)"
    print(f"demo: {session.num_chunks} chunks on CPU (onnxruntime), {what} -> {args.out}", file=sys.stderr)
    summary = render(session, args.out)
    print(f"demo: {summary['frames']} frames rendered in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sanawm", description="SANA-WM world-model runtime (torch-free)")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a clip from a bundle, a first frame and a camera path")
    g.add_argument("--bundle", required=True, help="engine bundle folder (from sanawm-export)")
    g.add_argument("--image", help="first frame (any size: resized and centre-cropped to the model frame)")
    g.add_argument("--latent", help="first-frame latent .npy [1, C, 1, h, w] instead of --image (no VAE encoder needed)")
    g.add_argument("--camera", help="camera path: c2w .npy (F, 4, 4), SANA-WM-Bench .npz or RealEstate10K .txt")
    g.add_argument("--intrinsics", help="intrinsics .npy for --camera .npy: (4,), (3, 3), (F, 4) or (F, 3, 3) in image pixels")
    g.add_argument("--action", help='action string, e.g. "w-80,dw-40,none-10" (one pose per frame)')
    g.add_argument("--action-style", default="current", choices=["current", "diffusers"],
                   help="--action key mapping: current upstream (a/d yaw, j/l strafe, 0.025 m / 0.6 deg per frame) "
                   "or diffusers' first-release mapping (a/d strafe, j/l yaw, 0.05 m / 1.2 deg)")
    g.add_argument("--preset", help="named camera motion, e.g. orbit, dolly_in, pan_left")
    g.add_argument("--prompt-embeddings", help="prompt file from `sanawm encode-prompt` (.safetensors) or .npz")
    g.add_argument("--prompt", help="text prompt, encoded (cached) by `sanawm encode-prompt` in a subprocess; needs "
                                    "--stage1-encoder DIR or --tiny-encoder")
    g.add_argument("--stage1-encoder", help="local Gemma-2 (gemma-2-2b-it) folder or SANA-WM pipeline folder, for --prompt")
    g.add_argument("--tiny-encoder", action="store_true", help="encode --prompt with the tiny random Gemma-2 (tiny bundles)")
    g.add_argument("--refiner-encoder", help="refiner text encoder folder (or 'tiny' with --tiny-encoder), for --prompt")
    g.add_argument("--refiner-max-length", type=int, help="refiner text tokens for --prompt (default: encode-prompt's)")
    g.add_argument("--encoder-device", choices=["cpu", "cuda"], help="device of the text encoder (default: cuda when "
                                                                      "available; cpu for --tiny-encoder)")
    g.add_argument("--cache-dir", help="prompt cache (default: $SANAWM_CACHE/prompts or ~/.cache/sanawm/prompts)")
    g.add_argument("--seconds", type=float, default=10.0, help="clip length at 16 fps (snapped to 1.5 s steps)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", default="onnxruntime", help="onnxruntime | tensorrt | tensorrt_rtx")
    g.add_argument("--out", default="clip.mp4", help="output MP4 (playable while it is being written)")
    g.add_argument("--png-dir", help="also write every frame as PNG here")
    g.add_argument("--save-latents", help="also write the clip's latents [1, C, T, h, w] to this .npy")
    g.add_argument("--no-refiner", action="store_true", help="skip the stage-2 refiner even if the bundle has one")
    g.add_argument("--refiner-seed", type=int, default=42, help="seed of the refiner's per-block noise (release default 42)")
    g.add_argument("--weight-streaming-budget", help="TensorRT engines built with --weight-streaming: device memory "
                   "for their weights, bytes ('2G') or a fraction ('50%%'); the rest streams from host memory")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="build (once) the trained toy world bundle and render a held-out scene on CPU")
    d.add_argument("--out", default="demo.mp4")
    d.add_argument("--bundle-dir", default="sanawm-demo-bundle")
    d.add_argument("--seconds", type=float, default=3.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--prompt", default=DEMO_PROMPT, help="encoded by the tiny random Gemma-2 on CPU (cached)")
    d.add_argument("--cache-dir", help="prompt cache (default: $SANAWM_CACHE/prompts or ~/.cache/sanawm/prompts)")
    d.add_argument("--compare", action="store_true", help="write generated | ray-traced ground truth side by side")
    d.add_argument("--scene", type=int, default=0, help="held-out scene index (sanawm.worlds.EVAL_SEEDS)")
    d.add_argument("--action", help='camera path in the action language, e.g. "w-24,d-48,w-24"')
    d.add_argument("--random", action="store_true", help="the tiny random-weight bundle instead of the trained world model")
    d.set_defaults(func=cmd_demo)

    sub.add_parser("encode-prompt", help="encode a prompt into a file the runtime reads (build side; see its -h)")
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["encode-prompt"]:  # hand every argument (-h included) to the build-side command
        from .text.cli import main as encode_prompt

        return int(encode_prompt(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad input (CLIError, BundleError, camera validation, ...): say what and how to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the video written so far is playable", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
