"""Host-memory adapters: any numpy step function as an executor of the one-engine generator contract.

The runtime drives a single ``generator`` engine with profiles ``first`` / ``next`` and the Euler output
(``sanawm.spec.generator_engine_io``). The torch reference and the tests' fake engines come as two
fixed-shape step functions (``GeneratorStep(first=True)`` without window inputs, ``GeneratorStep(first=False)``)
returning velocity but no Euler output. ``GeneratorPair`` presents such a pair as that one engine, in host
memory, computing ``latents.out = latents + dt * velocity`` in float32 exactly as the exported engine does;
so the same runtime code runs the torch reference, the fakes and the bundle's engine.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..config import GeneratorConfig
from ..spec import EULER_INPUT, EULER_OUTPUT, generator_engine_io, generator_profiles
from .base import Executor, ExecutorError


def euler_update(latents: np.ndarray, dt: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """latents + dt * velocity per frame, float32 (``dt`` [1, n], tensors [1, C, n, H, W])."""
    d = np.asarray(dt, np.float32).reshape(1, 1, -1, 1, 1)
    return (np.asarray(latents, np.float32) + d * np.asarray(velocity, np.float32)).astype(np.float32)


class HostStep(Executor):
    """Any object with ``name``, ``inputs``, ``outputs`` and ``run(feeds)`` (a fake, a torch module wrapper) as an
    executor with ``run_bound`` over host buffers."""

    backend = "host"

    def __init__(self, step):
        super().__init__(getattr(step, "name", type(step).__name__), tuple(step.inputs), tuple(step.outputs),
                         getattr(step, "state_map", None))
        self.step = step

    def _run(self, feeds, profile=None):
        return self.step.run(feeds)


def bound(executor):
    """``executor`` itself when it binds pool buffers (``run_bound``), else a ``HostStep`` around it."""
    return executor if hasattr(executor, "run_bound") else HostStep(executor)


class GeneratorPair(Executor):
    """Two fixed-shape step functions (objects with ``inputs`` and ``run(feeds)``) as the one generator engine."""

    backend = "host"

    def __init__(self, cfg: GeneratorConfig, first, next_, name: str = "generator"):
        io = generator_engine_io(cfg)
        super().__init__(name, io.inputs, io.outputs, io.state_map, generator_profiles(cfg))
        self.first, self.next = first, next_
        for prof, ex in (("first", first), ("next", next_)):
            want = {t.name: t.shape for t in self.contract(prof).inputs}
            for t in ex.inputs:
                if t.name not in want or tuple(t.shape) != tuple(want[t.name]):
                    raise ExecutorError(
                        f"engine {getattr(ex, 'name', prof)!r}: input {t.name!r} {list(t.shape)} does not fit the "
                        f"generator contract at profile {prof!r} ({list(want.get(t.name, []))}); the two graphs come "
                        "from another config: rebuild the bundle"
                    )

    def _run(self, feeds: Mapping[str, np.ndarray], profile: str | None = None) -> dict[str, np.ndarray]:
        ex = self.first if profile == "first" else self.next
        own = {t.name for t in ex.inputs}
        out = dict(ex.run({k: v for k, v in feeds.items() if k in own}))
        io = self.contract(profile)
        for t in io.outputs:  # outputs the fixed graph lacks (none today besides the Euler output)
            if t.name not in out and t.name != EULER_OUTPUT:
                raise ExecutorError(f"engine {getattr(ex, 'name', profile)!r} returned no {t.name!r}")
        out[EULER_OUTPUT] = euler_update(feeds["latents"], feeds[EULER_INPUT], out["velocity"])
        return out
