"""LTX-2 VAE steps (sanawm.models.vae) against the diffusers AutoencoderKLLTX2Video oracle, tiny config, float32.

Tolerances: relative RMS error (sanawm.testing.rel_error) <= 1e-4 for everything compared with diffusers;
the streaming decode is the same maths in the same order, so it lands around 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from sanawm.models.vae import (
    StreamingVAEDecoder,
    VAEDecoderStep,
    VAEEncoderStep,
    build_vae,
    decoder_conv_names,
    decoder_pixel_frames,
    denormalize_latents,
    full_vae_config,
    load_vae,
    normalize_latents,
    tiny_vae_config,
    vae_compression,
    vae_decoder_io,
    vae_encoder_io,
)
from sanawm.testing import rel_error

TOL = 1e-4
HW = (64, 96)  # pixels; tiny config compresses 32x -> 2x3 latents
LHW = (2, 3)


@pytest.fixture(scope="module")
def vae():
    return build_vae(tiny_vae_config(), seed=0, random_latent_stats=True)


def _reference_decode(vae, z_n: torch.Tensor) -> torch.Tensor:
    """diffusers whole-clip causal decode of normalised latents (no tiling, no framewise decoding)."""
    assert not vae.use_tiling and not vae.use_framewise_decoding
    z = denormalize_latents(z_n, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    with torch.no_grad():
        return vae.decode(z, causal=True).sample


# ------------------------------------------------------------------------------------------ config / loading
def test_compression_counts_structure():
    # diffusers' fallback would say 64x / 16x for this layout; LTX-2 is 32x / 8x
    assert vae_compression(full_vae_config()) == (32, 8)
    assert vae_compression(tiny_vae_config()) == (32, 8)


def test_normalisation_round_trip_and_formula(vae):
    z = torch.randn(1, 8, 2, 2, 3)
    m, s, sf = vae.latents_mean, vae.latents_std, vae.config.scaling_factor
    zn = normalize_latents(z, m, s, sf)
    # formula from sana-wm-reference.md 3.1, written out per channel
    c = 5
    assert torch.allclose(zn[:, c], (z[:, c] - m[c]) * sf / s[c], rtol=1e-6, atol=1e-6)
    assert rel_error(z, denormalize_latents(zn, m, s, sf)) < 1e-6
    assert sf != 1.0 and float((m != 0).sum()) > 0  # otherwise this test could not see a swapped formula


def test_load_from_folder_and_memory(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    assert loaded.config.latent_channels == 8
    assert torch.equal(loaded.latents_mean, vae.latents_mean)
    sd_a, sd_b = vae.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert load_vae(vae) is vae
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------- encoder
def test_encoder_matches_diffusers(vae):
    torch.manual_seed(3)
    img = torch.rand(1, 3, 1, *HW) * 2 - 1
    enc = VAEEncoderStep(vae, *HW)
    with torch.no_grad():
        (got,) = enc(img)
        mode = vae.encode(img, causal=True).latent_dist.mode()
    ref = normalize_latents(mode, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    io = vae_encoder_io(vae.config, *HW)
    assert tuple(got.shape) == io.output("latent").shape == (1, 8, 1, *LHW)
    err = rel_error(ref, got)
    assert err <= TOL, err


def test_encoder_io_full_size():
    io = vae_encoder_io(full_vae_config(), 704, 1280)
    assert io.input("image").shape == (1, 3, 1, 704, 1280)
    assert io.output("latent").shape == (1, 128, 1, 22, 40)


def test_encoder_rejects_bad_sizes(vae):
    with pytest.raises(ValueError, match=r"multiples of 32.*centre-crop"):
        VAEEncoderStep(vae, 60, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        vae_encoder_io(full_vae_config(), 720, 1280)
    enc = VAEEncoderStep(vae, *HW)
    with pytest.raises(ValueError, match=r"\[1, 3, 1, H, W\]"):
        enc(torch.zeros(1, 4, 1, *HW))  # RGBA
    with pytest.raises(ValueError, match="built for 64x96"):
        enc(torch.zeros(1, 3, 1, 96, 64))


# ------------------------------------------------------------------------------------------------- decoder
def test_decoder_io_matches_module_outputs(vae):
    for first in (True, False):
        step = VAEDecoderStep(vae, first, LHW)
        io = vae_decoder_io(vae.config, first, LHW)
        args = [torch.randn(t.shape) for t in io.inputs]
        with torch.no_grad():
            outs = step(*args)
        assert [tuple(o.shape) for o in outs] == [t.shape for t in io.outputs]
        assert io.outputs[0].shape == (1, 3, 24, *HW)  # 24 pixel frames per chunk, both graphs
        n_conv = len(decoder_conv_names(vae.config))
        assert len(io.outputs) == 1 + n_conv
        assert [t.name for t in io.inputs[1:]] == ([] if first else [f"cache.{i}" for i in range(n_conv)])
        assert io.state_map == {f"cache.{i}.out": f"cache.{i}" for i in range(n_conv)}


def test_decoder_io_full_size():
    cfg = full_vae_config()
    first, nxt = vae_decoder_io(cfg, True, (22, 40)), vae_decoder_io(cfg, False, (22, 40))
    assert first.input("latents").shape == (1, 128, 4, 22, 40)
    assert nxt.input("latents").shape == (1, 128, 3, 22, 40)
    assert first.output("frames").shape == nxt.output("frames").shape == (1, 3, 24, 704, 1280)
    names = decoder_conv_names(cfg)
    # conv_in + mid (5 resnets) + 3 x (upsampler + 5 resnets) + conv_out = 1 + 10 + 3 * 11 + 1
    assert len(names) == 45 and names[0] == "conv_in" and names[-1] == "conv_out"
    assert nxt.input("cache.0").shape == (1, 128, 2, 22, 40)
    assert nxt.input("cache.44").shape == (1, 128, 2, 704 // 4, 1280 // 4)  # conv_out runs before unpatchify
    assert [t.shape for t in nxt.inputs[1:]] == [first.output(f"cache.{i}.out").shape for i in range(45)]


@pytest.mark.parametrize("first_n,next_n,chunks", [(4, 3, 3), (1, 1, 5)], ids=["release-chunks", "per-frame"])
def test_streaming_chain_equals_whole_clip_causal_decode(vae, first_n, next_n, chunks):
    """first chunk + `chunks` later chunks == diffusers vae.decode(z, causal=True) on the whole clip.

    Compared: all 1 + 8 (T - 1) pixel frames (drop_first_frame=False so frame 0 is compared too).
    per-frame = the release's decode_per_frame_with_cache granularity."""
    T = first_n + chunks * next_n
    torch.manual_seed(7)
    z_n = torch.randn(1, 8, T, *LHW)
    ref = _reference_decode(vae, z_n)
    assert ref.shape[2] == 1 + 8 * (T - 1)
    dec = StreamingVAEDecoder(vae, LHW, first_n, next_n, drop_first_frame=False)
    parts = [dec.decode_chunk(z_n[:, :, :first_n])]
    for c in range(chunks):
        s = first_n + c * next_n
        parts.append(dec.decode_chunk(z_n[:, :, s : s + next_n]))
    assert parts[0].shape[2] == 1 + 8 * (first_n - 1) and all(p.shape[2] == 8 * next_n for p in parts[1:])
    got = torch.cat(parts, dim=2)
    err = rel_error(ref, got)
    assert err <= TOL, err
    # and per chunk (a late chunk could hide in a whole-clip norm)
    o = 0
    for p in parts:
        e = rel_error(ref[:, :, o : o + p.shape[2]], p)
        assert e <= TOL, (o, e)
        o += p.shape[2]


