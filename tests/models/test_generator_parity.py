"""Bidirectional SanaWMGenerator vs the diffusers oracle (SanaWMTransformer3DModel), float32.

Tolerance: relative RMS error <= 1e-4 on the velocity. The oracle rounds softmax-SDPA inputs to bf16 (a speed
choice, not part of the maths); the test disables that rounding so both sides run the float32 maths.
"""

from __future__ import annotations

import pytest
import torch

from sanawm.models.loading import convert_diffusers_keys
from sanawm.models.transformer import SanaWMGenerator
from sanawm.testing import assert_close, rel_error

from gen_helpers import make_inputs, parity_cfg, randomize_

diffusers = pytest.importorskip("diffusers")

RTOL = 1e-4


def _diffusers_model(cfg):
    return diffusers.SanaWMTransformer3DModel(
        in_channels=cfg.in_channels,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads,
        linear_head_dim=cfg.head_dim,
        softmax_every_n=cfg.softmax_every_n,
        caption_channels=cfg.caption_channels,
        mlp_ratio=cfg.mlp_ratio,
        t_kernel_size=cfg.t_kernel_size,
        conv_kernel_size=cfg.conv_kernel_size,
        chunk_plucker_channels=cfg.plucker_channels,
        chunk_plucker_post_attn_blocks=cfg.plucker_post_attn_blocks,
    ).eval()


@pytest.fixture(scope="module")
def pair():
    cfg = parity_cfg()
    torch.manual_seed(0)
    ref = randomize_(_diffusers_model(cfg), seed=1)
    ours = SanaWMGenerator(cfg).eval()
    sd = convert_diffusers_keys(ref.state_dict())
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    assert unexpected == [] and missing == ["y_embedder.y_embedding"], (missing, unexpected)
    return cfg, ref, ours


def _run_ref(ref, inp, monkeypatch):
    # keep the oracle's SDPA in float32 (it casts q/k/v to bf16 for FlashAttention)
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self)
    with torch.no_grad():
        out = ref(
            inp["latents"], inp["timestep"], inp["text"], encoder_attention_mask=inp["text_mask"],
            camera_conditions=inp["camera"], chunk_plucker=inp["plucker"], return_dict=False,
        )[0]
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("T", [4, 7])
def test_bidirectional_matches_diffusers(pair, monkeypatch, T):
    cfg, ref, ours = pair
    inp = make_inputs(cfg, B=2, T=T, seed=T)
    want = _run_ref(ref, inp, monkeypatch)
    with torch.no_grad():
        got = ours(**inp)
    assert got.shape == want.shape == inp["latents"].shape
    err = assert_close(f"velocity T={T}", want, got, RTOL)
    print(f"bidirectional parity T={T}: rel err {err:.2e}")


def test_camera_and_temporal_paths_matter(pair, monkeypatch):
    """Guards against a vacuous parity: the camera branch, the Plücker branch and the temporal mixing each
    change the output far above the tolerance, so the comparison above really covers them."""
    cfg, ref, ours = pair
    inp = make_inputs(cfg, B=1, T=4, seed=3)
    with torch.no_grad():
        base = ours(**inp)
        cam = dict(inp, camera=inp["camera"].clone())
        cam["camera"][:, 1:, 3] += 0.7  # move the camera along x
        pl = dict(inp, plucker=inp["plucker"] * 0.5)
        lat = dict(inp, latents=inp["latents"].clone())
        lat["latents"][:, :, 3] += 1.0  # touch only the last frame; frame 0 must react (bidirectional)
        d_cam = rel_error(base, ours(**cam))
        d_pl = rel_error(base, ours(**pl))
        d_t = rel_error(base[:, :, 0], ours(**lat)[:, :, 0])
    assert d_cam > 100 * RTOL and d_pl > 100 * RTOL and d_t > 100 * RTOL, (d_cam, d_pl, d_t)


def test_timestep_is_truncated(pair):
    cfg, _, ours = pair
    inp = make_inputs(cfg, B=1, T=4, seed=4, t_value=500.0)
    with torch.no_grad():
        a = ours(**inp)
        b = ours(**dict(inp, timestep=inp["timestep"] + 0.9))  # 500.9 -> 500, 0.9 -> 0
        c = ours(**dict(inp, timestep=inp["timestep"] + 1.0))
    assert torch.equal(a, b)
    assert rel_error(a, c) > 1e-6
