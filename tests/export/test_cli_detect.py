"""sanawm-export with a real --checkpoint: the config is detected (no silent tiny default), mismatches refused,
and an FP8 export calibrated on real inputs records its set and policy in the manifest."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from safetensors.torch import save_file

from sanawm.config import tiny
from sanawm.export.cli import main
from sanawm.export.quantize import qdq_layers
from sanawm.models.random_init import randomize_
from sanawm.models.transformer import SanaWMGenerator

pytest.importorskip("onnxruntime")


def _save(model, path):
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _save(randomize_(SanaWMGenerator(tiny()), seed=5), tmp_path_factory.mktemp("ck") / "tiny.safetensors")


def test_ambiguous_structure_asks_for_a_config(tiny_ckpt, tmp_path, capsys):
    assert main(["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "b"), "--engines", "generator"]) == 2
    err = capsys.readouterr().err
    assert "fits the built-in configs ['tiny', 'world']" in err and "--config tiny" in err


def test_mismatching_config_names_both(tiny_ckpt, tmp_path, capsys):
    assert main(["--checkpoint", str(tiny_ckpt), "--config", "full", "--out", str(tmp_path / "b"),
                 "--engines", "generator"]) == 2
    err = capsys.readouterr().err
    assert "does not match config full: num_layers is 4 in the checkpoint but 20 in the config" in err


def test_custom_structure_is_detected_from_file_headers(tmp_path):
    """What the export uses as its config (read from the safetensors header only; the bundle export itself is
    exercised by the world test below)."""
    from sanawm.export.families.generator import generator_config

    cfg = dataclasses.replace(tiny(), num_layers=3, softmax_every_n=3, plucker_post_attn_blocks=2).validate()
    ck = _save(randomize_(SanaWMGenerator(cfg), seed=2), tmp_path / "custom.safetensors")
    got, name = generator_config(ck, None)
    assert name == "detected"
    assert (got.num_layers, got.softmax_every_n, got.plucker_post_attn_blocks, got.caption_length) == (3, 3, 2, 8)
    # no built-in config has this structure: geometry (latent grid) from full()
    assert (got.latent_height, got.latent_width) == (22, 40)


@pytest.mark.slow
def test_fp8_world_export_with_real_calibration_inputs_and_policy(tmp_path):
    """--checkpoint world, FP8 with user prompts / image / camera, first and last block kept FP32, percentile scales:
    the export's own ORT-vs-torch fake-quant check passes, blocks 0 and 3 carry no Q/DQ, the manifest names the set."""
    from PIL import Image

    from sanawm.config import world
    from sanawm.text.spec import TINY_STAGE1_ID
    from sanawm.text.store import save_prompt_embeddings

    cfg = world()
    rng = np.random.default_rng(0)
    f = rng.standard_normal((1, cfg.caption_length, cfg.caption_channels)).astype(np.float32)
    f[..., 3] *= 40.0  # an outlier channel, as real Gemma features have
    p = save_prompt_embeddings(tmp_path / "p.safetensors", (f, np.ones(f.shape[:2], np.float32)),
                               meta={"caption_length": cfg.caption_length, "caption_channels": cfg.caption_channels,
                                     "stage1_encoder": TINY_STAGE1_ID})
    img = tmp_path / "f.png"
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "b"
    assert main(["--checkpoint", "world", "--fp8", "--engines", "generator", "--backends", "onnxruntime",
                 "--out", str(out), "--calib-chunks", "2", "--calib-prompts", str(p), "--calib-images", str(img),
                 "--calib-cameras", "w-12,d-12", "--keep-high-precision", "embedders,final,first:1,last:1",
                 "--act-scale", "percentile:99.99"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["export"]["config"] == "world" and m["source"]["config_detected"] is True
    cal = m["export"]["calibration"]
    assert cal["set"] == "user" and len(cal["sha256"]) == 64 and cal["sources"]["prompts"] == ["p.safetensors"]
    assert m["export"]["precision_policy"]["act_scale"] == "percentile:99.99"
    onnx_rec = m["engines"]["generator"]["files"]["onnx"]
    assert onnx_rec["precision_policy"]["kept_blocks"] == [0, 3]
    assert onnx_rec["ort_check_fp8_forced_rel_error"] < 1e-3
    tags = qdq_layers(onnx.load(str(out / "generator.onnx"), load_external_data=False))
    blocks = {int(t.split("blocks.")[1].split(".")[0]) for t in tags if "blocks." in t}
    assert blocks == {1, 2}
    assert all(v["zero_point_dtype"] == "FLOAT8E4M3FN" for v in tags.values())
