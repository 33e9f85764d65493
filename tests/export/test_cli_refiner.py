"""sanawm-export writes the ONE refiner engine (tiny, random, ONNX Runtime): a bundle Bundle.open validates, whose
manifest carries the refiner layout and the engine's profiles sink / block, whose weight bytes are the refiner's
parameter bytes (one weight set), and the runtime's RefinerStage over that engine equals the torch AR loop
``sanawm.models.refiner.refine_stream`` (same weights, latents, noise and text) over 5 blocks.

Tolerance: relative RMS error (sanawm.testing.rel_error) <= 1e-4, float32 (as tests/models/test_refiner_export.py).
"""

from __future__ import annotations

import json

import numpy as np
import click
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

from sanawm.bundle import Bundle  # noqa: E402
from sanawm.config import tiny  # noqa: E402
from sanawm.engines import load_executor  # noqa: E402
from sanawm.export.cli import REFINER_ENGINES, main, parse_args  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

TOL = 1e-4
CFG = tiny()
C, H, W = CFG.in_channels, CFG.latent_height, CFG.latent_width
SEED = 3
BLOCKS = 5  # 15 refined frames > 10 history frames: the window fills and slides


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("refiner_bundle") / "bundle"
    assert main(["--random", "--config", "tiny", "--seed", str(SEED), "--out", str(out), "--backends", "onnxruntime",
                 "--engines", ",".join(REFINER_ENGINES)]) == 0
    return out


def test_bundle_has_one_refiner_engine_with_profiles_and_layout(bundle_dir):
    from sanawm.spec_refiner import new_kv_names

    b = Bundle.open(bundle_dir)  # validates paths, hashes, external data, profiles
    assert set(b.engines) == set(REFINER_ENGINES) == {"refiner"}
    e = b.engine("refiner")
    assert e.precision == "fp32"
    r = b.manifest["refiner"]
    assert r["layout"] == {"block_size": 3, "kv_max_frames": 11, "sink_frames": 1, "history_frames": 10,
                           "latent_hw": [H, W], "caption_length": 16, "caption_channels": 24}
    assert r["sigmas"] == [0.909375, 0.725, 0.421875, 0.0] and r["timestep_scale_multiplier"] == 1000.0
    assert r["latent_channels"] == C and r["source"]["random_seed"] == SEED and r["precision"] == "fp32"
    assert r["kv_dtype"] == "float32"
    m = json.loads((bundle_dir / "manifest.json").read_text())["engines"]["refiner"]
    assert [(p["name"], p["dims"]) for p in m["profiles"]] == [("sink", {"n": 1}), ("block", {"n": 3})]
    assert e.state_map == {}  # the carried state lives in the runtime's pool, written by copies
    ins = {t.name: t.shape for t in e.inputs}
    assert ins["latents"] == (1, C, "n", H, W) and ins["kv_valid"] == ((1 + 10) * H * W,)
    k_new = next(t for t in e.outputs if t.name == new_kv_names(0)[0])
    assert k_new.shape[2] == f"n*{H * W}"


def test_bundle_weight_bytes_are_the_parameter_bytes(bundle_dir):
    """One weight set: the ONNX external data holds the refiner's float32 parameters once (within 5%)."""
    core, _ = _torch_core(bundle_dir)
    params = sum(p.numel() * p.element_size() for p in core.parameters())
    params += sum(b.numel() * b.element_size() for b in core.buffers())
    data = sum(f.stat().st_size for f in bundle_dir.glob("*.onnx.data"))
    print(f"refiner bundle weights {data} B vs parameters {params} B (ratio {data / params:.3f})")
    assert abs(data - params) <= 0.05 * params, (data, params)


def _torch_core(bundle_dir):
    from sanawm.models.refiner import RefinerCore, make_tiny_refiner_transformer

    r = json.loads((bundle_dir / "manifest.json").read_text())["refiner"]
    tr = make_tiny_refiner_transformer(r["source"]["random_seed"], in_channels=C, out_channels=C)
    return RefinerCore(tr, fps=r["fps"]).eval(), r


