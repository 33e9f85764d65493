"""FP8 activation-scale rules: ``max`` (amax of every calibration value) or ``percentile:P`` (build side).

``percentile:P`` clips the P-th percentile of |x| over all calibration values of a layer's input, so a handful of
outliers do not stretch the scale for everything else (at E4M3's 3 mantissa bits a scale 10x too wide costs
most of the resolution of typical values). Exact percentiles over a full calibration run would need every value
kept; instead the (seeded, deterministic) calibration loop runs twice: pass 1 finds amax, pass 2 fills a
``HIST_BINS``-bin histogram of |x| over [0, amax], and the percentile is the upper edge of the bin where the
cumulative count reaches P%, within amax / HIST_BINS of the exact value.
"""

from __future__ import annotations

import torch

HIST_BINS = 1 << 14
ACT_SCALE_HELP = "max | percentile:P (0 < P <= 100, e.g. percentile:99.99)"


class ActScaleError(ValueError):
    pass


def parse_act_scale(text: str) -> float | None:
    """None for ``max``, else the percentile P of ``percentile:P``."""
    t = str(text).strip().lower()
    if t == "max":
        return None
    if t.startswith("percentile:"):
        try:
            p = float(t.split(":", 1)[1])
        except ValueError:
            p = -1.0
        if 0.0 < p <= 100.0:
            return p
    raise ActScaleError(f"activation scale rule {text!r} is not understood; use {ACT_SCALE_HELP}")


def act_histogram(x: torch.Tensor, amax: float) -> torch.Tensor:
    """Counts of |x| in ``HIST_BINS`` equal bins over [0, amax] (float64, so big runs count exactly)."""
    a = x.detach().abs().float().flatten()
    return torch.histc(a, bins=HIST_BINS, min=0.0, max=max(amax, 1e-30)).double()


def percentile_from_histogram(hist: torch.Tensor, amax: float, pct: float) -> float:
    """Upper edge of the bin where the cumulative count first reaches ``pct`` percent (amax at 100)."""
    total = float(hist.sum())
    if total == 0.0 or pct >= 100.0:
        return amax
    cdf = torch.cumsum(hist, 0)
    i = int(torch.searchsorted(cdf, torch.tensor(pct / 100.0 * total, dtype=cdf.dtype)))
    return min(amax, (i + 1) * amax / HIST_BINS)


def percentile_pass(q, layers, calibrate, pct: float | None) -> None:
    """Pass 2 of a percentile rule over FP8 wrappers ``layers`` of ``q`` (after the amax pass): histograms, then each
    layer's ``input_clip``. No-op for the ``max`` rule (``pct`` None)."""
    if pct is None:
        return
    layers = list(layers)
    for m in layers:
        m.hist = torch.zeros(HIST_BINS, dtype=torch.float64)
    with torch.no_grad():
        calibrate(q)
    for m in layers:
        m.input_clip = percentile_from_histogram(m.hist, float(m.input_amax), pct)
        m.hist = None
