"""Acceptance checks of the generator export (tiny config, CPU): ONNX FP32 / FP8 on ONNX Runtime against the
torch streaming step, ten chunks with state passing through the runtime's own loop, TensorRT-RTX AOT builds,
and single full-size GDN / softmax blocks in FP8.

Tolerances (relative RMS error, ``sanawm.testing.rel_error``):

* FP32 ONNX vs torch, every output incl. every state output: <= 1e-4 (measured ~1e-6).
* Ten chunks, ORT vs torch, every call's velocity, every chunk's latents and committed state: <= 1e-4.
* FP8 graph vs torch with the same fake quantization: <= 1e-3, measured with ORT's quantized activations fed
  to the torch layers ("teacher forced", see ``sanawm.export.blocks.fp8_layer_check``), plus: every Q/DQ
  node of the graph reproduces torch's ``fp8_qdq`` of its own input exactly. The free-running difference is
  printed, not held to 1e-3: FP32 ulp differences upstream of a quantizer flip FP8 codes (1/16 steps) and
  the flips cascade through the chained quantized layers to the FP8-vs-FP32 level (measured ~5e-2); it is
  held to the same loose bound as FP8 vs FP32.
* FP8 vs FP32: printed; velocity must be > 1e-3 (something was quantized) and < FP8_LOOSE (0.3); every other
  output < FP8_LOOSE_STATE (0.5).
* FP16 graph (FP16 weights and GEMMs on the FP8 layers) vs the torch FP16 module, every output incl. state:
  <= 5e-3. Not FP32-tight for the FP8 reason in miniature: an FP32 ulp difference before a Cast to FP16 can
  move the FP16 value by one FP16 ulp (2^-11 ~ 4.9e-4 relative), and chained layers add them up (measured 1.4e-3
  max, on small state tensors; the toy engine, one layer deep, agrees to 2e-8). A wrong layer, weight or cast
  is O(1). FP16 vs FP32: velocity in (1e-6, 1e-2) (measured ~6e-4).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from sanawm.config import StreamingSchedule, full, tiny  # noqa: E402
from sanawm.engines.onnxruntime import OnnxRuntimeExecutor  # noqa: E402
from sanawm.export.blocks import BlockStep, block_feeds, fp8_layer_check, randomize_  # noqa: E402
from sanawm.export.families.generator import generator_calibration, generator_feeds  # noqa: E402
from sanawm.export.half import convert_fp16  # noqa: E402
from sanawm.export.onnx import export_onnx, run_onnx_cpu, run_torch  # noqa: E402
from sanawm.export.quantize import qdq_layers, quantize_fp8  # noqa: E402
from sanawm.models.generator_step import GeneratorStep  # noqa: E402
from sanawm.models.transformer import SanaWMGenerator  # noqa: E402
from sanawm.runtime import Conditioning, GeneratorRunner, NoiseSource, stream_latents  # noqa: E402
from sanawm.spec import generator_step_io  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

FP32_TOL = 1e-4
FP8_TOL = 1e-3
FP16_TOL = 5e-3
FP16_VS_FP32 = 1e-2
FP8_LOOSE = 0.3  # FP8 E4M3 W8A8 vs FP32 velocity / block output on random weights: measured 3-7e-2
# state outputs of small magnitude (FFN tails, GDN states after one chunk) drift more: measured up to 0.14 here
# and 0.30 in bench/export.py (zero incoming state); bound for the max over all outputs:
FP8_LOOSE_STATE = 0.5
NUM_CHUNKS = 10
ENGINES = ("first", "next")


def _feeds_with_state(cfg, first: bool, seed: int) -> dict[str, np.ndarray]:
    """generator_feeds with non-zero carried state (so every state path is exercised, not just zeros)."""
    f = generator_feeds(cfg, first, seed=seed)
    io = generator_step_io(cfg, first)
    rng = np.random.default_rng(seed + 1000)
    for name in set(io.state_map.values()):
        a = 0.3 * rng.standard_normal(io.input(name).shape)
        if name.endswith(("S_kv", "S_z")):
            a = np.abs(a) * 0.2
        f[name] = a.astype(np.float32)
    return f


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    """Tiny generator_first / generator_next exported once in FP32, FP8 (1-chunk calibration) and FP16."""
    cfg = tiny()
    model = randomize_(SanaWMGenerator(cfg), seed=3).eval()
    root = tmp_path_factory.mktemp("gen_export")
    out = {"cfg": cfg, "model": model, "root": root, "seconds": {}}
    for eng in ENGINES:
        first = eng == "first"
        step = GeneratorStep(model, first).eval()
        sample = generator_feeds(cfg, first, seed=7)
        t0 = time.time()
        r32 = export_onnx(step, step.io, root / "fp32" / f"generator_{eng}.onnx", sample_inputs=sample, check=False)
        out["seconds"][f"{eng}/fp32"] = time.time() - t0
        torch.manual_seed(0)  # calibration draws x0 from the global RNG
        t0 = time.time()
        qstep, report = quantize_fp8(step, generator_calibration(cfg, first, chunks=1))
        r8 = export_onnx(qstep, step.io, root / "fp8" / f"generator_{eng}.onnx", sample_inputs=sample, check=False)
        out["seconds"][f"{eng}/fp8"] = time.time() - t0
        t0 = time.time()
        hstep, hrep = convert_fp16(step, generator_calibration(cfg, first, chunks=1))
        r16 = export_onnx(hstep, step.io, root / "fp16" / f"generator_{eng}.onnx", sample_inputs=sample, check=False)
        out["seconds"][f"{eng}/fp16"] = time.time() - t0
        out[eng] = {"step": step, "qstep": qstep, "report": report, "fp32": r32.onnx_path, "fp8": r8.onnx_path,
                    "hstep": hstep, "hreport": hrep, "fp16": r16.onnx_path}
    return out


# ------------------------------------------------------------------------------------------ FP32
@pytest.mark.slow
@pytest.mark.parametrize("eng", ENGINES)
def test_fp32_onnx_matches_torch_step_incl_state(gen, eng):
    cfg, e = gen["cfg"], gen[eng]
    io = e["step"].io
    feeds = _feeds_with_state(cfg, eng == "first", seed=21)
    ref = run_torch(e["step"], io, feeds)
    got = run_onnx_cpu(e["fp32"], feeds)
    errs = {t.name: rel_error(ref[t.name], got[t.name]) for t in io.outputs}
    print(f"\nFP32 generator_{eng} ORT vs torch: max rel err {max(errs.values()):.2e} over {len(errs)} outputs "
          f"(velocity {errs['velocity']:.2e}); export {gen['seconds'][eng + '/fp32']:.0f}s")
    state_outs = set(io.state_map) | {t.name for t in io.outputs if t.name.endswith("_chunk")}
    assert state_outs <= set(errs) and len(state_outs) == len(io.outputs) - 1
    bad = {n: v for n, v in errs.items() if not v <= FP32_TOL}
    assert not bad, bad
    # the state inputs matter: zero state gives a different velocity (so the comparison above covers them)
    zero = dict(feeds, **{n: np.zeros_like(feeds[n]) for n in io.state_map.values()})
    assert rel_error(ref["velocity"], run_onnx_cpu(e["fp32"], zero)["velocity"]) > 100 * FP32_TOL


class TorchExecutor:
    """A GeneratorStep behind the runtime's executor interface (numpy in / out)."""

    def __init__(self, name, step):
        self.name, self.step = name, step
        self.inputs, self.outputs = step.io.inputs, step.io.outputs

    def run(self, feeds):
        return run_torch(self.step, self.step.io, feeds)


