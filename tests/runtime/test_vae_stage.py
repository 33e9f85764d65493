"""VAE stages of the runtime with numpy fakes that follow the exported LTX-2 VAE contract exactly
(``sanawm.models.vae.vae_encoder_io`` / ``vae_decoder_io``): cache chaining, save/resume, first-frame
encoding (resize, errors). Torch-free."""

from __future__ import annotations

import numpy as np
import pytest

from sanawm.config import tiny
from sanawm.engines.base import Executor
from sanawm.runtime import PromptEmbeddings, Runtime, Session
from sanawm.runtime.frames import to_uint8
from sanawm.runtime.decoder import DecoderStage
from sanawm.runtime.stages import Chunk, FirstFrameEncoder
from sanawm.spec import TensorSpec

from .fakes import fake_generators

CFG = tiny()  # 16 latent channels, 4x6 latents -> 128x192 images
C, h, w = CFG.in_channels, CFG.latent_height, CFG.latent_width
S = 32  # spatial compression
T = 13  # 4 chunks: (0, 4), (4, 7), (7, 10), (10, 13)
K = 3  # temporal kernel of the fake's causal "conv" (2 cached frames, as LTX-2's k_t = 3)


# --------------------------------------------------------------------------- fakes (real contract)
def _pixels(y: np.ndarray) -> np.ndarray:
    """[3, n, h, w] per-latent-frame RGB -> [1, 3, 8 n, 32 h, 32 w] (8 pixel frames per latent frame)."""
    y = np.repeat(y, 8, axis=1)
    return np.repeat(np.repeat(y, S, axis=2), S, axis=3)[None].astype(np.float32)


def reference_decode(z: np.ndarray) -> np.ndarray:
    """Whole-clip causal decode the fake implements: [1, C, T, h, w] -> [1, 3, 8 (T - 1), H, W] (frame 0 of
    the clip gives one pixel frame, the condition frame, which is dropped)."""
    x = z[0]  # [C, T, h, w]
    pad = np.concatenate([np.repeat(x[:, :1], K - 1, axis=1), x], axis=1)  # causal start: replicate frame 0
    conv = x + 0.5 * pad[:, 1:-1] + 0.25 * pad[:, :-2]  # frame t sees t, t-1, t-2
    run = np.cumsum(x.mean(axis=(2, 3)), axis=1)  # [C, T] running sum over frames (a second, different cache)
    y = np.sin(conv[:3]) * 0.8 + 0.2 * np.sin(run[:3])[:, :, None, None]  # [3, T, h, w]
    return _pixels(y[:, 1:])


class FakeVAEDecoder(Executor):
    """``vae_decoder_first`` / ``vae_decoder_next`` with the real tensor contract: latents [1, C, n, h, w]
    (n = 4 / 3); the next graph alone takes ``cache.0`` (last 2 latent frames) and ``cache.1`` (running
    channel sums); outputs ``frames`` [1, 3, 24, 128, 192] (first graph: condition frame dropped) and
    ``cache.{i}.out``; both state_maps name the next graph's inputs. ``run`` checks feeds like every backend."""

    def __init__(self, first: bool):
        n = 4 if first else 3
        caches = [TensorSpec("cache.0", "float32", (1, C, K - 1, h, w)), TensorSpec("cache.1", "float32", (1, C))]
        ins = (TensorSpec("latents", "float32", (1, C, n, h, w)),) + (() if first else tuple(caches))
        outs = (TensorSpec("frames", "float32", (1, 3, 24, h * S, w * S)),) + tuple(
            TensorSpec(t.name + ".out", t.dtype, t.shape) for t in caches
        )
        super().__init__("vae_decoder_first" if first else "vae_decoder_next", ins, outs,
                         {"cache.0.out": "cache.0", "cache.1.out": "cache.1"})
        self.first, self.calls = first, []

    def _run(self, feeds, profile=None):
        self.calls.append({k: v.copy() for k, v in feeds.items()})
        x = feeds["latents"][0]
        if self.first:
            left, run0 = np.repeat(x[:, :1], K - 1, axis=1), np.zeros((C,), np.float32)
        else:
            left, run0 = feeds["cache.0"][0], feeds["cache.1"][0]
        pad = np.concatenate([left, x], axis=1)
        conv = x + 0.5 * pad[:, 1:-1] + 0.25 * pad[:, :-2]
        run = run0[:, None] + np.cumsum(x.mean(axis=(2, 3)), axis=1)
        y = np.sin(conv[:3]) * 0.8 + 0.2 * np.sin(run[:3])[:, :, None, None]
        if self.first:
            y = y[:, 1:]  # the graph drops the condition frame
        return {"frames": _pixels(y), "cache.0.out": pad[None, :, -(K - 1):].astype(np.float32),
                "cache.1.out": run[None, :, -1].astype(np.float32)}


