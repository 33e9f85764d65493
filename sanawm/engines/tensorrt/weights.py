"""TensorRT weight streaming: budget specs (CLI and API spellings) applied to a deserialized engine."""

from __future__ import annotations

from ..base import ExecutorError


def check_budget_spec(name: str, budget) -> None:
    """Reject a malformed ``weight_streaming_budget`` before any GPU work."""
    if budget is None or (isinstance(budget, str) and budget == "auto"):
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ExecutorError(
            f"engine {name!r}: weight_streaming_budget must be bytes (int), a fraction in (0, 1] (float) or 'auto'; "
            f"got {budget!r}"
        )
    if isinstance(budget, float) and not 0.0 < budget <= 1.0:
        raise ExecutorError(
            f"engine {name!r}: a fractional weight_streaming_budget must lie in (0, 1] (share of the streamable "
            f"weights kept on the device); got {budget}; pass bytes as an int"
        )
    if isinstance(budget, int) and budget < 0:
        raise ExecutorError(f"engine {name!r}: weight_streaming_budget must be >= 0 bytes; got {budget}")


def parse_budget(text: str) -> int | float | str:
    """CLI spelling of a budget: ``auto``, ``0.5`` (fraction), ``50%``, ``2G`` / ``512M`` / ``1048576`` (bytes)."""
    t = str(text).strip().lower()
    if t == "auto":
        return "auto"
    if t.endswith("%"):
        return float(t[:-1]) / 100.0
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    if "." in t:
        return float(t)
    return int(t)


def apply_weight_streaming_budget(name: str, engine, budget) -> int:
    """Set ``engine.weight_streaming_budget_v2`` from a budget spec; returns the bytes set.

    Must run after deserialization and before ``create_execution_context`` (TensorRT reads the budget when
    the context is created). A plan built without weight streaming has no streamable weights: that is an
    error naming the fix, not a silent no-op.
    """
    check_budget_spec(name, budget)
    total = int(getattr(engine, "streamable_weights_size", 0) or 0)
    if total <= 0:
        raise ExecutorError(
            f"engine {name!r}: weight_streaming_budget={budget!r} was given but the plan has no streamable weights "
            "(built without weight streaming); rebuild it with `sanawm-export ... --weight-streaming` or drop the budget"
        )
    if budget == "auto":
        nbytes = int(engine.get_weight_streaming_automatic_budget())
    elif isinstance(budget, float):
        nbytes = int(total * budget)
    else:
        nbytes = min(int(budget), total)
    engine.weight_streaming_budget_v2 = nbytes
    return nbytes