class Recorder:
    def __init__(self, ex):
        self.ex, self.name, self.inputs, self.outputs, self.calls = ex, ex.name, ex.inputs, ex.outputs, []

    def run(self, feeds):
        out = self.ex.run(feeds)
        self.calls.append(out["velocity"])
        return out


def _conditioning(cfg, T: int, seed: int) -> Conditioning:
    rng = np.random.default_rng(seed)
    H, W = cfg.latent_height, cfg.latent_width
    cam = np.zeros((T, 20), np.float32)
    for f in range(T):
        a = 0.04 * f
        c2w = np.eye(4, dtype=np.float32)
        c2w[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
        c2w[:3, 3] = [0.1 * f, 0.02 * f, 0.05 * f]
        cam[f, :16] = c2w.reshape(-1)
        cam[f, 16:] = [0.9 * W, 0.9 * W, (W - 1) / 2, (H - 1) / 2]
    mask = np.ones((1, cfg.caption_length), np.float32)
    mask[:, -2:] = 0
    return Conditioning(
        condition_latent=rng.standard_normal((1, cfg.in_channels, 1, H, W)).astype(np.float32),
        text=rng.standard_normal((1, cfg.caption_length, cfg.caption_channels)).astype(np.float32),
        text_mask=mask,
        camera=cam,
        plucker=(0.3 * rng.standard_normal((cfg.plucker_channels, T, H, W))).astype(np.float32),
    )


@pytest.mark.slow
def test_ten_chunks_ort_match_torch_with_state_passing(gen):
    """The runtime's own streaming loop (GeneratorRunner: 4 denoising passes + t = 0 commit per chunk, the
    softmax window ring of cfg.window_chunks) over ORT and over the torch step, side by side: every call's
    velocity, every chunk's latents and every committed state tensor agree to FP32_TOL."""
    cfg = gen["cfg"]
    T = cfg.first_chunk_size + (NUM_CHUNKS - 1) * cfg.chunk_size
    assert cfg.window_chunks(NUM_CHUNKS - 1) == [0, NUM_CHUNKS - 2]  # the window slides past chunk 1
    cond = _conditioning(cfg, T, seed=5)
    noise = np.random.default_rng(6).standard_normal((1, cfg.in_channels, T, cfg.latent_height, cfg.latent_width)).astype(np.float32)
    ort_ex = {e: Recorder(OnnxRuntimeExecutor(f"generator_{e}", gen[e]["fp32"], gen[e]["step"].io.inputs,
                                               gen[e]["step"].io.outputs, gen[e]["step"].io.state_map, device="cpu"))
              for e in ENGINES}
    pt_ex = {e: Recorder(TorchExecutor(f"generator_{e}", gen[e]["step"])) for e in ENGINES}
    r_ort = GeneratorRunner(cfg, ort_ex["first"], ort_ex["next"], StreamingSchedule())
    r_pt = GeneratorRunner(cfg, pt_ex["first"], pt_ex["next"], StreamingSchedule())
    s_ort, s_pt = r_ort.new_state(), r_pt.new_state()
    worst = {"velocity": 0.0, "latents": 0.0, "state": 0.0}
    n = 0
    for a, b in zip(stream_latents(r_pt, cond, NoiseSource.from_array(noise), s_pt),
                    stream_latents(r_ort, cond, NoiseSource.from_array(noise), s_ort)):
        assert a.index == b.index == n
        calls = [(pt_ex[e].calls, ort_ex[e].calls) for e in ENGINES]
        for cp, co in calls:
            assert len(cp) == len(co)
            for vp, vo in zip(cp, co):
                worst["velocity"] = max(worst["velocity"], rel_error(vp, vo))
            cp.clear(), co.clear()
        worst["latents"] = max(worst["latents"], rel_error(a.latents, b.latents))
        dp, do = s_pt.state_dict(), s_ort.state_dict()  # chained state and the window ring, out of the pools
        assert set(dp) == set(do) and s_pt.ring.held == s_ort.ring.held
        for k in dp:
            if k.startswith(("chained/", "window/")):
                worst["state"] = max(worst["state"], rel_error(dp[k], do[k]))
        assert all(v <= FP32_TOL for v in worst.values()), (n, worst)
        n += 1
    assert n == NUM_CHUNKS and s_ort.committed == NUM_CHUNKS
    print(f"\nten chunks ORT vs torch (runtime loop, 50 calls each): max rel err {worst}")
    assert sorted(s_ort.ring.held.values()) == cfg.window_chunks(NUM_CHUNKS)  # evicted what no window needs


# ------------------------------------------------------------------------------------------ FP8
@pytest.mark.slow
@pytest.mark.parametrize("eng", ENGINES)
def test_fp8_graph_matches_torch_fake_quant(gen, eng):
    cfg, e = gen["cfg"], gen[eng]
    io = e["step"].io
    feeds = _feeds_with_state(cfg, eng == "first", seed=31)
    c = fp8_layer_check(e["qstep"], io, e["fp8"], feeds)
    # the graph quantizes exactly the layers torch quantized, with E4M3 Q/DQ
    import onnx

    tags = qdq_layers(onnx.load(str(e["fp8"]), load_external_data=False))
    assert set(tags) == {f"{l}.{k}" for l in e["report"].layers for k in ("input", "weight")}
    assert {v["zero_point_dtype"] for v in tags.values()} == {"FLOAT8E4M3FN"}
    # every activation Q/DQ reproduces torch's fp8_qdq of its own input bit for bit
    inexact = {n: v["qdq_exact"] for n, v in c["layers"].items() if v["qdq_exact"] < 1.0}
    assert not inexact, inexact
    forced = max(c["forced"].values())
    free = max(c["free"].values())
    ref32 = run_torch(e["step"], io, feeds)
    vs32 = {n: rel_error(ref32[n], c["ort"][n]) for n in ref32}
    first_layer = next(iter(c["layers"].values()))
    print(f"\nFP8 generator_{eng}: ORT vs torch fake-quant (teacher forced) max {forced:.2e}; free running max "
          f"{free:.2e} (velocity {c['free']['velocity']:.2e}; first layer pre-quant diff {first_layer['pre_rel']:.1e} "
          f"-> {first_layer['flips']:.1e} of codes flipped); FP8 vs FP32 velocity {vs32['velocity']:.2e}, max "
          f"{max(vs32.values()):.2e}; {len(e['report'].layers)} layers; export+calib {gen['seconds'][eng + '/fp8']:.0f}s")
    assert forced <= FP8_TOL, c["forced"]
    assert free < FP8_LOOSE, c["free"]
    assert 1e-3 < vs32["velocity"] < FP8_LOOSE
    assert max(vs32.values()) < FP8_LOOSE_STATE, vs32


# ------------------------------------------------------------------------------------------ FP16
@pytest.mark.slow
@pytest.mark.parametrize("eng", ENGINES)
def test_fp16_graph_matches_torch_fp16_incl_state(gen, eng):
    cfg, e = gen["cfg"], gen[eng]
    io = e["step"].io
    feeds = _feeds_with_state(cfg, eng == "first", seed=41)
    got = run_onnx_cpu(e["fp16"], feeds)
    ref16 = run_torch(e["hstep"], io, feeds)
    ref32 = run_torch(e["step"], io, feeds)
    errs = {t.name: rel_error(ref16[t.name], got[t.name]) for t in io.outputs}
    vs32 = rel_error(ref32["velocity"], got["velocity"])
    print(f"\nFP16 generator_{eng}: ORT vs torch FP16 max {max(errs.values()):.2e}; FP16 vs FP32 velocity {vs32:.2e}; "
          f"{len(e['hreport'].layers)} layers (= the FP8 set); export {gen['seconds'][eng + '/fp16']:.0f}s")
    assert e["hreport"].layers == e["report"].layers
    bad = {n: v for n, v in errs.items() if not v <= FP16_TOL}
    assert not bad, bad
    assert 1e-6 < vs32 < FP16_VS_FP32


# ------------------------------------------------------------------------------------ TensorRT-RTX
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "fp8"])
@pytest.mark.parametrize("eng", ENGINES)
def test_tensorrt_rtx_builds_tiny_generator(gen, tmp_path, eng, precision):
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed (pip install tensorrt-rtx)")
    from sanawm.export.build import build_engine

    r = build_engine(gen[eng][precision], tmp_path / f"generator_{eng}.plan", backend="tensorrt_rtx",
                     compute_capabilities=["sm_89"])
    size = r.plan_path.stat().st_size
    print(f"\ntensorrt_rtx generator_{eng} {precision}: built in {r.seconds:.1f}s, plan {size / 1e6:.2f} MB")
    assert size > 10_000
    assert r.build["library"] == "tensorrt_rtx" and r.build["version"] == trt.__version__
    assert r.build["compute_capabilities"] == ["sm_89"] and r.build["strongly_typed"]


