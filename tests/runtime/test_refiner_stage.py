"""Refiner stage on a numpy fake of the one refiner engine: block/chunk alignment, sink once, per-block seeded
noise, the history ring (fill, wrap, trim, mask), save/resume equality (stage and whole session), ``refiner=False``,
text plumbing, weight-streaming option plumbing (torch-free)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest

from sanawm.config import tiny
from sanawm.engines.base import Executor
from sanawm.engines.host import HostStep
from sanawm.refiner_layout import RefinerLayout
from sanawm.runtime import PromptEmbeddings, Runtime, Session
from sanawm.runtime.refiner_stage import RefinerStage, refiner_text_from
from sanawm.runtime.stages import Chunk, PassThroughRefiner
from sanawm.spec_refiner import refiner_engine_io, refiner_profiles

from .fakes import FakeDecoder, fake_generators

CFG = tiny()
C, H, W = CFG.in_channels, CFG.latent_height, CFG.latent_width
S = H * W
KV_MAX, HIST = 5, 4  # 1 sink frame + 4 history frames: the window trims after the 2nd block
LT, CT, HEADS, D = 6, 5, 1, 2
SIGMAS = (0.909375, 0.725, 0.421875, 0.0)
LAYOUT = {"layout": {"block_size": 3, "kv_max_frames": KV_MAX, "sink_frames": 1}, "sigmas": list(SIGMAS),
          "timestep_scale_multiplier": 1000.0}


class FakeRefiner(Executor):
    """Fake of the one ``refiner`` engine with ``refiner_engine_io``'s contract (1 layer, profiles sink / block).

    ``k_new`` holds frame index + 1 per token on block calls (so the ring's content is readable) and
    latents.mean() + 1 on the sink call; the velocity depends on x, sink, the valid history, text, timestep and the
    sink position; ``latents.out`` is the engine's Euler step."""

    backend = "fake"

    def __init__(self, kv_max=KV_MAX):
        self.layout = RefinerLayout(H, W, LT, kv_max_frames=kv_max)
        dims = SimpleNamespace(num_layers=1, heads=HEADS, head_dim=D, in_channels=C, out_channels=C, caption_channels=CT)
        io = refiner_engine_io(dims, self.layout)
        super().__init__("refiner", io.inputs, io.outputs, io.state_map, refiner_profiles(self.layout))
        self.calls: list[tuple[str, dict]] = []

    def _run(self, f, profile=None):
        self.calls.append((profile, {k: np.array(v, copy=True) for k, v in f.items()}))
        n = f["latents"].shape[2]
        sk = S * self.layout.sink_frames
        if f["kv_rotate"][0] > 0.5:
            tok = np.repeat(f["frame_pos"].astype(np.float32) + 1, S)
            k = np.broadcast_to(tok[None, None, :, None], (1, HEADS, n * S, D))
            v = np.full((1, HEADS, n * S, D), f["latents"].mean(), np.float32)
        else:
            k = np.full((1, HEADS, n * S, D), f["latents"].mean() + 1, np.float32)
            v = np.full((1, HEADS, n * S, D), f["text"].mean(), np.float32)
        hist = float((f["l0.hist_k"][0, 0, :, 0] * f["kv_valid"][sk:]).sum())
        extra = 0.01 * hist + 0.1 * float(f["l0.sink_k"].mean()) + 0.05 * float(f["l0.sink_v"].mean())
        extra += 1e-4 * float(f["timestep"][0]) + 0.01 * float(f["sink_pos"][0])
        m = f["mix"][0]
        x = ((np.float32(1) - m) * f["latents"] + m * f["noise"]).astype(np.float32)
        vel = (0.5 * x + np.float32(extra)).astype(np.float32)
        s, dt = f["sigma"][0], f["dt"][0]
        x0 = x - vel * s
        out = x0 if s <= 1e-6 else x + dt * ((x - x0) / s)
        return {"latents.out": out.astype(np.float32), "l0.k_new": k.astype(np.float32), "l0.v_new": v.astype(np.float32)}

    def of(self, profile, sigma0=None):
        """Recorded calls of one profile; ``sigma0``: only the commit passes (True) or the denoising ones (False)."""
        out = [c for p, c in self.calls if p == profile]
        if sigma0 is not None:
            out = [c for c in out if (c["sigma"][0] == 0) == sigma0]
        return out


def fake_refiner():
    return {"refiner": FakeRefiner()}


def clip(T=13, seed=0):
    return np.random.default_rng(seed).standard_normal((1, C, T, H, W)).astype(np.float32)


def chunks_of(z):
    return [Chunk(c, s, e, np.ascontiguousarray(z[:, :, s:e])) for c, (s, e) in enumerate(CFG.chunk_bounds(z.shape[2]))]


def new_stage(ex=None, seed=42):
    ex = ex or fake_refiner()
    st = RefinerStage.from_executors(ex, layout=LAYOUT, seed=seed)
    rtext = np.random.default_rng(1).standard_normal((1, LT, CT)).astype(np.float32)
    st.set_text((rtext, np.ones((1, LT), np.float32)))
    return st, ex


def test_blocks_align_with_chunks_sink_once_and_noise_in_block_order():
    st, ex = new_stage()
    z = clip()
    out = [st.process(c).refined for c in chunks_of(z)]
    assert [o.shape[2] for o in out] == [4, 3, 3, 3]
    # chunk 0 passes [raw frame 0 ; refined block 0]; refined frames differ from stage 1
    assert np.array_equal(out[0][:, :, :1], z[:, :, :1])
    assert not np.allclose(out[0][:, :, 1:], z[:, :, 1:4])
    # sink captured once, from raw frame 0 at position 0, every prefix key masked, pre-RoPE K out
    ref = ex["refiner"]
    sinks = ref.of("sink")
    assert len(sinks) == 1 and ref.calls[0][0] == "sink"
    assert np.array_equal(sinks[0]["latents"], z[:, :, :1])
    assert sinks[0]["sink_pos"].tolist() == [0] and sinks[0]["frame_pos"].tolist() == [0]
    assert not sinks[0]["kv_valid"].any() and sinks[0]["kv_rotate"][0] == 0 and sinks[0]["sigma"][0] == 0
    # 3 Euler steps per block at sigma x 1000, then one commit pass; block k = frames [1+3k, 4+3k)
    steps, caps = ref.of("block", sigma0=False), ref.of("block", sigma0=True)
    assert len(steps) == 12 and len(caps) == 4 and len(ref.calls) == 17
    ts = [np.float32(s * 1000.0) for s in SIGMAS[:3]]
    assert [c["timestep"][0] for c in steps[:3]] == ts
    assert [c["dt"][0] for c in steps[:3]] == [np.float32(SIGMAS[i + 1]) - np.float32(SIGMAS[i]) for i in range(3)]
    assert [c["frame_pos"].tolist() for c in caps] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert all(c["kv_rotate"][0] == 1 for c in steps + caps)
    # the first step of block k gets the clean block z_k, eps_k (the k-th draw of PCG64(42)) and mix = s0, so it
    # starts from (1 - s0) z + s0 eps; the later calls mix nothing in
    rng = np.random.Generator(np.random.PCG64(42))
    s0 = np.float32(SIGMAS[0])  # the float32 sigma, as the torch oracle's scheduler holds it
    for k in range(4):
        eps = rng.standard_normal((1, C, 3, H, W), dtype=np.float32)
        np.testing.assert_array_equal(steps[3 * k]["latents"], z[:, :, 1 + 3 * k: 4 + 3 * k])
        np.testing.assert_array_equal(steps[3 * k]["noise"], eps)
        assert steps[3 * k]["mix"][0] == s0 and all(c["mix"][0] == 0 for c in steps[3 * k + 1: 3 * k + 3])
        np.testing.assert_array_equal(caps[k]["latents"], out[k][:, :, -3:])  # the commit sees the refined block
        assert caps[k]["mix"][0] == 0


def test_history_ring_holds_the_last_frames_and_masks_the_rest():
    st, ex = new_stage()
    for c in chunks_of(clip()):
        st.process(c)
    ref = ex["refiner"]
    caps = ref.of("block", sigma0=True)
    steps = ref.of("block", sigma0=False)
    for k, call in enumerate(caps):
        hist_frames = min(3 * k, HIST)
        # sink re-rotated just before the history window: block_start - history_frames - sink
        assert call["sink_pos"].tolist() == [1 + 3 * k - hist_frames - 1], k
        valid = call["kv_valid"]
        assert valid[:S].all() and valid[S:].sum() == hist_frames * S  # the sink, then the ring's held frames
        # the ring holds exactly the last `hist_frames` refined frames (token value = frame + 1), in any slot order
        held = call["l0.hist_k"][0, 0, :, 0].reshape(HIST, S)[:, 0][valid[S:].reshape(HIST, S)[:, 0] > 0]
        assert sorted(held.tolist()) == [float(f + 1) for f in range(1 + 3 * k - hist_frames, 1 + 3 * k)], k
        assert (call["l0.sink_k"] == z_mean_plus_one(ex)).all()  # the sink pass's K, copied once
        for s_call in steps[3 * k: 3 * k + 3]:  # the denoising calls read the same ring and mask
            np.testing.assert_array_equal(s_call["l0.hist_k"], call["l0.hist_k"])
            np.testing.assert_array_equal(s_call["kv_valid"], valid)
    assert st.hist_frames == HIST and st.blocks_done == 4


def z_mean_plus_one(ex):
    return np.float32(ex["refiner"].of("sink")[0]["latents"].mean() + 1)


@pytest.mark.parametrize("stop_after", [1, 2])
def test_save_resume_gives_identical_refined_latents(stop_after):
    z = clip(T=16)
    ref, _ = new_stage()
    want = [ref.process(c).refined for c in chunks_of(z)]
    a, _ = new_stage()
    got = [a.process(c).refined for c in chunks_of(z)[:stop_after]]
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in a.state_dict().items()})
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        state = {k: f[k] for k in f.files}
    b, _ = new_stage(seed=7)  # the saved RNG position and seed win over the new stage's
    b.load_state_dict(state)
    got += [b.process(c).refined for c in chunks_of(z)[stop_after:]]
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w, g)
    # a different seed really changes the output (the check above is not vacuous)
    other, _ = new_stage(seed=43)
    assert not np.array_equal(other.process(chunks_of(z)[0]).refined, want[0])
    # a snapshot of the three-engine refiner (no pool) is refused with the rebuild command
    old = {k: v for k, v in state.items() if not k.startswith("pool/")}
    with pytest.raises(ValueError, match="older bundle.*--engines refiner"):
        new_stage()[0].load_state_dict(old)


