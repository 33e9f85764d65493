"""The FP16 K/V window's range check over the calibration run: it records what the softmax layers store and
refuses a window the run overflows (so the fp16 default can never store inf)."""

import pytest

torch = pytest.importorskip("torch")

from sanawm.config import tiny  # noqa: E402
from sanawm.export.kv_range import KV_FP16_LIMIT, KVRangeError, check_kv_range, observe_kv  # noqa: E402
from sanawm.models.attention import SoftmaxAttention  # noqa: E402
from sanawm.models.transformer import SanaWMGenerator  # noqa: E402

from tests.models.gen_helpers import make_inputs  # noqa: E402


def _calibrate(model):
    with torch.no_grad():
        model(**make_inputs(model.cfg, 1, 4, seed=0))


def test_observed_kv_is_the_window_values_and_an_overflow_is_refused():
    torch.manual_seed(0)
    model = SanaWMGenerator(tiny()).eval()
    run, seen = observe_kv(_calibrate)
    run(model)
    n_softmax = sum(isinstance(m, SoftmaxAttention) for m in model.modules())
    assert seen["calls"] == n_softmax > 0
    amax = check_kv_range("generator", seen)
    assert 0 < amax < KV_FP16_LIMIT
    assert not any(getattr(m, "_forward_hooks", None) for m in model.modules())  # hooks removed after the run

    with torch.no_grad():  # V is a plain projection: scale it far past FP16's safe range
        for m in model.modules():
            if isinstance(m, SoftmaxAttention):
                m.v_proj_cam.weight.mul_(1e6)
    run, seen = observe_kv(_calibrate)
    run(model)
    with pytest.raises(KVRangeError, match="--kv-dtype fp32"):
        check_kv_range("generator", seen)


def test_a_run_without_softmax_calls_is_not_accepted():
    run, seen = observe_kv(lambda m: None)
    run(torch.nn.Linear(2, 2))
    with pytest.raises(KVRangeError, match="no softmax attention ran"):
        check_kv_range("generator", seen)
