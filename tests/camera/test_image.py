"""First-frame resize + centre crop and the intrinsics update vs diffusers."""

import numpy as np
import pytest
from PIL import Image

from sanawm.camera import CameraPath, crop_geometry, crop_intrinsics, prepare_first_frame, resize_and_center_crop

cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")

SIZES = [  # (src_hw, target_hw)
    ((720, 1280), (704, 1280)),  # slightly taller: crop rows
    ((480, 640), (704, 1280)),  # 4:3 and smaller: upsample, crop rows
    ((1080, 1440), (704, 1280)),
    ((37, 91), (22, 40)),  # odd sizes, wide: crop columns
    ((53, 29), (22, 40)),  # portrait
    ((22, 40), (22, 40)),  # identity
]


def _image(rng, hw):
    # Smooth gradient + noise so resampling errors would show.
    y, x = np.mgrid[0:hw[0], 0:hw[1]]
    base = np.stack([x * 255 / max(hw[1] - 1, 1), y * 255 / max(hw[0] - 1, 1), (x + y) % 256], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src_hw,target_hw", SIZES)
def test_pixels_and_intrinsics_match_diffusers(rng, src_hw, target_hw):
    img = _image(rng, src_hw)
    ours, geom = resize_and_center_crop(img, target_hw, max_upscale=100)
    ref, ref_src, ref_resized, ref_off = cam_utils.resize_and_center_crop(Image.fromarray(img), *target_hw)
    assert ours.shape == target_hw + (3,) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, np.asarray(ref))
    assert geom.src_hw == ref_src[::-1] and geom.resized_hw == ref_resized[::-1] and geom.offset_yx == ref_off[::-1]
    k = rng.uniform(10, 1000, size=(5, 4))
    ref_k = cam_utils.transform_intrinsics_for_crop(k, ref_src, ref_resized, ref_off)
    np.testing.assert_allclose(crop_intrinsics(k, geom), ref_k, rtol=1e-14, atol=1e-12)


def test_geometry_rounding_matches_diffusers():
    """Many awkward sizes: the resize size and offsets follow the reference's rounding exactly."""
    class FakeImage:  # only .size and .resize are used; skip the pixel work
        def __init__(self, w, h):
            self.size = (w, h)

        def resize(self, wh, _):
            return FakeCropped(wh)

    class FakeCropped:
        def __init__(self, wh):
            self.wh = wh

        def crop(self, box):
            return self

    rng = np.random.default_rng(3)
    for h, w in rng.integers(5, 3000, size=(300, 2)):
        _, src, resized, off = cam_utils.resize_and_center_crop(FakeImage(int(w), int(h)), 704, 1280)
        g = crop_geometry((h, w), (704, 1280))
        assert (g.resized_hw, g.offset_yx) == (resized[::-1], off[::-1]), (h, w)


def test_prepare_first_frame_moves_intrinsics(rng):
    img = _image(rng, (480, 640))
    path = CameraPath(np.tile(np.eye(4), (9, 1, 1)), [500.0, 510.0, 320.0, 240.0], image_hw=(480, 640))
    frame, cropped = prepare_first_frame(img, path)
    assert frame.shape == (704, 1280, 3) and cropped.image_hw == (704, 1280)
    ref = cam_utils.transform_intrinsics_for_crop(path.intrinsics, (640, 480), (1280, 960), (0, 128))
    np.testing.assert_allclose(cropped.intrinsics, ref)
    # A centred principal point stays centred after a centre crop.
    np.testing.assert_allclose(cropped.intrinsics[0, 2:], [640.0, 352.0])
    # Unknown image_hw is taken from the frame.
    _, c2 = prepare_first_frame(img, path.with_image_hw(None))
    np.testing.assert_array_equal(c2.intrinsics, cropped.intrinsics)


@pytest.mark.parametrize("bad,problem", [
    (np.zeros((64, 64), np.uint8), "single-channel"),
    (np.zeros((64, 64, 4), np.uint8), r"drop alpha"),
    (np.zeros((3, 64, 64), np.uint8), "channels go last"),
    (np.zeros((64, 64, 3), np.float32), "dtype is float32"),
    (np.zeros((100, 200, 3), np.uint8), "too small"),  # 7x enlargement needed for 704x1280
    (Image.new("L", (64, 64)), "mode 'L'"),
])
def test_bad_images_raise(bad, problem):
    with pytest.raises(ValueError, match=problem):
        resize_and_center_crop(bad)


def test_image_size_must_match_path():
    path = CameraPath(np.eye(4)[None], [500.0, 500.0, 320.0, 240.0], image_hw=(480, 640))
    with pytest.raises(ValueError, match="intrinsics are in pixels of a"):
        prepare_first_frame(np.zeros((720, 1280, 3), np.uint8), path)
