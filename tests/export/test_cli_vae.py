"""sanawm-export writes the VAE engines (tiny, random, ONNX Runtime): a bundle Bundle.open validates, ORT
decoder chain == torch StreamingVAEDecoder, and the run side's VAE stages drive the real engines.

Tolerance: relative RMS error (sanawm.testing.rel_error) <= 1e-4, float32 (as tests/models/test_vae_export.py).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sanawm.bundle import Bundle  # noqa: E402
from sanawm.config import tiny  # noqa: E402
from sanawm.engines import load_executor  # noqa: E402
from sanawm.export.cli import main  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

pytestmark = pytest.mark.slow

TOL = 1e-4
VAE = ("vae_encoder", "vae_decoder")
CFG = tiny()
LHW = (CFG.latent_height, CFG.latent_width)  # 4x6 -> 128x192 images


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_bundle") / "bundle"
    assert main(["--random", "--config", "tiny", "--seed", "3", "--out", str(out), "--backends", "onnxruntime",
                 "--engines", ",".join(VAE)]) == 0
    return out


@pytest.fixture(scope="module")
def torch_vae(bundle_dir):
    """The random VAE rebuilt from what the manifest records (config + seed)."""
    from sanawm.models.vae import build_vae

    vae = json.loads((bundle_dir / "manifest.json").read_text())["vae"]
    return build_vae(vae["config"], seed=vae["source"]["random_seed"], random_latent_stats=True)


def test_bundle_has_the_vae_engines_and_records_the_image_size(bundle_dir):
    b = Bundle.open(bundle_dir)  # validates paths, hashes, external data
    assert set(b.engines) == set(VAE)
    assert {b.engine(n).precision for n in VAE} == {"fp32"}
    vae = b.manifest["vae"]
    assert vae["image_hw"] == [128, 192] and vae["latent_hw"] == [4, 6]
    assert vae["latent_channels"] == vae["config"]["latent_channels"] == CFG.in_channels == 16
    assert vae["spatial_compression"] == 32 and vae["temporal_compression"] == 8 and vae["precision"] == "fp32"
    assert vae["source"]["random_seed"] == 3
    dec = b.engine("vae_decoder")  # one engine, two profiles: the decoder's weights exist once
    assert dec.profile_dims == {"first": {"n": 4}, "next": {"n": 3}}
    assert dec.inputs[0].name == "latents" and dec.inputs[0].shape == (1, 16, "n", 4, 6)
    # frames leave the decoder engine as uint8 [F, H, W, 3] (converted in the graph), 24 for both profiles
    assert dec.outputs[0].name == "frames" and dec.outputs[0].shape == (24, 128, 192, 3)
    assert dec.outputs[0].dtype == "uint8"
    caches = [t.name for t in dec.inputs[1:]]
    assert caches and dec.state_map == {f"{c}.out": c for c in caches}
    assert b.engine("vae_encoder").inputs[0].shape == (1, 3, 1, 128, 192)
    assert b.manifest["generator_config"] == CFG.to_dict()


def test_ort_decoder_chain_equals_torch_streaming_decoder(bundle_dir, torch_vae):
    """The one decoder engine at profile first, then next, chained by the runtime's stage, gives the torch
    streaming decoder's frames as uint8 (truncation may flip a value by 1 where float rounding differs)."""
    from sanawm.models.vae import StreamingVAEDecoder
    from sanawm.runtime.decoder import DecoderStage
    from sanawm.runtime.frames import to_uint8
    from sanawm.runtime.stages import Chunk

    ex = load_executor(bundle_dir, "vae_decoder", "onnxruntime")
    ref = StreamingVAEDecoder(torch_vae, LHW)
    z = torch.randn(1, 16, 10, *LHW, generator=torch.Generator().manual_seed(0))
    stage = DecoderStage(ex)
    for c, (s, e) in enumerate([(0, 4), (4, 7), (7, 10)]):
        want = ref.decode_chunk(z[:, :, s:e]).numpy()
        assert want.shape == (1, 3, 24, 128, 192) and want.std() > 0.05  # not a degenerate (constant) decode
        lat = np.ascontiguousarray(z[:, :, s:e].numpy())
        got = stage.process(Chunk(c, s, e, lat, refined=lat)).frames
        diff = np.abs(got.astype(int) - to_uint8(want).astype(int))
        assert got.shape == (24, 128, 192, 3) and diff.max() <= 1 and (diff > 0).mean() < 1e-3, c


