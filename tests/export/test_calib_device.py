"""``--calib-device`` for the streamed generator: accepted with CUDA, the device hooks route only the calibration
loop's own calls, and (on a CUDA machine only) the amax gathered on the GPU equals the CPU's."""

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sanawm.config import tiny  # noqa: E402
from sanawm.export import cli  # noqa: E402
from sanawm.export.streamed import _OnDevice  # noqa: E402


def test_generator_streamed_accepts_calib_device_cuda(tmp_path, monkeypatch):
    from sanawm.export.scale import write_random_checkpoint

    ck = tmp_path / "g.safetensors"
    write_random_checkpoint(tiny(), ck)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the CUDA check
    a = cli.parse_args(["--checkpoint", str(ck), "--config", "tiny", "--engines", "generator", "--streamed", "--fp8",
                        "--calib-device", "cuda", "--out", str(tmp_path / "b")])
    assert a.calib_device == "cuda"


class _Wrapper(nn.Module):  # stands in for GeneratorStep: built by the loop, after the hooks exist
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 1, x


def test_device_hooks_route_only_entry_calls_and_are_removed():
    inner = nn.Linear(3, 3)
    inner.register_buffer("table", torch.ones(2))
    seen = []
    hook = inner.register_forward_pre_hook(lambda m, a: seen.append(a[0].device.type))
    on = _OnDevice(inner, torch.device("cpu"), entry=lambda m: isinstance(m, _Wrapper))
    w = _Wrapper(inner)
    out = w(torch.zeros(1, 3))
    assert isinstance(out, tuple) and len(out) == 2 and all(o.device.type == "cpu" for o in out)
    inner(torch.zeros(1, 3))  # not an entry call: passes through untouched
    on.restore()
    hook.remove()
    assert seen == ["cpu", "cpu"] and inner.table.device.type == "cpu"
    from torch.nn.modules import module as M

    assert not any(getattr(h, "__name__", "") in ("inputs", "outputs") for h in M._global_forward_pre_hooks.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (not run on the CPU-only CI)")
def test_generator_cuda_calibration_equals_cpu(tmp_path):
    from sanawm.export.families.generator import generator_calibration
    from sanawm.export.families.generator_streamed import _step_of, ghost_engine, weight_source
    from sanawm.export.scale import write_random_checkpoint
    from sanawm.export.streamed import quantize_streamed

    cfg = tiny()
    ck = tmp_path / "g.safetensors"
    write_random_checkpoint(cfg, ck)
    amax = {}
    for dev in ("cpu", "cuda"):
        eng = ghost_engine(cfg, "float32")
        rep = quantize_streamed(eng, weight_source(ck, eng), generator_calibration(cfg, None, 1), device=dev,
                                entry=_step_of(eng))
        assert all(b.device.type == "cpu" for b in eng.buffers())
        amax[dev] = rep.input_amax
    for n, v in amax["cpu"].items():
        assert amax["cuda"][n] == pytest.approx(v, rel=1e-3), n