def test_out_of_order_and_misaligned_chunks_are_errors():
    st, _ = new_stage()
    cs = chunks_of(clip())
    with pytest.raises(ValueError, match="in order from chunk 0"):
        st.process(cs[1])
    st.process(cs[0])
    with pytest.raises(ValueError, match="in order"):
        st.process(cs[2])
    with pytest.raises(ValueError, match="whole blocks of 3"):
        st.process(Chunk(1, 4, 6, clip()[:, :, 4:6]))


def test_layout_disagreeing_with_engines_is_reported():
    with pytest.raises(ValueError, match="different exports"):
        RefinerStage.from_executors(fake_refiner(), layout={**LAYOUT, "layout": {"kv_max_frames": 11}})
    with pytest.raises(ValueError, match="profiles sink / block"):
        RefinerStage(HostStep(FakeRefiner()), layout=LAYOUT)  # no profiles: not the one-engine contract


def test_refiner_text_from_files_dicts_and_objects(tmp_path):
    f = np.random.default_rng(0).standard_normal((1, LT, CT)).astype(np.float32)
    m = np.ones((1, LT), np.float32)
    m[0, -2:] = 0
    np.savez(tmp_path / "p.npz", **{"stage1.features": np.zeros((1, 8, 32), np.float32), "refiner.features": f,
                                    "refiner.mask": m})
    from safetensors.numpy import save_file

    save_file({"stage1.features": np.zeros((1, 8, 32), np.float32), "refiner.features": f, "refiner.mask": m},
              str(tmp_path / "p.safetensors"))
    for v in (tmp_path / "p.npz", str(tmp_path / "p.safetensors"), {"refiner.features": f, "refiner.mask": m}):
        got = refiner_text_from(v)
        assert got is not None and np.array_equal(got[0], f) and np.array_equal(got[1], m), v
    assert refiner_text_from(PromptEmbeddings.zeros(CFG)) is None
    assert refiner_text_from({"text": np.zeros((1, 8, 32))}) is None
    st, _ = new_stage()
    with pytest.raises(ValueError, match="--refiner-max-length 6"):
        st.set_text((np.zeros((1, 4, CT), np.float32), np.ones((1, 4), np.float32)))