def test_encoder_engine_equals_torch_and_takes_any_image_size(bundle_dir, torch_vae):
    pytest.importorskip("PIL")
    from sanawm.camera import resize_and_center_crop
    from sanawm.models.vae import VAEEncoderStep
    from sanawm.runtime.frames import from_uint8
    from sanawm.runtime.stages import FirstFrameEncoder

    enc = FirstFrameEncoder(load_executor(bundle_dir, "vae_encoder", "onnxruntime"))
    y, x = np.mgrid[0:240, 0:400]
    img = np.stack([(x * 0.6) % 256, (y * 1.1) % 256, (x + y) % 256], -1).astype(np.uint8)
    got = enc.encode(img)
    cropped, _ = resize_and_center_crop(img, (128, 192))
    with torch.no_grad():
        want = VAEEncoderStep(torch_vae, 128, 192)(torch.from_numpy(from_uint8(cropped)))[0].numpy()
    assert got.shape == want.shape == (1, 16, 1, 4, 6)
    assert rel_error(want, got) <= TOL


def test_runtime_session_with_the_real_vae_engines(bundle_dir, tmp_path):
    """Fake generator + the exported VAE: image first frame, 24 uint8 frames per chunk, save/resume equal."""
    pytest.importorskip("PIL")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from runtime.fakes import fake_generators
    from sanawm.runtime import PromptEmbeddings, Runtime, Session

    def runtime():
        b = Bundle.open(bundle_dir)
        ex = {n: load_executor(b, n, "onnxruntime") for n in VAE}
        return Runtime(CFG, {**fake_generators(CFG), **ex}, image_hw=tuple(b.manifest["vae"]["image_hw"]))

    rng = np.random.default_rng(1)
    cam = (rng.standard_normal((10, 20)).astype(np.float32), rng.standard_normal((48, 10, 4, 6)).astype(np.float32))
    img = rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)

    def start(rt):
        return rt.start(img, PromptEmbeddings.zeros(CFG), cam, seed=4, keep_latents=True)

    rt = runtime()
    assert rt.has_encoder and rt.has_decoder and rt.image_hw == (128, 192)
    full = list(start(rt))
    assert [c.frames.shape for c in full] == [(24, 128, 192, 3)] * 3
    s = start(runtime())
    part = [next(s)]
    path = s.save(tmp_path / "run.npz")
    got = part + list(Session.resume(path, runtime()))
    for a, b in zip(full, got):
        np.testing.assert_array_equal(a.frames, b.frames)


def test_rerun_skips_the_vae_stages_and_keeps_them_fp32_under_fp8(bundle_dir, caplog):
    with caplog.at_level(logging.INFO, logger="sanawm.export"):
        assert main(["--random", "--config", "tiny", "--seed", "3", "--out", str(bundle_dir), "--fp8",
                     "--engines", ",".join(VAE)]) == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert all(any(f"[{n}] onnx: up to date" in m for m in msgs) for n in VAE), msgs
    assert any("VAE engines stay fp32" in m for m in msgs)
    assert {Bundle.open(bundle_dir).engine(n).precision for n in VAE} == {"fp32"}


def test_vae_engines_need_weights_with_a_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "ckpt.pth"), "--out", str(tmp_path / "b"), "--engines", "vae_encoder"]) == 2
    assert "--vae PATH" in capsys.readouterr().err


def test_vae_with_other_latent_channels_is_refused(tmp_path, capsys):
    from sanawm.models.vae import build_vae, tiny_vae_config

    build_vae(tiny_vae_config(latent_channels=8), seed=0).save_pretrained(tmp_path / "vae")
    rc = main(["--random", "--config", "tiny", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "b"),
               "--engines", "vae_encoder"])
    err = capsys.readouterr().err
    assert rc == 2 and "8 latent channels" in err and "takes 16" in err, err