class FakeVAEEncoder(Executor):
    """``vae_encoder``: image [1, 3, 1, 128, 192] in [-1, 1] -> latent [1, C, 1, 4, 6] (32x32 block means,
    channel c = colour c % 3 scaled by (1 + c))."""

    def __init__(self, hw=(h * S, w * S)):
        H, W = hw
        super().__init__("vae_encoder", (TensorSpec("image", "float32", (1, 3, 1, H, W)),),
                         (TensorSpec("latent", "float32", (1, C, 1, H // S, W // S)),))
        self.calls = []

    def _run(self, feeds, profile=None):
        img = feeds["image"]
        self.calls.append(img.copy())
        _, _, _, H, W = img.shape
        blocks = img[0, :, 0].reshape(3, H // S, S, W // S, S).mean(axis=(2, 4))  # [3, h, w]
        lat = np.stack([blocks[c % 3] * (1 + c) for c in range(C)])[None, :, None]
        return {"latent": lat.astype(np.float32)}


def vae_executors():
    return {"vae_encoder": FakeVAEEncoder(), "vae_decoder_first": FakeVAEDecoder(True),
            "vae_decoder_next": FakeVAEDecoder(False)}


def make_runtime(**kw):
    return Runtime(CFG, {**fake_generators(CFG), **vae_executors()}, **kw)


def camera(seed=2):
    r = np.random.default_rng(seed)
    return r.standard_normal((T, 20)).astype(np.float32), r.standard_normal((48, T, h, w)).astype(np.float32)


def latent(seed=3):
    return np.random.default_rng(seed).standard_normal((1, C, 1, h, w)).astype(np.float32)


def start(rt, first=None):
    return rt.start(latent() if first is None else first, PromptEmbeddings.zeros(CFG), camera(), seed=11, keep_latents=True)


# ------------------------------------------------------------------------------------------ decoder
def test_decoder_chains_caches_like_one_whole_clip_decode():
    rt = make_runtime()
    chunks = list(start(rt))
    assert [c.frames.shape for c in chunks] == [(24, h * S, w * S, 3)] * 4  # 24 per chunk, condition frame dropped
    assert all(c.frames.dtype == np.uint8 for c in chunks)
    z = np.concatenate([c.refined for c in chunks], axis=2)  # the clip's latents [1, C, 13, h, w]
    want = to_uint8(reference_decode(z))
    got = np.concatenate([c.frames for c in chunks])
    assert got.std() > 30  # frames vary (sin of the latents), so equality below is informative
    np.testing.assert_array_equal(got, want)
    # the check can fail: the same chunk decoded after a lost (zeroed) cache gives other frames
    st = DecoderStage(FakeVAEDecoder(True), FakeVAEDecoder(False))
    for c in chunks[:2]:
        st.process(Chunk(c.index, c.start, c.end, c.latents, refined=c.refined))
    st.load_state_dict({k: np.zeros_like(v) for k, v in st.state_dict().items()})
    wrong = st.process(Chunk(2, 7, 10, chunks[2].latents, refined=chunks[2].refined)).frames
    assert not np.array_equal(wrong, chunks[2].frames)

    # the first graph got latents only; every next call got exactly the previous call's cache outputs
    first, nxt = rt.executors["vae_decoder_first"], rt.executors["vae_decoder_next"]
    assert len(first.calls) == 1 and set(first.calls[0]) == {"latents"}
    assert len(nxt.calls) == 3 and all(set(c) == {"latents", "cache.0", "cache.1"} for c in nxt.calls)
    np.testing.assert_array_equal(nxt.calls[0]["cache.0"], chunks[0].refined[:, :, -2:])
    np.testing.assert_array_equal(nxt.calls[2]["cache.0"], chunks[2].refined[:, :, -2:])


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3])
def test_save_resume_mid_clip_gives_identical_frames(tmp_path, stop_after):
    full = list(start(make_runtime()))
    s = start(make_runtime())
    part = [next(s) for _ in range(stop_after)]
    path = s.save(tmp_path / "run.npz")
    with np.load(path) as z:
        saved = sorted(k for k in z.files if k.startswith("stage/decoder/"))
    assert saved == ([] if stop_after == 0 else ["stage/decoder/cache.0", "stage/decoder/cache.1"])
    rt2 = make_runtime()  # a fresh runtime, as after a restart
    got = part + list(Session.resume(path, rt2))
    assert len(got) == 4
    for a, b in zip(full, got):
        np.testing.assert_array_equal(a.frames, b.frames)
    # the resumed session started on the right graph (first only when nothing was decoded yet)
    assert len(rt2.executors["vae_decoder_first"].calls) == (1 if stop_after == 0 else 0)


def test_resume_refuses_a_decoder_cache_of_another_shape():
    st = DecoderStage(FakeVAEDecoder(True), FakeVAEDecoder(False))
    good = {"cache.0": np.zeros((1, C, 2, h, w), np.float32), "cache.1": np.zeros((1, C), np.float32)}
    st.load_state_dict(good)
    with pytest.raises(ValueError, match="missing \\['cache.1'\\]"):
        st.load_state_dict({"cache.0": good["cache.0"]})
    with pytest.raises(ValueError, match="cache.0.*takes float32\\[1, 16, 2, 4, 6\\]"):
        st.load_state_dict({**good, "cache.0": np.zeros((1, C, 3, h, w), np.float32)})


def test_decoder_graphs_whose_state_maps_do_not_feed_each_other_are_refused():
    bad = FakeVAEDecoder(True)
    bad.state_map = {"cache.0.out": "cache.0"}  # cache.1 would never be fed
    with pytest.raises(ValueError, match="cache.1.*rebuild it"):
        DecoderStage(bad, FakeVAEDecoder(False))


def test_decoder_refuses_latents_of_another_size():
    st = DecoderStage(FakeVAEDecoder(True), FakeVAEDecoder(False))
    lat = np.zeros((1, C, 4, h + 1, w), np.float32)
    with pytest.raises(ValueError, match="built for another generator config"):
        st.process(Chunk(0, 0, 4, lat, refined=lat))


# ------------------------------------------------------------------------------------------ encoder
def test_encoder_resizes_and_centre_crops_a_non_matching_image():
    from sanawm.camera import resize_and_center_crop
    from sanawm.runtime.frames import from_uint8

    pytest.importorskip("PIL")
    rt = make_runtime()
    img = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)  # 5:3, model frame is 3:2
    lat = rt.encode_first_frame(img)
    enc = rt.executors["vae_encoder"]
    assert enc.calls[-1].shape == (1, 3, 1, 128, 192)
    cropped, _ = resize_and_center_crop(img, (128, 192))
    np.testing.assert_array_equal(enc.calls[-1], from_uint8(cropped))
    np.testing.assert_array_equal(lat, FakeVAEEncoder().run({"image": from_uint8(cropped)})["latent"])
    # a session started from the image uses that latent as its condition frame
    s = start(make_runtime(), first=img)
    np.testing.assert_array_equal(s.cond.condition_latent, lat)
    # an image of the model size goes in untouched
    exact = img[:128, :192]
    rt.encode_first_frame(exact)
    np.testing.assert_array_equal(enc.calls[-1], from_uint8(exact))


@pytest.mark.parametrize("shape", [(128, 192), (128, 192, 1)])
def test_encoder_rejects_a_one_channel_image(shape):
    rt = make_runtime()
    with pytest.raises(ValueError, match="1-channel.*RGB.*convert"):
        rt.encode_first_frame(np.zeros(shape, np.uint8))
    assert rt.executors["vae_encoder"].calls == []


def test_encoder_rejects_alpha_and_float_images():
    enc = FirstFrameEncoder(FakeVAEEncoder())
    with pytest.raises(ValueError, match="drop alpha"):
        enc.encode(np.zeros((128, 192, 4), np.uint8))
    with pytest.raises(ValueError, match="8-bit RGB"):
        enc.encode(np.zeros((128, 192, 3), np.float32))


# ---------------------------------------------------------------------------------------- image size
def test_image_size_comes_from_the_manifest_and_the_encoder_which_must_agree():
    assert make_runtime().image_hw == (128, 192)
    assert make_runtime(image_hw=(128, 192)).image_hw == (128, 192)
    with pytest.raises(ValueError, match="first-frame size disagrees.*manifest.*256x160.*192x128"):
        make_runtime(image_hw=(160, 256))
    assert Runtime(CFG, fake_generators(CFG), image_hw=(160, 256)).image_hw == (160, 256)  # manifest, no encoder
    assert Runtime(CFG, fake_generators(CFG)).image_hw == (128, 192)  # 32x the latent grid
    # an encoder whose latent is not the generator's
    ex = {**fake_generators(CFG), "vae_encoder": FakeVAEEncoder((64, 96))}
    rt = Runtime(CFG, ex)
    assert rt.image_hw == (64, 96) and not rt.has_decoder
    with pytest.raises(ValueError, match="another generator config"):
        rt.encode_first_frame(np.zeros((64, 96, 3), np.uint8))