# ---------------------------------------------------------------------------------- whole sessions
def camera(T=13, seed=2):
    r = np.random.default_rng(seed)
    return r.standard_normal((T, 20)).astype(np.float32), r.standard_normal((48, T, H, W)).astype(np.float32)


def make_runtime(refiner=True, **kw):
    ex = {**fake_generators(CFG), **fake_refiner(),
          "vae_decoder_first": FakeDecoder(CFG, True), "vae_decoder_next": FakeDecoder(CFG, False)}
    return Runtime(CFG, ex, refiner=refiner, refiner_layout=LAYOUT, **kw)


def prompt(with_refiner=True):
    d = {"stage1.features": np.random.default_rng(5).standard_normal((1, 8, 32)).astype(np.float32)}
    if with_refiner:
        d["refiner.features"] = np.random.default_rng(6).standard_normal((1, LT, CT)).astype(np.float32)
        d["refiner.mask"] = np.ones((1, LT), np.float32)
    return d


def start(rt, with_refiner=True):
    lat = np.random.default_rng(3).standard_normal((1, C, 1, H, W)).astype(np.float32)
    return rt.start(lat, prompt(with_refiner), camera(), seed=11, keep_latents=True)


def test_session_refines_and_refiner_false_passes_latents_through():
    rt = make_runtime()
    assert [type(s).__name__ for s in rt.new_stages()] == ["RefinerStage", "DecoderStage"]
    s = start(rt)
    np.testing.assert_array_equal(s.stages[0].text, prompt()["refiner.features"])  # the prompt's refiner part
    chunks = list(s)
    assert all(c.refined.shape == c.latents.shape for c in chunks)
    assert all(not np.array_equal(c.refined, c.latents) for c in chunks)
    assert set(chunks[1].timings) == {"generator", "refiner", "decoder"}
    off = list(start(make_runtime(refiner=False)))
    assert isinstance(make_runtime(refiner=False).new_stages()[0], PassThroughRefiner)
    for a, b in zip(chunks, off):
        np.testing.assert_array_equal(a.latents, b.latents)  # stage 1 is untouched by the refiner
        assert b.refined is b.latents
    # the decoder decodes the refined latents, so the frames differ too
    assert any(not np.array_equal(a.frames, b.frames) for a, b in zip(chunks, off))


