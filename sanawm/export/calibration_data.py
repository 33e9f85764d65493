"""FP8 calibration inputs for the generator: prompts, first frames and camera paths (build side).

A :class:`CalibrationSet` holds what a streaming run consumes per clip: stage-1 prompt features + mask, the clean
first-frame latent, and the camera inputs (``camera_conditions``, ``chunk_plucker``) for ``T`` latent frames. Sets:

* ``user``: ``--calib-prompts`` (files written by ``sanawm encode-prompt``; a folder means its ``*.safetensors``),
  ``--calib-images`` (first-frame PNG / JPEG, resized and centre-cropped like ``sanawm generate`` does, encoded
  by the VAE of ``--vae``) and ``--calib-cameras`` (trajectory files as ``sanawm generate --camera`` reads them,
  action strings such as ``w-24,d-48``, or preset names); a missing kind falls back to the default below.
* ``world`` (default for the shipped world model, ``--checkpoint world``): ``WORLD_CLIPS`` of its training prompts
  through the tiny text encoder, ray-traced renders of training scenes (never the held-out evaluation scenes) as
  first frames, encoded by the world VAE, and those clips' camera paths.
* default for other real checkpoints: cameras = every built-in preset (``sanawm.camera.PRESETS``); first frames =
  ray-traced renders of ``DEFAULT_SCENES`` at the model's frame size (needs ``--vae``); prompts have no default
  (real features need the real text encoder): ``--calib-prompts`` is required.
* ``random``: N(0, 1) text, identity cameras, random latents; only for ``--random`` / ``tiny`` weights.

``sha256`` hashes every array in order, so the manifest names exactly what the scales came from.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .job import ExportInputError

log = logging.getLogger("sanawm.export")
DEFAULT_SCENES = (3, 17, 42, 101)  # ray-traced scene seeds of the default first frames (training range)
WORLD_CLIPS = 4  # clips of the world default set (training clips 0..3, the first 4 non-empty training prompts)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class CalibrationSet:
    name: str  # "user" | "world" | "default" | "random"
    texts: list = field(default_factory=list)  # [(features [1, L, C], mask [1, L])] float32
    first_latents: list = field(default_factory=list)  # [[1, C, 1, h, w]] float32
    cameras: list = field(default_factory=list)  # [(camera_conditions [T, 20], chunk_plucker [48, T, h, w])]
    sources: dict = field(default_factory=dict)  # kind -> list of file names / action strings / generator names

    @property
    def clips(self) -> int:
        """Clips of the calibration run: every prompt, image and camera used at least once."""
        return max(len(self.texts), len(self.first_latents), len(self.cameras), 1)

    def clip(self, k: int):
        """(text, mask, first latent, camera, plucker) of clip ``k``: the lists cycle."""
        t, m = self.texts[k % len(self.texts)]
        cam, pl = self.cameras[k % len(self.cameras)]
        return t, m, self.first_latents[k % len(self.first_latents)], cam, pl

    @property
    def sha256(self) -> str | None:
        if self.name == "random":
            return None
        h = hashlib.sha256(self.name.encode())
        for group in (self.texts, [(x,) for x in self.first_latents], self.cameras):
            for arrays in group:
                for a in arrays:
                    a = np.ascontiguousarray(a, np.float32)
                    h.update(str(a.shape).encode())
                    h.update(a.tobytes())
        return h.hexdigest()

    def to_manifest(self) -> dict:
        return {"set": self.name, "sha256": self.sha256, "clips": self.clips, "sources": self.sources}


def random_set() -> CalibrationSet:
    return CalibrationSet("random", sources={"note": "N(0,1) text, identity cameras, random latents (random weights)"})


# ------------------------------------------------------------------------------------------- readers
def _expand(items, suffixes) -> list[Path]:
    out = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
            if not found:
                raise ExportInputError(f"calibration folder {p} holds no {'/'.join(suffixes)} files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ExportInputError(f"calibration input {p} does not exist")
    return out


def read_prompts(items, cfg) -> tuple[list, list[str]]:
    """Prompt features of every row of every ``sanawm encode-prompt`` file (checked against ``cfg``)."""
    from ..text.spec import expected_stage1_encoder
    from ..text.store import load_prompt_embeddings

    texts, names = [], []
    for p in _expand(items, (".safetensors",)):
        e = load_prompt_embeddings(p, cfg.caption_length, cfg.caption_channels, expected_stage1_encoder(cfg))
        for b in range(e.text.shape[0]):
            texts.append((e.text[b:b + 1].astype(np.float32), e.text_mask[b:b + 1].astype(np.float32)))
        names.append(p.name)
    return texts, names


def read_images(items, image_hw) -> tuple[list[np.ndarray], list[str]]:
    """First frames as RGB uint8 at the model frame size (resize + centre crop, as ``sanawm generate``)."""
    from ..camera import resize_and_center_crop
    from ..cli.base import UserError
    from ..cli.inputs import load_image

    frames, names = [], []
    for p in _expand(items, IMAGE_SUFFIXES):
        try:
            frames.append(resize_and_center_crop(load_image(p), image_hw)[0])  # (frame, crop geometry)
        except (UserError, ValueError) as e:
            raise ExportInputError(f"--calib-images: {str(e).replace('--image ', '')}") from None
        names.append(p.name)
    return frames, names


def camera_path(item: str, image_hw, num_frames: int):
    """A trajectory from a file (.npz bench file, .txt RealEstate10K, .npy c2w), a preset name or an action string,
    held at its last pose / trimmed to ``num_frames``."""
    from .. import camera as cam
    from ..cli.inputs import default_intrinsics

    p, K = Path(item), default_intrinsics(image_hw)
    try:
        if p.is_file():
            path = (cam.load_bench_npz(p, image_hw=image_hw) if p.suffix == ".npz" else
                    cam.load_re10k_txt(p, image_hw) if p.suffix == ".txt" else cam.load_c2w_npy(p, K, image_hw=image_hw))
        elif item in cam.PRESETS:
            path = cam.preset_path(item, num_frames, K, image_hw=image_hw)
        else:
            path = cam.action_path(item, K, image_hw=image_hw)
    except (ValueError, OSError) as e:
        raise ExportInputError(f"--calib-cameras {item!r} is neither a readable trajectory file, a preset "
                               f"({', '.join(cam.PRESETS)}) nor an action string like 'w-24,d-48': {e}") from None
    if len(path) < num_frames:  # hold the last pose: calibration needs the whole run, the path shape is what counts
        c2w = np.concatenate([path.c2w, np.repeat(path.c2w[-1:], num_frames - len(path), 0)])
        k = np.concatenate([path.intrinsics, np.repeat(path.intrinsics[-1:], num_frames - len(path), 0)])
        path = cam.CameraPath(c2w, k, image_hw=path.image_hw, fps=path.fps)
    return path.trim(num_frames)


def read_cameras(items, cfg, image_hw, num_frames: int) -> list:
    from ..camera import prepare_camera

    out = []
    for it in items:
        c = prepare_camera(camera_path(str(it), image_hw, num_frames), num_frames,
                           latent_hw=(cfg.latent_height, cfg.latent_width), image_hw=image_hw)
        out.append((c.camera_conditions, c.chunk_plucker))
    return out


def encode_frames(vae, frames, image_hw) -> list[np.ndarray]:
    """Clean first-frame latents [1, C, 1, h, w] through the VAE encoder step the bundle exports."""
    import torch

    from ..models.vae import VAEEncoderStep
    from ..runtime.frames import from_uint8

    enc = VAEEncoderStep(vae, *image_hw).eval()
    with torch.no_grad():
        return [enc(torch.from_numpy(from_uint8(f)))[0].numpy().astype(np.float32) for f in frames]


def render_frames(seeds, image_hw) -> list[np.ndarray]:
    """Ray-traced first frames of the procedural scenes (``sanawm.worlds``) at ``image_hw``, straight ahead."""
    from ..cli.inputs import default_intrinsics
    from ..worlds.render import render
    from ..worlds.scene import make_scene

    K = default_intrinsics(image_hw)[None]
    return [render(make_scene(s), np.eye(4)[None], K, tuple(image_hw))[0] for s in seeds]
