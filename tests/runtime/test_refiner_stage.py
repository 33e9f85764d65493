"""Refiner stage on numpy fake engines: block/chunk alignment, sink once, per-block seeded noise, history
chaining and trim, save/resume equality (stage and whole session), ``refiner=False``, text plumbing,
weight-streaming option plumbing (torch-free)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from sanawm.config import tiny
from sanawm.runtime import PromptEmbeddings, Runtime, Session
from sanawm.runtime.refiner_stage import RefinerStage, refiner_text_from
from sanawm.runtime.stages import Chunk, PassThroughRefiner
from sanawm.spec import TensorSpec

from .fakes import FakeDecoder, fake_generators

CFG = tiny()
C, H, W = CFG.in_channels, CFG.latent_height, CFG.latent_width
S = H * W
KV_MAX, HIST = 5, 4  # 1 sink frame + 4 history frames: the window trims after the 2nd block
LT, CT, HEADS, D = 6, 5, 1, 2
SIGMAS = (0.909375, 0.725, 0.421875, 0.0)
LAYOUT = {"layout": {"block_size": 3, "kv_max_frames": KV_MAX, "sink_frames": 1}, "sigmas": list(SIGMAS),
          "timestep_scale_multiplier": 1000.0}


def _f(name, shape, dtype="float32"):
    return TensorSpec(name, dtype, tuple(shape))


class _Fake:
    def __init__(self, name, inputs, outputs, state_map=None):
        self.name, self.inputs, self.outputs, self.state_map = name, tuple(inputs), tuple(outputs), dict(state_map or {})
        self.calls: list[dict] = []

    def run(self, feeds):
        assert set(feeds) == {t.name for t in self.inputs}, (self.name, sorted(feeds))
        for t in self.inputs:
            a = feeds[t.name]
            assert a.dtype == np.dtype(t.dtype) and a.shape == t.shape, (self.name, t.name, a.dtype, a.shape)
        self.calls.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.fn(feeds)


def fake_refiner():
    """Fake sink/step/capture with refiner_io's contract (1 layer). The history K holds frame index + 1 per
    token, so the window content is readable; the velocity depends on x, sink, history, text and timestep."""
    text = [_f("text", (1, LT, CT)), _f("text_mask", (1, LT))]
    kv = [_f("l0.sink_k", (1, HEADS, S, D)), _f("l0.sink_v", (1, HEADS, S, D)),
          _f("l0.hist_k", (1, HEADS, HIST * S, D)), _f("l0.hist_v", (1, HEADS, HIST * S, D))]
    common = [_f("frame_pos", (3,), "int64"), _f("sink_pos", (1,), "int64"), *text, _f("hist_valid", (HIST * S,))]
    sink = _Fake("refiner_sink", [_f("latents", (1, C, 1, H, W)), _f("sink_pos", (1,), "int64"), *text], kv[:2])
    sink.fn = lambda f: {"l0.sink_k": np.full((1, HEADS, S, D), f["latents"].mean() + 1, np.float32),
                         "l0.sink_v": np.full((1, HEADS, S, D), f["text"].mean(), np.float32)}
    step = _Fake("refiner_step", [_f("latents", (1, C, 3, H, W)), _f("timestep", (1,)), *common, *kv],
                 [_f("velocity", (1, C, 3, H, W))])

    def velocity(f):
        hist = float((f["l0.hist_k"][0, 0, :, 0] * f["hist_valid"]).sum())
        extra = 0.01 * hist + 0.1 * float(f["l0.sink_k"].mean()) + 0.05 * float(f["l0.sink_v"].mean())
        extra += 1e-4 * float(f["timestep"][0]) + 0.01 * float(f["sink_pos"][0])
        return {"velocity": (0.5 * f["latents"] + np.float32(extra)).astype(np.float32)}

    step.fn = velocity
    sm = {"hist_valid.out": "hist_valid", "l0.hist_k.out": "l0.hist_k", "l0.hist_v.out": "l0.hist_v"}
    cap = _Fake("refiner_capture", [_f("latents", (1, C, 3, H, W)), *common, *kv],
                [_f("hist_valid.out", (HIST * S,)), _f("l0.hist_k.out", (1, HEADS, HIST * S, D)),
                 _f("l0.hist_v.out", (1, HEADS, HIST * S, D))], sm)

    def capture(f):
        n = 3 * S
        tok = np.repeat(f["frame_pos"].astype(np.float32) + 1, S)
        new_k = np.broadcast_to(tok[None, None, :, None], (1, HEADS, n, D))
        new_v = np.broadcast_to(f["latents"].mean(), (1, HEADS, n, D))
        return {"hist_valid.out": np.concatenate([f["hist_valid"], np.ones(n, np.float32)])[n:],
                "l0.hist_k.out": np.concatenate([f["l0.hist_k"], new_k], 2)[:, :, n:].astype(np.float32),
                "l0.hist_v.out": np.concatenate([f["l0.hist_v"], new_v], 2)[:, :, n:].astype(np.float32)}

    cap.fn = capture
    return {"refiner_sink": sink, "refiner_step": step, "refiner_capture": cap}


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
    # sink captured once, from raw frame 0 at position 0
    assert len(ex["refiner_sink"].calls) == 1
    assert np.array_equal(ex["refiner_sink"].calls[0]["latents"], z[:, :, :1])
    assert ex["refiner_sink"].calls[0]["sink_pos"].tolist() == [0]
    # 3 Euler steps per block at sigma x 1000, then one capture; block k = frames [1+3k, 4+3k)
    steps, caps = ex["refiner_step"].calls, ex["refiner_capture"].calls
    assert len(steps) == 12 and len(caps) == 4
    ts = [np.float32(s * 1000.0) for s in SIGMAS[:3]]
    assert [c["timestep"][0] for c in steps[:3]] == ts
    assert [c["frame_pos"].tolist() for c in caps] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    # the first step of block k starts from (1 - s0) z + s0 eps_k, eps_k the k-th draw of PCG64(42)
    rng = np.random.Generator(np.random.PCG64(42))
    for k in range(4):
        eps = rng.standard_normal((1, C, 3, H, W), dtype=np.float32)
        clean = z[:, :, 1 + 3 * k: 4 + 3 * k]
        s0 = float(np.float32(SIGMAS[0]))  # the float32 sigma, as the torch oracle's scheduler holds it
        want = ((1.0 - s0) * clean + s0 * eps).astype(np.float32)
        np.testing.assert_array_equal(steps[3 * k]["latents"], want)
        np.testing.assert_array_equal(caps[k]["latents"], out[k][:, :, -3:])  # capture sees the refined block


def test_history_chains_through_capture_and_trims_to_kv_max():
    st, ex = new_stage()
    for c in chunks_of(clip()):
        st.process(c)
    caps = ex["refiner_capture"].calls
    for k, call in enumerate(caps):
        hist_frames = min(3 * k, HIST)
        # sink re-rotated just before the history window: block_start - history_frames - sink
        assert call["sink_pos"].tolist() == [1 + 3 * k - hist_frames - 1], k
        valid = call["hist_valid"]
        assert valid.sum() == hist_frames * S and (valid[: (HIST - hist_frames) * S] == 0).all()  # right-aligned
        # the window holds the last `hist_frames` refined frames (token value = frame + 1), oldest first
        held = call["l0.hist_k"][0, 0, (HIST - hist_frames) * S:, 0].reshape(hist_frames, S)[:, 0]
        assert held.tolist() == [float(f + 1) for f in range(1 + 3 * k - hist_frames, 1 + 3 * k)], k
        for s_call in ex["refiner_step"].calls[3 * k: 3 * k + 3]:  # the step reads the same window
            np.testing.assert_array_equal(s_call["l0.hist_k"], call["l0.hist_k"])
    assert st.hist_frames == HIST and st.blocks_done == 4


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
    return rt.start(lat, prompt(with_refiner), camera(), seed=11)


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
    r = Session.resume(p, make_runtime())
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
            return {"weight_streaming": name.startswith("refiner_")}

    b = FakeBundle()
    assert engine_options(b, "refiner_step", "tensorrt_rtx", {"use_cuda_graph": True}, 0.5) == {
        "use_cuda_graph": True, "weight_streaming_budget": 0.5}
    assert engine_options(b, "generator_next", "tensorrt_rtx", {}, 0.5) == {}
    assert engine_options(b, "generator_next", "tensorrt_rtx", {}, None) == {}
    with pytest.raises(ValueError, match="TensorRT plans only"):
        engine_options(b, "refiner_step", "onnxruntime", {}, 0.5)

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

    ex = TensorRTEngine("refiner_step", "x.plan", (), (), weight_streaming_budget=0.5)
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
