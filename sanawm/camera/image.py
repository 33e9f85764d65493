"""First-frame preprocessing: aspect-preserving resize (Lanczos, Pillow) + centre crop to the model
size, with the trajectory's intrinsics moved through the same transform. Pixels match diffusers'
``resize_and_center_crop``. Pillow is imported only when these functions run (optional dependency)."""

from __future__ import annotations

import numpy as np

from .crop import CropGeometry, crop_geometry
from .trajectory import CameraPath

DEFAULT_MAX_UPSCALE = 4.0  # beyond this the frame is mostly interpolation: refuse rather than guess


def _as_rgb_uint8(image) -> np.ndarray:
    """(H, W, 3) uint8 from a numpy array or an RGB PIL image; ValueError naming the problem otherwise."""
    if not isinstance(image, np.ndarray):
        mode = getattr(image, "mode", None)
        if mode is None:
            raise ValueError(
                f"image must be an (H, W, 3) uint8 numpy array or a PIL image; got {type(image).__name__}."
            )
        if mode != "RGB":
            raise ValueError(f"image has PIL mode {mode!r}, need 'RGB'; fix: image.convert('RGB').")
        image = np.asarray(image)
    if image.ndim == 2:
        raise ValueError(
            f"image is single-channel {image.shape}, need (H, W, 3) RGB; fix: np.repeat(image[..., None], 3, -1)."
        )
    if image.ndim != 3 or image.shape[-1] != 3:
        fix = " drop alpha with image[..., :3]" if image.ndim == 3 and image.shape[-1] == 4 else (
            " channels go last (H, W, 3), e.g. image.transpose(1, 2, 0)" if image.ndim == 3 and image.shape[0] == 3
            else " pass one RGB frame"
        )
        raise ValueError(f"image shape {image.shape} is not (H, W, 3) RGB; fix:{fix}.")
    if image.dtype != np.uint8:
        raise ValueError(
            f"image dtype is {image.dtype}, need uint8 0..255; fix: "
            "np.clip(np.round(image * 255), 0, 255).astype(np.uint8) for floats in [0, 1]."
        )
    return image


def resize_and_center_crop(image, target_hw=(704, 1280), *, max_upscale: float = DEFAULT_MAX_UPSCALE):
    """Resize (aspect kept, Lanczos) to cover ``target_hw``, then cut the centre.

    Returns ``(cropped (H, W, 3) uint8, CropGeometry)``; ``crop_intrinsics(k, geometry)`` maps intrinsics.
    Raises if the image would need more than ``max_upscale``x enlargement.
    """
    from PIL import Image

    arr = _as_rgb_uint8(image)
    g: CropGeometry = crop_geometry(arr.shape[:2], target_hw)
    if g.scale > max_upscale:
        raise ValueError(
            f"image {arr.shape[0]}x{arr.shape[1]} is too small for {g.target_hw[0]}x{g.target_hw[1]}: it would be "
            f"enlarged {g.scale:.2f}x (limit {max_upscale:g}x); fix: use a larger first frame "
            f"(at least {int(np.ceil(g.target_hw[0] / max_upscale))}x{int(np.ceil(g.target_hw[1] / max_upscale))}) "
            "or raise max_upscale."
        )
    (rh, rw), (top, left), (th, tw) = g.resized_hw, g.offset_yx, g.target_hw
    resized = Image.fromarray(arr).resize((rw, rh), Image.LANCZOS)
    cropped = np.asarray(resized.crop((left, top, left + tw, top + th)))
    return cropped, g


def prepare_first_frame(image, path: CameraPath, target_hw=(704, 1280), *, max_upscale: float = DEFAULT_MAX_UPSCALE):
    """Crop the first frame to ``target_hw`` and move ``path``'s intrinsics with it.

    ``path.image_hw`` must be the image's size or None (then the image's size is taken). Returns
    ``(frame (H, W, 3) uint8, path with intrinsics in target_hw pixels)``.
    """
    arr = _as_rgb_uint8(image)
    if path.image_hw is not None and tuple(path.image_hw) != arr.shape[:2]:
        raise ValueError(
            f"the intrinsics are in pixels of a {path.image_hw} image but the first frame is {arr.shape[:2]}; "
            "fix: pass the frame the intrinsics were calibrated on, or rescale the intrinsics to it."
        )
    cropped, _ = resize_and_center_crop(arr, target_hw, max_upscale=max_upscale)
    return cropped, path.with_image_hw(arr.shape[:2]).cropped_to(target_hw)