# ------------------------------------------------------------------------------ full-size blocks
FULL_BLOCKS = {"gdn": 0, "softmax": 3}
FULL_BLOCK_BUDGET_S = 600  # export + check + build per block on 2 cores; skip (with the measure) beyond


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(FULL_BLOCKS))
def test_full_size_block_fp8_exports_and_builds(tmp_path, kind):
    """One full-size block (hidden 2240, 20 x 112 heads, 3 x 880 tokens, softmax window 7 x 880) of the
    generator_next step, random weights, FP8 (2 calibration calls): Q/DQ exact, ORT vs torch fake quant
    (teacher forced) <= FP8_TOL, FP8 vs FP32 reported, TensorRT-RTX build for sm_89 + sm_120."""
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed (pip install tensorrt-rtx)")
    from sanawm.export.build import build_engine

    cfg, idx = full(), FULL_BLOCKS[kind]
    assert cfg.is_softmax_block(idx) == (kind == "softmax")
    t_start = time.time()
    step = BlockStep(cfg, idx, first=False)
    randomize_(step, seed=idx).eval()
    io = step.io

    def calib(q):
        for s in (1, 2):
            run_torch(q, io, block_feeds(cfg, idx, seed=100 + s))

    qstep, report = quantize_fp8(step, calib)
    assert len(report.layers) == 13  # qkv, proj, gate, 4 camera, 3 cross-attn, 2 FFN convs, plucker_proj
    feeds = block_feeds(cfg, idx, seed=7)
    r8 = export_onnx(qstep, io, tmp_path / f"{kind}.onnx", sample_inputs=feeds, check=False)
    c = fp8_layer_check(qstep, io, r8.onnx_path, feeds)
    assert all(v["qdq_exact"] == 1.0 for v in c["layers"].values()), c["layers"]
    forced = max(c["forced"].values())
    ref32 = run_torch(step, io, feeds)
    vs32 = {n: rel_error(ref32[n], c["ort"][n]) for n in ref32}
    print(f"\nfull {kind} block FP8: ORT vs torch fake quant teacher forced {forced:.2e}, free {max(c['free'].values()):.2e}; "
          f"FP8 vs FP32 x.out {vs32['x.out']:.2e}, max {max(vs32.values()):.2e}")
    assert forced <= FP8_TOL, c["forced"]
    assert 1e-3 < vs32["x.out"] < FP8_LOOSE
    if time.time() - t_start > FULL_BLOCK_BUDGET_S:
        pytest.skip(f"export + check took {time.time() - t_start:.0f}s > {FULL_BLOCK_BUDGET_S}s; build not attempted")
    r = build_engine(r8.onnx_path, tmp_path / f"{kind}.plan", backend="tensorrt_rtx",
                     compute_capabilities=["sm_89", "sm_120"])
    size = r.plan_path.stat().st_size
    print(f"full {kind} block tensorrt_rtx sm_89+sm_120 build {r.seconds:.0f}s, plan {size / 1e6:.1f} MB, "
          f"onnx+data {sum(p.stat().st_size for p in [r8.onnx_path] + r8.external_data) / 1e6:.1f} MB")
    assert r.build["version"] == trt.__version__ and r.build["compute_capabilities"] == ["sm_89", "sm_120"]
    # the plan carries the weights: at least the FP8 weight bytes of the 13 quantized layers
    fp8_bytes = sum(step.get_submodule(n).weight.numel() for n in report.layers)
    assert size > fp8_bytes, (size, fp8_bytes)