def test_runtime_refiner_stage_on_ort_equals_torch_refine_stream(bundle_dir):
    from sanawm.models.refiner import refine_stream
    from sanawm.runtime.refiner_stage import RefinerStage
    from sanawm.runtime.stages import Chunk

    core, r = _torch_core(bundle_dir)
    ex = {n: load_executor(bundle_dir, n, "onnxruntime") for n in REFINER_ENGINES}
    stage = RefinerStage.from_executors(ex, layout=r)  # default seed 42, host memory pool
    g = np.random.default_rng(0)
    T = 1 + 3 * BLOCKS
    z = g.standard_normal((1, C, T, H, W)).astype(np.float32)
    text = g.standard_normal((1, 16, 24)).astype(np.float32)
    mask = np.ones((1, 16), np.float32)
    mask[:, -5:] = 0
    stage.set_text((text, mask))
    got = []
    for c, (s, e) in enumerate(CFG.chunk_bounds(T)):
        got.append(stage.process(Chunk(c, s, e, np.ascontiguousarray(z[:, :, s:e]))).refined)
    got = np.concatenate(got, axis=2)
    # the stage's noise: block k is the k-th (1, C, 3, H, W) draw of PCG64(42)
    rng = np.random.Generator(np.random.PCG64(42))
    noise = [torch.from_numpy(rng.standard_normal((1, C, 3, H, W), dtype=np.float32)) for _ in range(BLOCKS)]
    want = refine_stream(core, torch.from_numpy(z), torch.from_numpy(text), torch.from_numpy(mask), noise=noise).numpy()
    assert got.shape == want.shape == z.shape
    np.testing.assert_array_equal(got[:, :, :1], z[:, :, :1])  # raw sink frame passed on
    assert rel_error(z[:, :, 1:], got[:, :, 1:]) > 0.05  # the refinement really changes the latents
    errs = [rel_error(want[:, :, 1 + 3 * k: 4 + 3 * k], got[:, :, 1 + 3 * k: 4 + 3 * k]) for k in range(BLOCKS)]
    print("per-block rel err ORT stage vs torch refine_stream:", [f"{e:.2e}" for e in errs])
    assert max(errs) <= TOL, errs
    # the noise matters: another seed gives other latents (so the equality above is not noise-blind)
    other = RefinerStage.from_executors(ex, layout=r, seed=7)
    other.set_text((text, mask))
    o0 = other.process(Chunk(0, 0, 4, np.ascontiguousarray(z[:, :, :4]))).refined
    assert rel_error(got[:, :, 1:4], o0[:, :, 1:]) > 1e-3


