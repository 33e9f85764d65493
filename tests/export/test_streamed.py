"""Memory-bounded (streamed) export: safetensors read tensor by tensor, ghost parameters, block-streamed FP8
calibration equal to the whole-model one, streamed graphs equal to the torch module on ONNX Runtime, and (slow) peak
RSS that does not grow with depth at the generator's full width."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from sanawm.export.onnx import random_inputs, run_onnx_cpu, run_torch  # noqa: E402
from sanawm.export.quantize import quantize_fp8, quantizers  # noqa: E402
from sanawm.export.streamed import export_streamed, quantize_streamed  # noqa: E402
from sanawm.export.weights_stream import (  # noqa: E402
    SafetensorsReader,
    StreamError,
    WeightSource,
    ghost_parameters_,
    meta_parameters,
    repeated_units,
    write_safetensors,
)
from sanawm.spec import StepIO, TensorSpec  # noqa: E402
from sanawm.testing import rel_error  # noqa: E402

FP32_TOL = 1e-5  # streamed FP32 graph vs torch: same maths, ORT vs torch accumulation order
FP8_FORCED_TOL = 1e-3  # teacher-forced FP8 graph vs fake quant, as the export pipeline gates it


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, h):
        return h + self.fc2(torch.nn.functional.gelu(self.fc1(h)))


class Stack(nn.Module):
    """Embed -> 3 blocks (ModuleList: the streamed units) -> head, with an FP8 policy and a real buffer."""

    fp8_quantizable = ("blocks.*.fc*",)

    def __init__(self, width=32, depth=3):
        super().__init__()
        self.embed = nn.Linear(16, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 8)
        self.register_buffer("shift", torch.linspace(-1, 1, width))  # computed in __init__, not in checkpoints

    def forward(self, x):
        h = self.embed(x) + self.shift
        for b in self.blocks:
            h = b(h)
        return (self.head(h),)


def stack_io():
    return StepIO((TensorSpec("x", "float32", (4, 16)),), (TensorSpec("y", "float32", (4, 8)),), {})


@pytest.fixture()
def stack_ckpt(tmp_path):
    torch.manual_seed(0)
    real = Stack().eval()
    path = tmp_path / "stack.safetensors"
    write_safetensors(path, [(k, tuple(v.shape), torch.float32, (lambda v=v: v)) for k, v in real.state_dict().items()
                             if k != "shift"])
    return real, path


def ghost_stack():
    with meta_parameters():
        m = Stack().eval()
    assert all(p.device.type == "meta" for p in m.parameters()) and m.shift.device.type == "cpu"
    ghost_parameters_(m)
    return m


def test_safetensors_reader_round_trip_and_errors(tmp_path):
    a, b = torch.randn(3, 5), torch.randn(7).to(torch.bfloat16)
    p = tmp_path / "t.safetensors"
    write_safetensors(p, [("a", (3, 5), torch.float32, lambda: a), ("b", (7,), torch.bfloat16, lambda: b)])
    r = SafetensorsReader(p)
    assert r.shape("a") == (3, 5) and r.nbytes("b") == 14
    torch.testing.assert_close(r.get("a"), a, rtol=0, atol=0)
    torch.testing.assert_close(r.get("b"), b.float(), rtol=0, atol=0)
    safetensors = pytest.importorskip("safetensors.torch")  # the file is a standard safetensors file
    torch.testing.assert_close(safetensors.load_file(str(p))["a"], a, rtol=0, atol=0)
    with pytest.raises(StreamError, match="no tensor 'c'"):
        r.get("c")
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(StreamError, match="truncated"):
        SafetensorsReader(p).get("b")
    with pytest.raises(StreamError, match="not a readable safetensors"):
        (tmp_path / "x.safetensors").write_bytes(b"\xff" * 12)
        SafetensorsReader(tmp_path / "x.safetensors")


def test_ghost_parameters_hold_no_memory_and_mismatches_are_named(stack_ckpt, tmp_path):
    m = ghost_stack()
    for p in m.parameters():
        assert p.untyped_storage().nbytes() <= 4  # one element, whatever the shape
    assert [n for n, _ in repeated_units(m)] == ["blocks.0", "blocks.1", "blocks.2"]
    _, path = stack_ckpt
    small = tmp_path / "small.safetensors"
    write_safetensors(small, [("embed.weight", (32, 16), torch.float32, lambda: torch.zeros(32, 16))])
    with pytest.raises(StreamError, match="lacks .* weights"):
        WeightSource(SafetensorsReader(small), m)
    wide = Stack(width=48)
    wp = tmp_path / "wide.safetensors"
    write_safetensors(wp, [(k, tuple(v.shape), torch.float32, (lambda v=v: v)) for k, v in wide.state_dict().items()])
    with pytest.raises(StreamError, match="other shapes"):
        WeightSource(SafetensorsReader(wp), m)


def test_streamed_fp32_export_equals_torch(stack_ckpt, tmp_path):
    real, path = stack_ckpt
    m = ghost_stack()
    src = WeightSource(SafetensorsReader(path), m)
    io = stack_io()
    out = export_streamed(m, io, tmp_path / "fp32" / "stack.onnx", src, sample_inputs=random_inputs(io, 1))
    feeds = random_inputs(io, 2)
    assert rel_error(run_torch(real, io, feeds)["y"], run_onnx_cpu(out, feeds)["y"]) < FP32_TOL
    assert all(p.untyped_storage().nbytes() <= 4 for p in m.parameters())  # still ghosts: nothing was loaded into m


def test_block_streamed_fp8_calibration_and_graph(stack_ckpt, tmp_path):
    real, path = stack_ckpt
    io = stack_io()

    def calib(q):
        for s in range(4):
            run_torch(q, io, random_inputs(io, seed=50 + s))

    m = ghost_stack()
    src = WeightSource(SafetensorsReader(path), m)
    loads = []
    for u, unit in repeated_units(m):  # how often each block ran, and with real weights (hook runs before the drop)
        unit.register_forward_hook(lambda mod, a, o, u=u: loads.append((u, mod.fc1.weight.untyped_storage().nbytes())))
    rep = quantize_streamed(m, src, calib)
    q_ref, rep_ref = quantize_fp8(real, calib)  # the whole-model path
    assert rep.layers == rep_ref.layers
    for n in rep.layers:  # the same calibration, streamed: same amax and weight scales
        assert rep.input_amax[n] == pytest.approx(rep_ref.input_amax[n], rel=1e-6)
        torch.testing.assert_close(quantizers(m)[n].weight_scale, quantizers(q_ref)[n].weight_scale)
    assert len(loads) == 3 * 4 and all(nb > 4 for _, nb in loads)  # each block loaded (real) for each call
    assert all(p.untyped_storage().nbytes() <= 4 for p in m.parameters())  # and dropped after

    out = export_streamed(m, io, tmp_path / "fp8" / "stack.onnx", src, sample_inputs=random_inputs(io, 1))
    from sanawm.export.blocks import fp8_layer_check

    chk = fp8_layer_check(q_ref, io, out, random_inputs(io, 3))
    assert max(chk["forced"].values()) < FP8_FORCED_TOL, chk["forced"]
    assert min(v["qdq_exact"] for v in chk["layers"].values()) > 0.99


# ------------------------------------------------------------------------------------------ full width
DEPTHS = (1, 2, 4)
LATENT_HW = (2, 4)  # full width (2240), small latents: calibration compute stays small, weights are full size
RSS_GROWTH_PER_BLOCK = 0.10  # of one block's weights (issue 13)


@pytest.mark.slow
def test_full_width_streamed_fp8_peak_rss_and_ort(tmp_path):
    """Depth-reduced full-width generators (1, 2, 4 blocks) exported FP8 in subprocesses: peak RSS grows by at most
    10% of one block's weights per added block; each graph runs on ORT and matches the torch fake quant. Fixed
    ``next``-chunk shapes (the symbolic frame axis doubles the trace time and changes no weight path)."""
    from sanawm.config import full
    from sanawm.export import scale
    from sanawm.export.blocks import fp8_layer_check
    from sanawm.spec import generator_profiles

    cfg4 = scale.depth_reduced(full(), max(DEPTHS), LATENT_HW)
    ckpt = tmp_path / "gen.safetensors"
    scale.write_random_checkpoint(cfg4, ckpt, seed=0)
    facts = {}
    for k in DEPTHS:
        out = tmp_path / f"d{k}"
        r = subprocess.run([sys.executable, "-m", "sanawm.export.scale", str(ckpt), str(out), str(k), *map(str, LATENT_HW),
                            "fp8", "0", "fixed"], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        facts[k] = json.loads(r.stdout.strip().splitlines()[-1])
        # the graph against the torch fake quant: same wrappers, real weights, the graph's own activation scales
        cfg = scale.depth_reduced(full(), k, LATENT_HW)
        eng = scale.ghost_generator(cfg)
        src = WeightSource(SafetensorsReader(ckpt), eng, scale.GENERATOR_PREFIX)
        from sanawm.export.streamed import calibrate_streamed, prepare_fp8_inplace, select_quantizable

        names = select_quantizable(eng)
        prepare_fp8_inplace(eng, names)
        calibrate_streamed(eng, src, None, names)  # weight scales from the real weights
        import onnx
        from onnx import numpy_helper

        g = onnx.load(str(out / "generator.onnx"), load_external_data=False)
        inits = {t.name: t for t in g.graph.initializer}
        for q in quantizers(eng).values():
            q.input_scale = torch.from_numpy(numpy_helper.to_array(inits[f"{q.qname}.input.scale"]).copy())
            q.mode = "quant"
        src.materialize_(list(src.params))
        from sanawm.export.families.generator import generator_engine_feeds

        io = eng.io.concrete(generator_profiles(cfg)["next"])
        chk = fp8_layer_check(eng, io, out / "generator.onnx", generator_engine_feeds(cfg, "next", seed=11))
        facts[k]["forced_rel_error"] = max(chk["forced"].values())
        assert facts[k]["forced_rel_error"] < FP8_FORCED_TOL, (k, chk["forced"])
        del eng, src
    block = facts[1]["block0_weight_bytes"]
    print(json.dumps(facts, indent=1))
    for a, b in zip(DEPTHS, DEPTHS[1:]):
        growth = (facts[b]["peak_rss_bytes"] - facts[a]["peak_rss_bytes"]) / (b - a)
        assert growth <= RSS_GROWTH_PER_BLOCK * block, (a, b, growth / block, facts)
    assert facts[4]["peak_rss_bytes"] < 4 * block  # far below the 4 blocks' weights (+ overhead)
