"""ONNX export of the VAE steps (shared exporter, dynamo, fixed shapes), ONNX Runtime CPU vs torch and vs the
diffusers oracle, and TensorRT-RTX CPU-only builds of the tiny graphs.

Tolerances: relative RMS error (sanawm.testing.rel_error) <= 1e-4, float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sanawm.models.vae import (
    VAEDecoderStep,
    VAEEncoderStep,
    build_vae,
    denormalize_latents,
    normalize_latents,
    tiny_vae_config,
    vae_encoder_io,
)
from sanawm.testing import rel_error

pytestmark = pytest.mark.slow

TOL = 1e-4
HW = (64, 96)
LHW = (2, 3)


@pytest.fixture(scope="module")
def vae():
    return build_vae(tiny_vae_config(), seed=0, random_latent_stats=True)


@pytest.fixture(scope="module")
def exported(vae, tmp_path_factory):
    """Encoder, first and next decoder graphs exported once for the module."""
    from sanawm.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("vae_onnx")
    enc = VAEEncoderStep(vae, *HW)
    first, nxt = VAEDecoderStep(vae, True, LHW), VAEDecoderStep(vae, False, LHW)
    out = {}
    for name, mod, io in (
        ("vae_encoder", enc, vae_encoder_io(vae.config, *HW)),
        ("vae_decoder_first", first, first.io),
        ("vae_decoder_next", nxt, nxt.io),
    ):
        res = export_onnx(mod, io, d / f"{name}.onnx")  # checks ORT CPU vs torch on seeded random inputs
        out[name] = (mod, io, res)
    return out


def test_onnx_matches_torch_on_random_inputs(exported):
    for name, (_, io, res) in exported.items():
        assert set(res.rel_errors) == {t.name for t in io.outputs}
        assert res.max_rel_error <= TOL, (name, res.rel_errors)


def test_onnx_encoder_matches_diffusers(vae, exported):
    from sanawm.export.onnx import run_onnx_cpu

    torch.manual_seed(3)
    img = torch.rand(1, 3, 1, *HW) * 2 - 1
    got = run_onnx_cpu(exported["vae_encoder"][2].onnx_path, {"image": img.numpy()})["latent"]
    with torch.no_grad():
        mode = vae.encode(img, causal=True).latent_dist.mode()
    ref = normalize_latents(mode, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    assert rel_error(ref, got) <= TOL


def test_onnx_chain_equals_whole_clip_causal_decode(vae, exported):
    """ORT first + 2 next graphs, caches chained by state_map == diffusers vae.decode(z, causal=True)[:, :, 1:]
    (the first graph drops the condition frame, as the release does)."""
    from sanawm.export.onnx import run_onnx_cpu

    torch.manual_seed(11)
    z_n = torch.randn(1, 8, 10, *LHW)
    z = denormalize_latents(z_n, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    with torch.no_grad():
        ref = vae.decode(z, causal=True).sample[:, :, 1:].numpy()  # 72 frames
    parts, state = [], {}
    for c, (s, e) in enumerate([(0, 4), (4, 7), (7, 10)]):
        _, io, res = exported["vae_decoder_first" if c == 0 else "vae_decoder_next"]
        outs = run_onnx_cpu(res.onnx_path, {"latents": z_n[:, :, s:e].numpy(), **state})
        parts.append(outs["frames"])
        state = {io.state_map[k]: v for k, v in outs.items() if k in io.state_map}
    got = np.concatenate(parts, axis=2)
    assert got.shape == ref.shape == (1, 3, 72, *HW)
    assert rel_error(ref, got) <= TOL


def test_tensorrt_rtx_builds(exported, tmp_path):
    """Strongly typed TensorRT-RTX CPU-only AOT builds (parser + builder smoke test; nothing runs)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed")
    from sanawm.export.build import BuildError, build_engine

    for name, (_, _, res) in exported.items():
        try:
            br = build_engine(res.onnx_path, tmp_path / f"{name}.plan", backend="tensorrt_rtx", compute_capabilities=["sm_89"])
        except BuildError as e:
            msg = str(e)
            if "driver" in msg.lower() or "cuda" in msg.lower() and "initial" in msg.lower():
                pytest.skip(f"TensorRT-RTX could not build on this machine (outside our graph): {msg[:300]}")
            raise
        assert br.plan_path.stat().st_size > 0
        assert br.build["strongly_typed"]