def test_session_over_real_refiner_engines_saves_and_resumes(bundle_dir, tmp_path):
    """Fake generator + exported refiner: refined latents differ from stage 1, save/resume identical."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from runtime.fakes import fake_generators

    from sanawm.runtime import Runtime, Session

    r = json.loads((bundle_dir / "manifest.json").read_text())["refiner"]
    ex = {**fake_generators(CFG), **{n: load_executor(bundle_dir, n, "onnxruntime") for n in REFINER_ENGINES}}
    rt = Runtime(CFG, ex, refiner_layout=r, refiner_seed=5)
    g = np.random.default_rng(1)
    prompt = {"text": g.standard_normal((1, 8, 32)).astype(np.float32),
              "refiner.features": g.standard_normal((1, 16, 24)).astype(np.float32), "refiner.mask": np.ones((1, 16), np.float32)}
    cam = (g.standard_normal((10, 20)).astype(np.float32), g.standard_normal((48, 10, H, W)).astype(np.float32))
    lat = g.standard_normal((1, C, 1, H, W)).astype(np.float32)
    want = list(rt.start(lat, prompt, cam, seed=2, keep_latents=True))  # refined latents live in the pool
    assert all(rel_error(c.latents, c.refined) > 1e-3 for c in want)
    s = rt.start(lat, prompt, cam, seed=2)
    first = next(s)
    p = s.save(tmp_path / "s.npz")
    rest = list(Session.resume(p, Runtime(CFG, ex, refiner_layout=r, refiner_seed=5), keep_latents=True))
    for a, b in zip(want, [first] + rest):
        np.testing.assert_array_equal(a.refined, b.refined)


def test_default_engines_and_flags():
    a = parse_args(["--random", "--out", "x"])
    assert all(e in a.engines for e in REFINER_ENGINES) and a.weight_streaming == []
    assert not any(e in parse_args(["--random", "--out", "x", "--no-refiner"]).engines for e in REFINER_ENGINES)
    assert not any(e in parse_args(["--checkpoint", "c.pth", "--out", "x"]).engines for e in REFINER_ENGINES)
    a = parse_args(["--random", "--out", "x", "--backends", "onnxruntime,tensorrt_rtx", "--weight-streaming"])
    assert a.weight_streaming == list(REFINER_ENGINES)
    a = parse_args(["--random", "--out", "x", "--backends", "tensorrt", "--weight-streaming", "generator"])
    assert a.weight_streaming == ["generator"]
    for bad in (["--checkpoint", "c.pth", "--out", "x", "--engines", "refiner"],  # no refiner weights
                ["--random", "--out", "x", "--no-refiner", "--engines", "refiner"],
                ["--random", "--out", "x", "--engines", "refiner_step"],  # the three-engine refiner is gone
                ["--random", "--out", "x", "--weight-streaming"],  # onnxruntime only: nothing to stream
                ["--random", "--out", "x", "--backends", "tensorrt", "--weight-streaming", "nope"]):
        with pytest.raises(click.UsageError):
            parse_args(bad)


def test_weight_streaming_reaches_build_engine(monkeypatch, tmp_path, bundle_dir):
    """--weight-streaming passes weight_streaming=True to build_engine for the listed engines only and keys the
    plan stage on it (fake TensorRT: the real build needs tensorrt / tensorrt_rtx)."""
    import shutil
    import types
    from pathlib import Path

    import sanawm.engines.tensorrt as trt_mod
    import sanawm.export.build as build_mod
    from sanawm.export.build import BuildResult

    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)  # ONNX stages are up to date: only the (fake) plan builds run
    calls = {}

    def fake_build(onnx, plan, *, backend, weight_streaming=False, **kw):
        calls[Path(onnx).stem] = weight_streaming
        Path(plan).write_bytes(b"plan")
        return BuildResult(Path(plan), {"library": backend, "version": "0", "compute_capabilities": ["sm_89"],
                                        "weight_streaming": weight_streaming}, 0.0)

    monkeypatch.setattr(build_mod, "build_engine", fake_build)
    monkeypatch.setattr(trt_mod, "import_trt", lambda b: types.SimpleNamespace(__version__="0"))
    assert main(["--random", "--config", "tiny", "--seed", str(SEED), "--out", str(out), "--backends",
                 "onnxruntime,tensorrt_rtx", "--engines", "refiner,toy", "--weight-streaming", "refiner"]) == 0
    assert calls == {"refiner": True, "toy": False}
    m = json.loads((out / "manifest.json").read_text())["engines"]
    assert m["refiner"]["files"]["tensorrt_rtx"]["build"]["weight_streaming"] is True


@pytest.mark.slow
@pytest.mark.parametrize("precision, lo, hi", [("fp8", 1e-4, 5e-2), ("fp16", 1e-6, 5e-3)])
def test_reduced_precision_refiner_bundle(tmp_path, bundle_dir, precision, lo, hi):
    """--precision fp8 quantizes the refiner engines (calibrated over the AR loop), fp16 runs the same layers in
    FP16 (range-checked over that loop); the stage on them stays within 5e-2 (fp8) / 5e-3 (fp16) of the FP32
    engines and differs from them (the reduced precision is on)."""
    from sanawm.runtime.refiner_stage import RefinerStage
    from sanawm.runtime.stages import Chunk

    out = tmp_path / precision
    assert main(["--random", "--config", "tiny", "--seed", str(SEED), "--out", str(out), "--backends", "onnxruntime",
                 "--precision", precision, "--engines", ",".join(REFINER_ENGINES)]) == 0
    b = Bundle.open(out)
    assert {b.engine(n).precision for n in REFINER_ENGINES} == {precision}
    assert all(b.engine(n).files["onnx"][f"{precision}_layers"] for n in REFINER_ENGINES)
    z = np.random.default_rng(4).standard_normal((1, C, 7, H, W)).astype(np.float32)
    text = np.random.default_rng(5).standard_normal((1, 16, 24)).astype(np.float32)
    res = []
    for d in (bundle_dir, out):
        r = json.loads((d / "manifest.json").read_text())["refiner"]
        st = RefinerStage.from_executors({n: load_executor(d, n, "onnxruntime") for n in REFINER_ENGINES}, layout=r)
        st.set_text((text, np.ones((1, 16), np.float32)))
        res.append(np.concatenate([st.process(Chunk(c, s, e, np.ascontiguousarray(z[:, :, s:e]))).refined
                                   for c, (s, e) in enumerate(CFG.chunk_bounds(7))], axis=2))
    e = rel_error(res[0][:, :, 1:], res[1][:, :, 1:])
    print(f"\n{precision} refiner stage vs FP32 engines over {len(CFG.chunk_bounds(7))} chunks: rel err {e:.2e}")
    assert lo < e <= hi, e


@pytest.mark.slow
def test_runtime_load_uses_the_refiner_unless_disabled(tmp_path, bundle_dir):
    """Runtime.load builds the refiner stage from the bundle's engines and manifest section; refiner=False
    loads no refiner engine and passes latents through. (Adds the generator to a copy of the refiner bundle:
    the refiner stages are skipped as up to date and its manifest section is kept.)"""
    import shutil

    from sanawm.runtime import Runtime
    from sanawm.runtime.refiner_stage import RefinerStage
    from sanawm.runtime.stages import PassThroughRefiner

    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)
    assert main(["--random", "--config", "tiny", "--seed", str(SEED), "--out", str(out), "--backends", "onnxruntime",
                 "--engines", "generator"]) == 0
    b = Bundle.open(out)
    assert set(REFINER_ENGINES) <= set(b.engines) and b.manifest["refiner"]["layout"]["block_size"] == 3
    rt = Runtime.load(out, "onnxruntime", refiner_seed=9)
    st = rt.new_stages()[0]
    assert isinstance(st, RefinerStage) and st.seed == 9 and st.history_frames == 10
    off = Runtime.load(out, "onnxruntime", refiner=False)
    assert not any(n in off.executors for n in REFINER_ENGINES)
    assert isinstance(off.new_stages()[0], PassThroughRefiner)
    g = np.random.default_rng(0)
    cam = (g.standard_normal((7, 20)).astype(np.float32), g.standard_normal((48, 7, H, W)).astype(np.float32))
    lat = g.standard_normal((1, C, 1, H, W)).astype(np.float32)
    prompt = (g.standard_normal((1, CFG.caption_length, CFG.caption_channels)).astype(np.float32),
              np.ones((1, CFG.caption_length), np.float32))
    with pytest.warns(UserWarning, match="no refiner text"):
        s = rt.start(lat, prompt, cam, seed=1, keep_latents=True)
    on = list(s)
    plain = list(off.start(lat, prompt, cam, seed=1, keep_latents=True))
    for a, p in zip(on, plain):
        np.testing.assert_array_equal(a.latents, p.latents)
        assert p.refined is p.latents and rel_error(a.latents, a.refined) > 1e-3


def test_tensorrt_rtx_builds_the_one_refiner_engine_with_both_profiles(tmp_path, bundle_dir):
    """A real TensorRT-RTX AOT build (CPU, no GPU needed) accepts the graph with its symbolic frame axis at both
    profiles (sink n = 1, block n = 3); the manifest records the plan and the profiles."""
    import shutil

    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed")
    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)  # ONNX stage up to date: only the plan is built
    assert main(["--random", "--config", "tiny", "--seed", str(SEED), "--out", str(out), "--backends",
                 "onnxruntime,tensorrt_rtx", "--rtx-targets", "sm_89", "--engines", "refiner"]) == 0
    m = json.loads((out / "manifest.json").read_text())["engines"]["refiner"]
    assert m["files"]["tensorrt_rtx"]["build"]["version"] == trt.__version__
    assert (out / m["files"]["tensorrt_rtx"]["path"]).stat().st_size > 0
    assert [p["name"] for p in m["profiles"]] == ["sink", "block"]
