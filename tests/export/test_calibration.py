"""FP8 calibration sets: real prompt files / images / cameras, the defaults, their hashes, and the streaming run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sanawm.config import full, world
from sanawm.export.calibration import calib_frames, calibration_set, streaming_calibration
from sanawm.export.job import ExportInputError
from sanawm.text.spec import TINY_STAGE1_ID
from sanawm.text.store import PromptFileError, save_prompt_embeddings
from sanawm.worlds.models import shipped_paths

CHUNKS = 2


def _prompt(path, cfg, seed, channels=None):
    rng = np.random.default_rng(seed)
    C = channels or cfg.caption_channels
    f = rng.standard_normal((2, cfg.caption_length, C)).astype(np.float32)  # two prompts in one file
    m = np.ones((2, cfg.caption_length), np.float32)
    meta = {"caption_length": cfg.caption_length, "caption_channels": C, "stage1_encoder": TINY_STAGE1_ID}
    return save_prompt_embeddings(path, (f, m), meta=meta)


def _image(path, seed):
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(path)
    return path


def _opts(**kw):
    base = dict(random=False, config="world", calib_chunks=CHUNKS, vae=shipped_paths()[1], calib_prompts=(),
                calib_images=(), calib_cameras=())
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    return {"p1": _prompt(d / "p1.safetensors", world(), 1), "p2": _prompt(d / "p2.safetensors", world(), 2),
            "img": _image(d / "a.png", 3), "dir": d}


def test_user_set_reads_prompts_images_and_cameras(files):
    cfg = world()
    s = calibration_set(_opts(calib_prompts=[files["p1"]], calib_images=[files["img"]],
                              calib_cameras=["w-24,d-24", "orbit"]), cfg)
    T, _ = calib_frames(cfg, CHUNKS)
    assert s.name == "user" and s.clips == 2  # 2 prompts in the file, 2 cameras, 1 image
    assert [t.shape for t, _ in s.texts] == [(1, cfg.caption_length, cfg.caption_channels)] * 2
    assert s.first_latents[0].shape == (1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width)
    cam, pl = s.cameras[0]
    assert cam.shape == (T, 20) and pl.shape == (48, T, cfg.latent_height, cfg.latent_width)
    assert not np.allclose(s.cameras[0][0], s.cameras[1][0])  # two different paths
    assert s.sources == {"prompts": ["p1.safetensors"], "images": ["a.png"], "cameras": ["w-24,d-24", "orbit"]}
    # the hash names the data: another prompt file changes it, the same inputs reproduce it
    again = calibration_set(_opts(calib_prompts=[files["p1"]], calib_images=[files["img"]],
                                  calib_cameras=["w-24,d-24", "orbit"]), cfg)
    other = calibration_set(_opts(calib_prompts=[files["p2"]], calib_images=[files["img"]],
                                  calib_cameras=["w-24,d-24", "orbit"]), cfg)
    assert again.sha256 == s.sha256 != other.sha256


def test_defaults_fill_missing_kinds(files):
    s = calibration_set(_opts(calib_prompts=[files["dir"]]), world())  # a folder: both prompt files
    assert len(s.texts) == 4 and s.sources["cameras"][0] == "static" and len(s.cameras) == 14  # every preset
    assert s.sources["images"][0].startswith("rendered scene")


def test_bad_inputs_are_refused(files, tmp_path):
    with pytest.raises(ExportInputError, match="neither a readable trajectory file, a preset"):
        calibration_set(_opts(calib_prompts=[files["p1"]], calib_cameras=["fly-to-the-moon"]), world())
    with pytest.raises(PromptFileError, match="expects"):
        calibration_set(_opts(calib_prompts=[_prompt(tmp_path / "w.safetensors", world(), 0, channels=8)]), world())
    with pytest.raises(ExportInputError, match="does not exist"):
        calibration_set(_opts(calib_prompts=[tmp_path / "nope.safetensors"]), world())
    # a real checkpoint without prompt features: no silent N(0,1) text
    with pytest.raises(ExportInputError, match="needs real prompt features.*--calib-prompts"):
        calibration_set(_opts(config="full", vae=None), full())
    assert calibration_set(_opts(random=True, config="tiny"), world()).name == "random"


def test_streaming_run_calls_every_layer_on_every_step_of_every_chunk(files):
    """clips x chunks x (4 denoising steps + the t = 0 cache pass) calls per quantized layer."""
    from sanawm.export.quantize import quantize_fp8
    from sanawm.models.generator_engine import GeneratorEngine
    from sanawm.models.pretrained import from_pretrained

    cfg = world()
    s = calibration_set(_opts(calib_prompts=[files["p1"]], calib_images=[files["img"]], calib_cameras=["w-24"]), cfg)
    eng = GeneratorEngine(from_pretrained(shipped_paths()[0], "world")).eval()
    _, rep = quantize_fp8(eng, streaming_calibration(cfg, s, CHUNKS))
    assert set(rep.calls.values()) == {s.clips * CHUNKS * 5}
    assert all(v > 0 for v in rep.input_amax.values())
