"""First frames for the server: built-in scenes, checked uploads (resized and cropped here), JPEG encoding."""

from __future__ import annotations

import io

import numpy as np

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")  # what Pillow must recognise an upload as
MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding
JPEG_QUALITY = 80


def _road(hw):
    from ..cli.demo import demo_image  # the `sanawm demo` first frame

    return demo_image(hw)


def _checker(hw):
    """A tiled floor under a gradient sky: strong edges, so a reprojection is easy to see."""
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = 0.45 * h
    img = np.empty((h, w, 3), np.float32)
    img[...] = np.stack([120 + 60 * y / h, 170 + 40 * y / h, np.full_like(y, 235.0)], -1)
    depth = np.maximum(y - horizon, 1.0)
    u, v = (x - w / 2) / depth * 8, 400.0 / depth
    tile = ((np.floor(u) + np.floor(v)) % 2).astype(bool)
    floor = y > horizon
    img[floor & tile] = (230, 225, 210)
    img[floor & ~tile] = (60, 70, 90)
    return img.clip(0, 255).astype(np.uint8)


def _dusk(hw):
    """Hills against a sunset: smooth gradients and one bright disc."""
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([250 - 80 * y / h, 140 - 60 * y / h, 90 + 60 * y / h], -1)
    sun = (x - 0.7 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.08 * w) ** 2
    img[sun] = (255, 230, 150)
    ridge = 0.62 * h + 0.06 * h * np.sin(x / w * 9.0) + 0.03 * h * np.sin(x / w * 23.0)
    img[y > ridge] = np.stack([40 + 20 * x / w, 60 + 30 * y / h, 50 + 0 * x], -1)[y > ridge]
    return img.clip(0, 255).astype(np.uint8)


SCENES = {"road": ("Road and blocks", _road), "checker": ("Tiled floor", _checker), "dusk": ("Hills at dusk", _dusk)}


def scene_image(name: str, hw) -> np.ndarray:
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; built-in scenes: {', '.join(SCENES)}")
    return SCENES[name][1](tuple(hw))


def decode_upload(data: bytes, hw) -> np.ndarray:
    """An uploaded PNG / JPEG / WebP -> RGB uint8 at the model size (resized and centre-cropped)."""
    from PIL import Image

    from ..camera import resize_and_center_crop

    try:
        im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - Pillow raises several kinds for garbage
        raise ValueError(f"the upload is not an image; send a {', '.join(ALLOWED_FORMATS)} file") from None
    with im:
        if im.format not in ALLOWED_FORMATS:
            raise ValueError(f"image type {im.format} is not accepted; send {', '.join(ALLOWED_FORMATS)}")
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"image of {im.width}x{im.height} pixels is too large; at most {MAX_IMAGE_PIXELS} pixels")
        try:
            rgb = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - truncated or corrupt file
            raise ValueError(f"the image could not be decoded ({e}); send an intact file") from None
    out, _ = resize_and_center_crop(rgb, tuple(hw))
    return out


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