def test_missing_refiner_text_warns_and_uses_zeros():
    with pytest.warns(UserWarning, match="no refiner text"):
        s = start(make_runtime(), with_refiner=False)
    assert not s.stages[0].text.any() and s.stages[0].text_mask.all()


@pytest.mark.parametrize("stop_after", [1, 3])
def test_session_save_resume_equals_uninterrupted_run(tmp_path, stop_after):
    rt = make_runtime()
    want = list(start(rt))
    s = start(rt)
    got = [next(s) for _ in range(stop_after)]
    p = s.save(tmp_path / "run.npz")
    hdr = Session.read_header(p)
    assert hdr["stages"] == ["refiner", "decoder"]
    r = Session.resume(p, make_runtime(), keep_latents=True)
    got += list(r)
    assert len(got) == len(want)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.refined, b.refined)
        np.testing.assert_array_equal(a.frames, b.frames)
    # a session saved with the refiner does not resume without it (and says so)
    with pytest.raises(ValueError, match="carries no state"):
        Session.resume(p, make_runtime(refiner=False))


def test_weight_streaming_budget_reaches_only_streamed_trt_engines():
    from sanawm.engines.tensorrt import TensorRTEngine, apply_weight_streaming_budget, parse_budget
    from sanawm.engines.base import ExecutorError
    from sanawm.runtime.pipeline import engine_options

    class FakeBundle:
        def build_info(self, name, backend):
            return {"weight_streaming": name == "refiner"}

    b = FakeBundle()
    assert engine_options(b, "refiner", "tensorrt_rtx", {"use_cuda_graph": True}, 0.5) == {
        "use_cuda_graph": True, "weight_streaming_budget": 0.5}
    assert engine_options(b, "generator_next", "tensorrt_rtx", {}, 0.5) == {}
    assert engine_options(b, "generator_next", "tensorrt_rtx", {}, None) == {}
    with pytest.raises(ValueError, match="TensorRT plans only"):
        engine_options(b, "refiner", "onnxruntime", {}, 0.5)

    class FakeEngine:
        streamable_weights_size = 1000
        weight_streaming_budget_v2 = None

        def get_weight_streaming_automatic_budget(self):
            return 321

    for spec, want in ((0.25, 250), (400, 400), (5000, 1000), ("auto", 321)):
        e = FakeEngine()
        assert apply_weight_streaming_budget("x", e, spec) == want and e.weight_streaming_budget_v2 == want
    e = FakeEngine()
    e.streamable_weights_size = 0
    with pytest.raises(ExecutorError, match="--weight-streaming"):
        apply_weight_streaming_budget("x", e, 0.5)
    for bad in (1.5, -3, "lots", True):
        with pytest.raises(ExecutorError, match="weight_streaming_budget"):
            TensorRTEngine("x", "x.plan", (), (), weight_streaming_budget=bad)
    assert [parse_budget(t) for t in ("auto", "0.5", "50%", "2G", "1048576")] == ["auto", 0.5, 0.5, 2 * 2**30, 2**20]

    # activate() sets the budget before creating the execution context
    order = []

    class Eng(FakeEngine):
        def __setattr__(self, k, v):
            order.append(k)
            object.__setattr__(self, k, v)

        device_memory_size_v2 = 0

        def create_execution_context(self, strategy):
            order.append("context")
            return None  # stops activate() right after (no CUDA needed)

    from types import SimpleNamespace

    ex = TensorRTEngine("refiner", "x.plan", (), (), weight_streaming_budget=0.5)
    ex.engine = Eng()
    ex._trt = SimpleNamespace(ExecutionContextAllocationStrategy=SimpleNamespace(USER_MANAGED="user"))
    with pytest.raises(ExecutorError, match="create_execution_context failed"):
        ex.activate(SimpleNamespace(stream=0), arena=0, arena_bytes=256)
    assert order == ["weight_streaming_budget_v2", "context"] and ex.weight_streaming_bytes == 500


def test_build_engine_sets_the_weight_streaming_flag():
    from sanawm.export.build import BuildError, set_weight_streaming

    class Cfg:
        flags = []

        def set_flag(self, f):
            self.flags.append(f)

    class TRT:
        __name__ = "tensorrt_rtx"
        __version__ = "1.2"

        class BuilderFlag:
            WEIGHT_STREAMING = "WS"

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 0

    c = Cfg()
    set_weight_streaming(TRT, c, "tensorrt_rtx", strongly_typed=True)
    assert c.flags == ["WS"]
    with pytest.raises(BuildError, match="strongly typed"):
        set_weight_streaming(TRT, Cfg(), "tensorrt", strongly_typed=False)

    class Old:
        __name__, __version__ = "tensorrt", "8.6"

        class BuilderFlag:
            pass

    with pytest.raises(BuildError, match="TensorRT >= 10"):
        set_weight_streaming(Old, Cfg(), "tensorrt", strongly_typed=True)


def test_refiner_stage_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; import sanawm.runtime, sanawm.runtime.refiner_stage, sanawm.engines.tensorrt; "
            "from sanawm.runtime.stages import REFINER_FACTORIES; "
            "assert 'torch' not in sys.modules, 'the run side imported torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
