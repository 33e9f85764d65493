"""Checkpoint round trips in the three on-disk kinds, and the errors for broken ones."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sanawm.config import tiny
from sanawm.models.loading import DIFFUSERS_RENAMES, CheckpointError, load_checkpoint, load_generator
from sanawm.models.transformer import SanaWMGenerator

from gen_helpers import parity_cfg, randomize_


@pytest.fixture(scope="module")
def source():
    m = randomize_(SanaWMGenerator(tiny()), seed=7)
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def _assert_same(model, sd, skip=()):
    own = model.state_dict()
    for k, v in sd.items():
        if k not in skip:
            assert torch.equal(own[k], v), k


def _to_diffusers(sd):
    out = {}
    for k, v in sd.items():
        for official, diff in ((b, a) for a, b in DIFFUSERS_RENAMES):
            if k.startswith(official):
                k = diff + k[len(official) :]
        if k != "y_embedder.y_embedding":
            out[k] = v
    return out


def test_official_safetensors(tmp_path, source):
    f = tmp_path / "sana_wm.safetensors"
    save_file(dict(source, pos_embed=torch.zeros(1, 24, 64)), str(f))  # pos_embed must be dropped
    m = load_generator(f, tiny())
    _assert_same(m, source)


def test_training_pt(tmp_path, source):
    f = tmp_path / "model.pt"
    gen = {"model." + k: v.to(torch.bfloat16) for k, v in source.items()}
    gen["model.pos_embed"] = torch.zeros(1, 24, 64)
    torch.save({"generator": gen, "critic": {"x": torch.zeros(1)}, "step": 3}, f)
    m = SanaWMGenerator(tiny())
    assert load_checkpoint(m, f) == "training"
    _assert_same(m, {k: v.to(torch.bfloat16).float() for k, v in source.items()})


@pytest.mark.parametrize("sharded", [False, True])
def test_diffusers_folder(tmp_path, source, sharded):
    d = tmp_path / "transformer"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "SanaWMTransformer3DModel"}))
    dsd = _to_diffusers(source)
    if sharded:
        keys = sorted(dsd)
        halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
        for name, ks in halves.items():
            save_file({k: dsd[k] for k in ks}, str(d / name))
        wm = {k: name for name, ks in halves.items() for k in ks}
        (d / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    else:
        save_file(dsd, str(d / "diffusion_pytorch_model.safetensors"))
    m = SanaWMGenerator(tiny())
    assert load_checkpoint(m, tmp_path) == "diffusers"  # pipeline root -> transformer/
    _assert_same(m, source, skip=("y_embedder.y_embedding",))


def test_missing_key_names_key_and_kind(tmp_path, source):
    f = tmp_path / "bad.safetensors"
    sd = dict(source)
    del sd["blocks.2.attn.qkv.weight"]
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"missing key.*official checkpoint.*blocks\.2\.attn\.qkv\.weight"):
        load_generator(f, tiny())


def test_unexpected_key(tmp_path, source):
    f = tmp_path / "bad.safetensors"
    save_file(dict(source, **{"blocks.9.attn.extra": torch.zeros(2)}), str(f))
    with pytest.raises(CheckpointError, match=r"unexpected key.*blocks\.9\.attn\.extra"):
        load_generator(f, tiny())


def test_shape_mismatch_suggests_config(tmp_path, source):
    f = tmp_path / "tiny.safetensors"
    save_file(source, str(f))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*checkpoint \(64,.*model \(96,.*tiny config, pass --config tiny"):
        load_generator(f, parity_cfg())


def test_training_pt_without_tensors(tmp_path):
    f = tmp_path / "junk.pt"
    torch.save({"generator": {"a": 1}}, f)
    with pytest.raises(CheckpointError, match="no tensor state dict"):
        load_generator(f, tiny())


def test_missing_shard(tmp_path, source):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x_embedder.proj.weight": "part-1.safetensors"}})
    )
    with pytest.raises(CheckpointError, match=r"shard.*part-1\.safetensors.*missing"):
        load_generator(tmp_path, tiny())
