"""The streaming loop against a hand-written loop, window assembly and eviction, noise (numpy only)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sanawm.config import StreamingSchedule, tiny
from sanawm.runtime.noise import NoiseSource, clip_noise
from sanawm.runtime.scheduler import Conditioning, GeneratorRunner, euler_step, sigma_next, stream_latents

from .fakes import FakeGenerator, fake_generators, kv_value

CFG = tiny()
T = 13  # chunks [0,4) [4,7) [7,10) [10,13)


def make_cond(cfg=CFG, T=T, seed=1) -> Conditioning:
    r = np.random.default_rng(seed)
    C, H, W = cfg.in_channels, cfg.latent_height, cfg.latent_width
    return Conditioning(
        condition_latent=r.standard_normal((1, C, 1, H, W)).astype(np.float32),
        text=r.standard_normal((1, cfg.caption_length, cfg.caption_channels)).astype(np.float32),
        text_mask=np.ones((1, cfg.caption_length), np.float32),
        camera=r.standard_normal((T, 20)).astype(np.float32),
        plucker=r.standard_normal((48, T, H, W)).astype(np.float32),
    )


def runner(cfg=CFG):
    g = fake_generators(cfg)
    return GeneratorRunner(cfg, g["generator_first"], g["generator_next"]), g


def test_sigma_next_matches_the_schedule():
    sig = StreamingSchedule().sigmas  # (1.0, 0.96, 0.889, 0.727, 0.0)
    got = sigma_next(np.array([1.0, 0.96, 0.889, 0.727, 0.0], np.float32), sig)
    np.testing.assert_array_equal(got, np.array([0.96, 0.889, 0.727, 0.0, 0.0], np.float32))


def test_euler_step_holds_a_zero_timestep_frame():
    x = np.ones((1, 2, 3, 2, 2), np.float32)
    v = np.full_like(x, 2.0)
    out = euler_step(x, v, np.array([0.0, 1000.0, 727.0], np.float32), StreamingSchedule().sigmas)
    np.testing.assert_allclose(out[:, :, 0], 1.0)  # dt = 0
    np.testing.assert_allclose(out[:, :, 1], 1.0 + (0.96 - 1.0) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[:, :, 2], 1.0 + (0.0 - 0.727) * 2.0, rtol=1e-6)


def test_stream_matches_hand_written_loop():
    run, g = runner()
    cond = make_cond()
    got = [r.latents for r in stream_latents(run, cond, NoiseSource(7, (16, 4, 6)))]

    # ---- the reference: plain loops, its own state bookkeeping, the same fake engine arithmetic
    noise = clip_noise(7, (1, 16, T, 4, 6))
    sigmas = [1.0, 0.96, 0.889, 0.727, 0.0]
    fg, fn = FakeGenerator(CFG, True), FakeGenerator(CFG, False)
    state = {i.name: np.zeros(i.shape, np.float32) for i in fg.inputs if i.name.startswith("b")}
    chunk_kv = {}
    bounds = [(0, 4), (4, 7), (7, 10), (10, 13)]
    windows = {1: [0], 2: [0, 1], 3: [0, 2]}
    for c, (s, e) in enumerate(bounds):
        eng = fg if c == 0 else fn
        n = e - s
        x = noise[:, :, s:e].copy()
        if c == 0:
            x[:, :, 0] = cond.condition_latent[:, :, 0]
        feeds = {
            "frame_index": np.arange(s, e, dtype=np.int64),
            "text": cond.text,
            "text_mask": cond.text_mask,
            "camera": cond.camera[None, s:e],
            "plucker": cond.plucker[None, :, s:e],
        }
        feeds.update({k: v for k, v in state.items() if k in {i.name for i in eng.inputs}})
        if c > 0:
            Wt = 7 * CFG.patch_tokens
            valid = np.zeros(Wt, np.float32)
            used = sum((4 if k == 0 else 3) for k in windows[c]) * CFG.patch_tokens
            valid[:used] = 1
            feeds["window_valid"] = valid
            for i in CFG.softmax_blocks:
                for nm in ("k", "v", "cam_k", "cam_v"):
                    cat = np.concatenate([chunk_kv[k][f"b{i}.{nm}"] for k in windows[c]], axis=2)
                    win = np.zeros((1, CFG.num_heads, Wt, CFG.head_dim), np.float32)
                    win[:, :, : cat.shape[2]] = cat
                    feeds[f"b{i}.{nm}_win"] = win
        for step in range(4):
            ts = np.full(n, 1000.0 * sigmas[step], np.float32)
            ts[:] = [1000.0, 960.0, 889.0, 727.0][step]
            if c == 0:
                ts[0] = 0.0
            v = eng.run(dict(feeds, latents=x, timestep=ts[None]))["velocity"]
            for f in range(n):
                if c == 0 and f == 0:
                    continue
                dt = np.float32(sigmas[step + 1]) - np.float32(sigmas[step])
                x[:, :, f] = x[:, :, f] + dt * v[:, :, f]
        out = eng.run(dict(feeds, latents=x, timestep=np.zeros((1, n), np.float32)))
        for o, i in eng.io.state_map.items():
            state[i] = out[o]
        chunk_kv[c] = {k[: -len("_chunk")]: v for k, v in out.items() if k.endswith("_chunk")}
        np.testing.assert_allclose(got[c], x, rtol=1e-6, atol=1e-6, err_msg=f"chunk {c}")
    # 5 engine calls per chunk
    assert len(g["generator_first"].calls) == 5 and len(g["generator_next"].calls) == 15


def test_condition_frame_is_held_and_timestep_zero_on_it():
    run, g = runner()
    cond = make_cond()
    first = next(iter(stream_latents(run, cond, NoiseSource(0, (16, 4, 6)))))
    np.testing.assert_array_equal(first.latents[:, :, 0:1], cond.condition_latent)
    calls = g["generator_first"].calls
    assert [c["timestep"][0, 0] for c in calls] == [0.0] * 5
    assert [c["timestep"][0, 1] for c in calls] == [1000.0, 960.0, 889.0, 727.0, 0.0]


@pytest.mark.parametrize(
    "n_cached, sink, expected",
    [
        (2, True, {1: [0], 2: [0, 1], 3: [0, 2], 4: [0, 3], 5: [0, 4], 6: [0, 5]}),
        (3, True, {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 2, 3], 5: [0, 3, 4], 6: [0, 4, 5]}),
        (2, False, {1: [0], 2: [0, 1], 3: [1, 2], 4: [2, 3], 5: [3, 4], 6: [4, 5]}),
    ],
)
def test_window_ring_holds_exactly_the_window_chunks(n_cached, sink, expected):
    """The softmax window is a ring written in place: each later chunk's K/V takes the slot of the chunk that
    left the window; ``window_valid`` marks exactly the tokens of ``cfg.window_chunks(c)`` (order inside the
    window does not matter: keys carry their absolute positions)."""
    cfg = dataclasses.replace(CFG, num_cached_chunks=n_cached, sink=sink)
    Tn = 4 + 3 * 6  # chunks 0..6
    run, g = runner(cfg)
    state = run.new_state()
    S = cfg.patch_tokens
    Wt = run.io.input("window_valid").shape[0]
    for res in stream_latents(run, make_cond(cfg, Tn), NoiseSource(0, (16, 4, 6)), state):
        c = res.index
        # eviction: only chunks some later window still needs are kept
        assert sorted(state.ring.held.values()) == sorted(cfg.window_chunks(c + 1)), (c, state.ring.held)
    assert len(g["generator_next"].calls) == 5 * 6
    for c in range(1, 7):
        feeds = g["generator_next"].calls[5 * (c - 1)]
        frames = [f for k in expected[c] for f in range(*((0, 4) if k == 0 else (1 + 3 * k, 4 + 3 * k)))]
        valid = feeds["window_valid"]
        assert valid.shape == (Wt,) and set(np.unique(valid)) <= {0.0, 1.0}
        assert int(valid.sum()) == len(frames) * S
        for i in cfg.softmax_blocks:
            for j, nm in enumerate(("k", "v", "cam_k", "cam_v")):
                win = feeds[f"b{i}.{nm}_win"]  # [1, h, Wt, D]
                got = np.sort(win[0, 0, valid == 1.0, 0])
                want = np.sort(kv_value(np.repeat(np.array(frames, np.float32), S), i, j))
                np.testing.assert_array_equal(got, want, err_msg=f"c={c} b{i}.{nm}")
        # the five passes of a chunk read the same window
        for p in range(1, 5):
            np.testing.assert_array_equal(g["generator_next"].calls[5 * (c - 1) + p]["window_valid"], valid)


def test_chained_state_comes_from_the_commit_pass_of_the_previous_chunk():
    run, g = runner()
    list(stream_latents(run, make_cond(), NoiseSource(0, (16, 4, 6))))
    calls = g["generator_first"].calls + g["generator_next"].calls
    for c in range(1, 4):
        commit = calls[5 * (c - 1) + 4]  # the t = 0 pass of chunk c - 1
        m = np.float32(commit["latents"].mean())
        for call in calls[5 * c : 5 * c + 5]:  # all five passes of chunk c read the same state
            np.testing.assert_allclose(call["b0.S_kv"], commit["b0.S_kv"] + m, rtol=1e-6)
    assert np.all(calls[0]["b0.S_kv"] == 0)  # chunk 0 starts from zeros


def test_noise_is_frame_major_and_independent_of_clip_length():
    a = clip_noise(3, (1, 2, 5, 3, 3))
    b = clip_noise(3, (1, 2, 8, 3, 3))
    np.testing.assert_array_equal(a, b[:, :, :5])
    src = NoiseSource(3, (2, 3, 3))
    parts = np.concatenate([src.take(0, 4), src.take(4, 5)], axis=2)
    np.testing.assert_array_equal(parts, a)
    assert a.dtype == np.float32
    with pytest.raises(ValueError, match="in order"):
        src.take(7, 8)


def test_injected_noise_is_used_verbatim():
    cond = make_cond()
    noise = np.random.default_rng(5).standard_normal((1, 16, T, 4, 6)).astype(np.float32)
    run, g = runner()
    list(stream_latents(run, cond, NoiseSource.from_array(noise)))
    np.testing.assert_array_equal(g["generator_next"].calls[0]["latents"], noise[:, :, 4:7])


def test_custom_schedule_is_injected():
    g = fake_generators(CFG)
    run = GeneratorRunner(CFG, g["generator_first"], g["generator_next"], StreamingSchedule((1000.0, 500.0)))
    list(stream_latents(run, make_cond(), NoiseSource(0, (16, 4, 6))))
    assert [c["timestep"][0, 1] for c in g["generator_first"].calls] == [1000.0, 500.0, 0.0]


def test_engine_not_matching_the_config_is_refused():
    g = fake_generators(CFG)
    other = fake_generators(dataclasses.replace(CFG, latent_width=8))
    with pytest.raises(ValueError, match="rebuild the bundle"):
        GeneratorRunner(CFG, g["generator_first"], other["generator_next"])
