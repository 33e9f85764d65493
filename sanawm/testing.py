"""Numerical comparison helpers shared by the test-suite and the export checks (numpy only)."""

from __future__ import annotations

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_error(ref, got) -> float:
    """Relative RMS error ||got - ref|| / ||ref|| (0 when both are zero)."""
    r, g = _np(ref), _np(got)
    if r.shape != g.shape:
        raise ValueError(f"shape mismatch: reference {r.shape} vs candidate {g.shape}")
    den = float(np.sqrt(np.mean(r**2)))
    num = float(np.sqrt(np.mean((g - r) ** 2)))
    if den == 0.0:
        return num
    return num / den


def assert_close(name: str, ref, got, rtol: float) -> float:
    """Fail with max-abs and relative-RMS error when ``rel_error(ref, got) > rtol``; returns the error."""
    r, g = _np(ref), _np(got)
    if not np.all(np.isfinite(g)):
        raise AssertionError(f"{name}: candidate has non-finite values")
    err = rel_error(r, g)
    if not err <= rtol:
        raise AssertionError(
            f"{name}: relative RMS error {err:.3e} > {rtol:.1e} (max abs diff {np.max(np.abs(g - r)):.3e})"
        )
    return err
