"""Sessions: pipeline stages, save/resume equality, extend_camera, input errors (fake engines, numpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sanawm.config import tiny
from sanawm.runtime import PromptEmbeddings, Runtime, Session

from .fakes import FakeDecoder, fake_generators

CFG = tiny()
T = 13  # 4 chunks


def camera(T=T, seed=2):
    r = np.random.default_rng(seed)
    return r.standard_normal((T, 20)).astype(np.float32), r.standard_normal((48, T, 4, 6)).astype(np.float32)


def latent(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 16, 1, 4, 6)).astype(np.float32)


def make_runtime(decoder=True, **kw):
    ex = fake_generators(CFG)
    if decoder:
        ex["vae_decoder_first"] = FakeDecoder(CFG, True)
        ex["vae_decoder_next"] = FakeDecoder(CFG, False)
    return Runtime(CFG, ex, **kw)


def start(rt, **kw):
    kw.setdefault("keep_latents", True)  # these tests read latents after the loop
    return rt.start(latent(), PromptEmbeddings.zeros(CFG), camera(), seed=11, **kw)


def test_latents_live_in_the_pool_until_the_next_chunk():
    """By default a chunk's latents stay where the engine ran and are read out only when asked, before the next
    chunk reuses the pool; after that, reading them is a clear error (keep_latents=True reads them every chunk)."""
    s = start(make_runtime(), keep_latents=False)
    c0 = next(s)
    memory = s.runtime.generator.memory
    before = memory.traffic.d2h_bytes
    first = c0.latents  # read inside the loop: one download
    assert memory.traffic.d2h_bytes - before == first.nbytes
    c1 = next(s)
    np.testing.assert_array_equal(c0.latents, first)  # already read: still there
    next(s)
    with pytest.raises(RuntimeError, match="keep_latents=True"):
        c1.latents  # noqa: B018 - never read before chunk 2 reused the pool


def test_chunks_have_latents_frames_and_timings():
    chunks = list(start(make_runtime()))
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [(c.start, c.end) for c in chunks] == [(0, 4), (4, 7), (7, 10), (10, 13)]
    assert chunks[0].latents.shape == (1, 16, 4, 4, 6)
    # chunk 0 drops the conditioning frame: 1 + 24 decoded -> 24
    assert [c.frames.shape for c in chunks] == [(24, 16, 24, 3)] * 4
    assert all(c.frames.dtype == np.uint8 for c in chunks)
    assert set(chunks[1].timings) == {"generator", "refiner", "decoder"}
    # the fake decoder's cache counter reaches chunk 3 through the chain (value 3 * 0.01 added)
    assert sum(c.num_frames for c in chunks) == 8 * (T - 1)


def test_missing_decoder_gives_latents_only_and_refiner_passes_through():
    chunks = list(start(make_runtime(decoder=False)))
    assert all(c.frames is None for c in chunks)
    assert all(c.refined is c.latents for c in chunks)
    assert set(chunks[0].timings) == {"generator", "refiner"}


def test_the_three_engine_refiner_is_refused_with_the_rebuild_command():
    rt = make_runtime(decoder=False)
    rt.executors["refiner_step"] = object()
    rt.executors["refiner_sink"] = object()
    with pytest.raises(ValueError, match="three engines.*--engines refiner"):
        start(rt)
    rt.refiner = False  # --no-refiner: the old engines are not used, no error or warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert next(start(rt)).refined is not None


def test_half_a_decoder_is_an_error():
    rt = make_runtime(decoder=False)
    rt.executors["vae_decoder_first"] = FakeDecoder(CFG, True)
    with pytest.raises(ValueError, match="vae_decoder_next"):
        start(rt)


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_save_resume_equals_uninterrupted_run(tmp_path, stop_after):
    full = list(start(make_runtime()))
    rt = make_runtime()
    s = start(rt)
    part = [next(s) for _ in range(stop_after)]
    path = s.save(tmp_path / "run.npz")
    del s
    resumed = Session.resume(path, make_runtime(), keep_latents=True)  # a fresh runtime, as after a restart
    assert resumed.next_chunk == stop_after
    rest = list(resumed)
    got = part + rest
    assert len(got) == len(full)
    for a, b in zip(full, got):
        np.testing.assert_array_equal(a.latents, b.latents)
        np.testing.assert_array_equal(a.frames, b.frames)


def test_saved_session_is_pickle_free_and_bounded(tmp_path):
    s = start(make_runtime())
    for _ in range(3):
        next(s)
    path = s.save(tmp_path / "run")  # no suffix: the name is kept as given
    assert path.name == "run"
    with np.load(path, allow_pickle=False) as z:  # would raise on an object array
        ring = json.loads(bytes(z["generator/ring"]).decode())
        size3 = sum(z[n].nbytes for n in z.files if n.startswith("generator/"))
    # the window ring holds the sink (chunk 0) and the previous chunk (2); chunk 1 left it
    assert sorted(ring.values()) == [0, 2]
    assert Session.read_header(path)["next_chunk"] == 3
    next(s)
    with np.load(s.save(tmp_path / "run4"), allow_pickle=False) as z:
        size4 = sum(z[n].nbytes for n in z.files if n.startswith("generator/"))
    assert size4 == size3  # the carried state does not grow with the clip


def test_resume_refuses_another_config(tmp_path):
    import dataclasses

    s = start(make_runtime())
    next(s)
    path = s.save(tmp_path / "run.npz")
    other_cfg = dataclasses.replace(CFG, num_cached_chunks=3)
    rt = Runtime(other_cfg, fake_generators(other_cfg))
    with pytest.raises(ValueError, match="different generator config"):
        Session.resume(path, rt)
    with pytest.raises(ValueError, match="stages"):
        Session.resume(path, make_runtime(decoder=False))


def test_extend_camera_continues_the_clip_like_a_longer_run():
    cam, pl = camera(T=16)
    long = list(make_runtime(decoder=False).start(latent(), PromptEmbeddings.zeros(CFG), (cam, pl), seed=11, keep_latents=True))
    s = make_runtime(decoder=False).start(latent(), PromptEmbeddings.zeros(CFG), (cam[:13], pl[:, :13]), seed=11,
                                           keep_latents=True)
    got = list(s)
    assert len(got) == 4
    with pytest.raises(ValueError, match="multiple of 3"):
        s.extend_camera((cam[13:15], pl[:, 13:15]))
    with pytest.raises(ValueError, match="plucker"):
        s.extend_camera((cam[13:16], pl[:, 13:15]))
    s.extend_camera((cam[13:16], pl[:, 13:16]))
    got += list(s)
    assert len(got) == len(long) == 5
    for a, b in zip(long, got):
        np.testing.assert_array_equal(a.latents, b.latents)


def test_start_input_errors():
    rt = make_runtime()
    p = PromptEmbeddings.zeros(CFG)
    with pytest.raises(ValueError, match="latent must be"):
        rt.start(np.zeros((1, 8, 1, 4, 6), np.float32), p, camera())
    with pytest.raises(ValueError, match="this bundle takes 192x128"):
        rt.start(np.zeros((100, 100, 3), np.uint8), p, camera())
    with pytest.raises(ValueError, match="no vae_encoder"):
        rt.start(np.zeros((128, 192, 3), np.uint8), p, camera())
    with pytest.raises(ValueError, match="prompt embeddings have shape"):
        rt.start(latent(), np.zeros((1, 5, 32), np.float32), camera())
    with pytest.raises(ValueError, match="cannot be split into chunks"):
        rt.start(latent(), p, camera(T=12))
    with pytest.raises(ValueError, match="24k \\+ 1"):
        rt.start(latent(), p, camera(), num_frames=90)
    with pytest.raises(ValueError, match="path has 13"):
        rt.start(latent(), p, camera(), num_frames=8 * 15 + 1)
    with pytest.raises(ValueError, match="plucker must be"):
        rt.start(latent(), p, (camera()[0], camera()[1][:, :5]))


def test_num_frames_trims_the_camera_path():
    s = make_runtime(decoder=False).start(latent(), PromptEmbeddings.zeros(CFG), camera(), num_frames=8 * 6 + 1)
    assert s.num_latent_frames == 7 and s.num_chunks == 2 and s.num_output_frames == 48


def test_missing_generator_engine_is_reported():
    with pytest.raises(ValueError, match="generator is required"):
        Runtime(CFG, {"generator_first": fake_generators(CFG)["generator_first"]})


def test_prompt_files(tmp_path):
    from safetensors.numpy import save_file

    from sanawm.runtime import load_prompt

    text = np.random.default_rng(0).standard_normal((1, 1, 8, 32)).astype(np.float32)  # release layout
    mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0]], np.float32)
    save_file({"prompt_embeds": text, "prompt_attention_mask": mask}, str(tmp_path / "p.safetensors"))
    np.savez(tmp_path / "p.npz", text=text[0])
    a = load_prompt(tmp_path / "p.safetensors", CFG)
    np.testing.assert_array_equal(a.text, text[0])
    np.testing.assert_array_equal(a.text_mask, mask)
    b = load_prompt(tmp_path / "p.npz", CFG)
    np.testing.assert_array_equal(b.text_mask, np.ones((1, 8), np.float32))
    np.savez(tmp_path / "bad.npz", other=text)
    with pytest.raises(ValueError, match="no text tensor"):
        load_prompt(tmp_path / "bad.npz", CFG)
    with pytest.raises(ValueError, match="sanawm encode-prompt"):
        load_prompt(tmp_path / "missing.npz", CFG)
