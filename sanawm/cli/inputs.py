"""Reading the user's inputs for ``generate``: first frame or latent, camera path, clip length, the manifest.

Every reader converts the errors of what it reads into ``UserError`` naming the flag (``user_input``), so a
malformed file is the user's problem while a failure after reading is still reported as a bug.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from ..constants import FPS, TEMPORAL_STRIDE
from .base import UserError, user_input

DEFAULT_HFOV_DEG = 60.0  # intrinsics when none are given: 60 degree horizontal field of view, centred


def default_intrinsics(hw: tuple[int, int]) -> np.ndarray:
    """[fx, fy, cx, cy] in pixels of an (H, W) image for a 60 degree horizontal field of view."""
    h, w = hw
    f = 0.5 * w / math.tan(math.radians(DEFAULT_HFOV_DEG) / 2)
    return np.array([f, f, w / 2.0, h / 2.0])


def load_image(path) -> np.ndarray:
    """RGB uint8 [H, W, 3] from an image file; refuses non-RGB images with the fix."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--image {p} does not exist")
    try:
        im = Image.open(p)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"--image {p} is not a readable image ({e}); give a PNG or JPEG") from None
    with im:
        if im.mode not in ("RGB", "RGBA", "L", "P"):
            raise UserError(f"--image {p} has mode {im.mode}; convert it to 8-bit RGB")
        if im.mode == "RGBA" and np.asarray(im)[..., 3].min() < 255:
            raise UserError(f"--image {p} has transparent pixels (RGBA); flatten it onto a background as RGB first")
        if im.mode != "RGB":
            warnings.warn(f"--image {p} is {im.mode}; converting to RGB", stacklevel=2)
        return np.asarray(im.convert("RGB"))


def load_latent(path) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--latent {p} does not exist")
    with user_input(f"--latent {p}"):
        return np.load(p, allow_pickle=False).astype(np.float32)


def target_num_frames(seconds: float) -> int:
    """Video frames F = 24k + 1 closest to ``seconds`` at 16 fps (the output has F - 1 frames)."""
    from ..camera import snap_streaming_num_frames

    if not seconds > 0:
        raise UserError(f"--seconds must be positive; got {seconds}")
    return snap_streaming_num_frames(int(round(seconds * FPS)) + 1)


def camera_path(args, image_hw: tuple[int, int], num_frames: int):
    """The trajectory from --camera / --action / --preset, intrinsics in pixels of the source image."""
    from .. import camera as cam

    if args.intrinsics is not None and args.camera is None:
        raise UserError("--intrinsics goes with --camera (actions and presets use a default 60 degree lens)")
    K = default_intrinsics(image_hw)
    if args.camera is not None:
        p = Path(args.camera)
        if not p.is_file():
            raise UserError(f"--camera {p} does not exist")
        with user_input(f"--camera {p}"):
            if p.suffix == ".npz":
                return cam.load_bench_npz(p, image_hw=image_hw)
            if p.suffix == ".txt":
                return cam.load_re10k_txt(p, image_hw)
            return cam.load_c2w_npy(p, str(args.intrinsics) if args.intrinsics else K, image_hw=image_hw)
    if args.action is not None:
        with user_input(f"--action {args.action!r}"):
            return cam.action_path(args.action, K, image_hw=image_hw, style=args.action_style)
    return cam.preset_path(args.preset, num_frames, K, image_hw=image_hw)


def prepare_inputs(runtime, args, num_frames: int):
    """(first frame or latent, (camera_conditions, plucker), F) for ``runtime`` from the CLI arguments."""
    from .. import camera as cam

    cfg = runtime.cfg
    if args.latent is not None:
        first = load_latent(args.latent)
        src_hw = runtime.image_hw
    else:
        if not runtime.has_encoder:
            raise UserError(f"the bundle has no vae_encoder engine, so --image cannot be encoded; pass --latent "
                            f"first_latent.npy or rebuild with `sanawm-export ... --engines vae_encoder,...`")
        first = load_image(args.image)
        src_hw = first.shape[:2]
    path = camera_path(args, src_hw, num_frames)
    with user_input("--image" if args.latent is None else "--latent"):
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


def manifest_config(manifest: dict):
    from ..config import GeneratorConfig

    try:
        return GeneratorConfig.from_dict(manifest["generator_config"])
    except (KeyError, TypeError, ValueError):
        return None


def parse_budget(text):
    """--weight-streaming-budget: None, bytes ('2G'), a fraction ('0.5') or a percentage ('50%')."""
    if not text:
        return None
    from ..engines.tensorrt import parse_budget as parse  # torch-free; tensorrt is imported only when an engine loads

    try:
        return parse(text)
    except ValueError:
        raise UserError(f"--weight-streaming-budget {text!r}: give bytes ('2G', '512M'), a fraction ('0.5') or "
                        "a percentage ('50%')") from None
