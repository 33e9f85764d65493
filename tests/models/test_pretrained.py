"""``SanaWMGenerator.from_pretrained``: config detected from a diffusers folder / official weights, and refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from sanawm.config import GeneratorConfig, tiny, world
from sanawm.models.loading import CheckpointError
from sanawm.models.pretrained import STRUCTURAL
from sanawm.models.transformer import SanaWMGenerator
from sanawm.testing import rel_error

from gen_helpers import make_inputs, randomize_

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # issue 13: from_pretrained equals diffusers to 1e-5 (same float32 maths, oracle SDPA kept fp32)


def odd_cfg() -> GeneratorConfig:
    """A structure no built-in config has, with every detectable field off its default: 3 blocks, softmax every
    3rd, Plücker projection in the first 2 only, FFN ratio 2.5, odd channel counts."""
    return dataclasses.replace(tiny(), num_layers=3, hidden_size=96, head_dim=48, in_channels=8, caption_channels=40,
                               softmax_every_n=3, mlp_ratio=2.5, t_kernel_size=3, conv_kernel_size=3,
                               plucker_post_attn_blocks=2).validate()


def _diffusers_model(cfg):
    return diffusers.SanaWMTransformer3DModel(
        in_channels=cfg.in_channels, num_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads, linear_head_dim=cfg.head_dim, softmax_every_n=cfg.softmax_every_n,
        caption_channels=cfg.caption_channels, mlp_ratio=cfg.mlp_ratio, t_kernel_size=cfg.t_kernel_size,
        conv_kernel_size=cfg.conv_kernel_size, chunk_plucker_channels=cfg.plucker_channels,
        chunk_plucker_post_attn_blocks=cfg.plucker_post_attn_blocks,
    ).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = odd_cfg()
    torch.manual_seed(0)
    ref = randomize_(_diffusers_model(cfg), seed=3)
    folder = tmp_path_factory.mktemp("dfs") / "transformer"
    ref.save_pretrained(folder)
    return cfg, ref, folder


def test_diffusers_folder_detects_config_and_matches_diffusers(saved, monkeypatch):
    cfg, ref, folder = saved
    model = SanaWMGenerator.from_pretrained(folder.parent)  # pipeline root: finds transformer/
    for f in STRUCTURAL:
        assert getattr(model.cfg, f) == getattr(cfg, f), f
    assert model.config_name is None  # no built-in config has this structure
    inp = make_inputs(cfg, B=2, T=4, seed=5)
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self)  # oracle SDPA in fp32
    with torch.no_grad():
        want = ref(inp["latents"], inp["timestep"], inp["text"], encoder_attention_mask=inp["text_mask"],
                   camera_conditions=inp["camera"], chunk_plucker=inp["plucker"], return_dict=False)[0]
    monkeypatch.undo()
    with torch.no_grad():
        got = model(**inp)
    err = rel_error(want, got)
    print(f"from_pretrained vs diffusers: rel err {err:.2e}")
    assert err <= TOL


def test_config_json_disagreeing_with_weights_is_refused(saved, tmp_path):
    _, _, folder = saved
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "diffusion_pytorch_model.safetensors").write_bytes((folder / "diffusion_pytorch_model.safetensors").read_bytes())
    conf = json.loads((folder / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(conf, num_layers=5)))
    with pytest.raises(CheckpointError, match="num_layers is 5 in config.json but 3 in the weights"):
        SanaWMGenerator.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps(dict(conf, ffn_type="GLUMBConv")))
    with pytest.raises(CheckpointError, match="unsupported SanaWMTransformer3DModel option.*ffn_type"):
        SanaWMGenerator.from_pretrained(bad)


def test_missing_config_json_is_refused(saved, tmp_path):
    _, _, folder = saved
    bad = tmp_path / "noconf"
    bad.mkdir()
    (bad / "diffusion_pytorch_model.safetensors").write_bytes((folder / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="config.json is missing"):
        SanaWMGenerator.from_pretrained(bad)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official-format safetensors (official key names, pos_embed buffer) of the tiny structure."""
    src = randomize_(SanaWMGenerator(tiny()), seed=9)
    sd = {k: v.detach().clone().contiguous() for k, v in src.state_dict().items()}
    f = tmp_path_factory.mktemp("off") / "sana_wm_tiny.safetensors"
    save_file(dict(sd, pos_embed=torch.zeros(1, 24, 64)), str(f))
    return sd, f


def test_official_safetensors_round_trips_with_named_config(official):
    sd, f = official
    model = SanaWMGenerator.from_pretrained(f, config="tiny")
    assert model.cfg == tiny() and model.config_name == "tiny"
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())


def test_structure_shared_by_two_named_configs_needs_a_name(official):
    _, f = official
    with pytest.raises(CheckpointError, match=r"fits the built-in configs \['tiny', 'world'\].*--config tiny"):
        SanaWMGenerator.from_pretrained(f)
    assert SanaWMGenerator.from_pretrained(f, config="world").cfg == world()


def test_wrong_config_names_both(official):
    _, f = official
    with pytest.raises(CheckpointError, match="does not match config full: num_layers is 4 in the checkpoint but 20 "
                                              r"in the config.*fits configs \['tiny', 'world'\]"):
        SanaWMGenerator.from_pretrained(f, config="full")


def test_not_a_generator_is_refused(tmp_path):
    f = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(f))
    with pytest.raises(CheckpointError, match="is this a stage-1 generator checkpoint"):
        SanaWMGenerator.from_pretrained(f)


def test_detects_full_structure_from_shapes_only():
    """The published 2.6B layout, read from shapes on the meta device (no 10 GB of memory)."""
    from sanawm.config import full
    from sanawm.models.pretrained import dims_from_weights, resolve_config

    with torch.device("meta"):
        sd = SanaWMGenerator(full()).state_dict()
    cfg, name = resolve_config(dims_from_weights(sd))
    assert name == "full" and cfg == full()


def test_training_pt_detects_a_custom_structure(tmp_path):
    """The streaming training .pt (weights under 'generator', 'model.' prefixes, bf16), read safely."""
    cfg = dataclasses.replace(tiny(), num_layers=2, softmax_every_n=2, plucker_post_attn_blocks=1, caption_length=5)
    src = randomize_(SanaWMGenerator(cfg), seed=4)
    f = tmp_path / "model.pt"
    torch.save({"generator": {"model." + k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, "step": 1}, f)
    model = SanaWMGenerator.from_pretrained(f)
    assert all(getattr(model.cfg, k) == getattr(cfg, k) for k in STRUCTURAL + ("caption_length",))
    assert model.config_name is None
    assert torch.equal(model.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight.to(torch.bfloat16).float())
