"""Range check of an FP16 K/V window over the calibration run (issue 11: the window defaults to fp16 only when
the values it stores fit).

The engine computes K/V in fp32 and casts them to the window's storage type at its boundary; a value beyond
FP16's range would be stored as inf and poison every later chunk's attention. The calibration loop that FP8 /
FP16 / NVFP4 exports run anyway is observed here (forward hooks on the softmax attention layers, whose second
output is exactly what the window stores), so the check costs no extra pass.
"""

from __future__ import annotations

from typing import Callable

from .half import FP16_HEADROOM, FP16_MAX, _amax

KV_FP16_LIMIT = FP16_MAX / FP16_HEADROOM  # the same headroom the FP16 GEMM range check keeps


class KVRangeError(ValueError):
    pass


def observe_kv(calibrate: Callable) -> tuple[Callable, dict]:
    """``calibrate`` wrapped so that it records max |K/V| of every softmax attention call in ``seen["amax"]``."""
    from ..models.attention import SoftmaxAttention

    seen = {"amax": 0.0, "calls": 0}

    def hook(_module, _inputs, out):
        seen["amax"] = max([seen["amax"]] + [_amax(t) for t in out[1].values()])
        seen["calls"] += 1

    def run(module) -> None:
        handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, SoftmaxAttention)]
        try:
            calibrate(module)
        finally:
            for h in handles:
                h.remove()

    return run, seen


def check_kv_range(engine: str, seen: dict) -> float:
    """The observed max |K/V|; refuses an FP16 window the calibration run overflows, naming the fix."""
    if seen["calls"] == 0:
        raise KVRangeError(f"[{engine}] no softmax attention ran during calibration, so the FP16 K/V window is "
                           "unchecked; calibrate over at least one chunk (--calib-chunks) or pass --kv-dtype fp32")
    if not seen["amax"] <= KV_FP16_LIMIT:  # also catches inf / nan
        raise KVRangeError(
            f"[{engine}] the softmax K/V reached {seen['amax']:.4g} over the calibration run, beyond what an FP16 "
            f"window holds safely ({KV_FP16_LIMIT:.0f} = FP16 max / {FP16_HEADROOM:g}); re-export with --kv-dtype fp32"
        )
    return seen["amax"]
