"""The caller's environment for plan backends (library version, GPU) and compute-capability spelling."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


def normalize_cc(cc: Any) -> str:
    """Compute capability in one spelling: ``(8, 9)``, ``"8.9"``, ``"89"``, ``"sm89"``, ``"SM_89"`` -> ``"sm_89"``."""
    if cc is None:
        raise ValueError("compute capability is None")
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"sm_{int(cc[0])}{int(cc[1])}"
    s = str(cc).strip().lower().replace("sm_", "").replace("sm", "")
    m = re.fullmatch(r"(\d+)\.(\d)", s)
    if m:
        return f"sm_{m.group(1)}{m.group(2)}"
    if re.fullmatch(r"\d{2,3}", s):
        return f"sm_{s}"
    raise ValueError(f"cannot read compute capability {cc!r}; expected e.g. (8, 9), '8.9' or 'sm_89'")


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


@dataclass(frozen=True)
class BackendEnv:
    """What the caller's machine offers for one plan backend (compared with a plan's recorded build).

    This machine's: ``sanawm.engines.tensorrt.detect_environment(backend)``.
    """

    backend: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # library version, e.g. "11.4.0.106" / "1.7.1.116"
    compute_capability: str | None = None  # e.g. "sm_89"; None = do not check
    gpu_name: str | None = None