def test_default_drops_condition_frame(vae):
    torch.manual_seed(8)
    z_n = torch.randn(1, 8, 7, *LHW)
    ref = _reference_decode(vae, z_n)  # 49 frames
    dec = StreamingVAEDecoder(vae, LHW)
    got = torch.cat([dec.decode_chunk(z_n[:, :, :4]), dec.decode_chunk(z_n[:, :, 4:])], dim=2)
    assert got.shape[2] == 48 == decoder_pixel_frames(vae.config, True, 4) + decoder_pixel_frames(vae.config, False, 3)
    assert rel_error(ref[:, :, 1:], got) <= TOL


def test_cache_carries_information(vae):
    """A next chunk fed zero caches (instead of chunk 0's) must decode differently: the cache is real state."""
    torch.manual_seed(9)
    z_n = torch.randn(1, 8, 7, *LHW)
    first, nxt = VAEDecoderStep(vae, True, LHW), VAEDecoderStep(vae, False, LHW)
    with torch.no_grad():
        _, *caches = first(z_n[:, :, :4])
        good = nxt(z_n[:, :, 4:], *caches)[0]
        bad = nxt(z_n[:, :, 4:], *[torch.zeros_like(c) for c in caches])[0]
    ref = _reference_decode(vae, z_n)[:, :, 25:]
    assert rel_error(ref, good) <= TOL
    assert rel_error(ref, bad) > 1e-2


def test_decoder_rejects_wrong_inputs(vae):
    nxt = VAEDecoderStep(vae, False, LHW)
    with pytest.raises(ValueError, match="built for latents"):
        nxt(torch.zeros(1, 8, 4, *LHW))
    with pytest.raises(ValueError, match="caches"):
        nxt(torch.zeros(1, 8, 3, *LHW))
    with pytest.raises(NotImplementedError, match="temb=None"):
        VAEDecoderStep(build_vae(tiny_vae_config(timestep_conditioning=True)), True, LHW)
