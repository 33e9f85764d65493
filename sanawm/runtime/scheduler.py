"""The distilled streaming loop of SANA-WM stage 1 over the generator engine (numpy only).

Per chunk c with latent frames [s, e) (sana-wm-streaming.md 1.2-1.5):

    x = clip noise[:, :, s:e]; chunk 0: frame 0 := condition latent        (uploaded once per chunk)
    for t_i in schedule.timesteps (1000, 960, 889, 727), CFG 1:
        timestep = t_i per frame (condition frame: 0); dt = sigma_next - sigma per frame (0 when clean)
        x <- engine(x, timestep, dt, ..., state).latents.out   # x + dt * v inside the engine; state read only
    state <- engine(x, t = 0, dt = 0, ..., state) state outputs    # commit pass; its velocity is discarded
    yield x                                                         # clean latents, still in the pool

One engine serves both chunk lengths: profile ``first`` (condition frame + 3, all-masked window) for chunk 0,
``next`` after. Every tensor lives in the session's ``GeneratorStatePool`` where the engine runs; only the
chunk's noise, camera inputs and per-pass [1, n] vectors cross the host. Noise, timesteps and the pool can be
injected, so the loop can be compared with the torch reference. Arithmetic runs in float32 (the release rounds
latents to bf16 after every step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from ..config import GeneratorConfig, StreamingSchedule
from ..spec import StepIO, TensorSpec, generator_engine_io, generator_step_io
from .noise import NoiseSource
from .state import GeneratorStatePool


class Executor(Protocol):
    """What the runtime needs from an engine (``sanawm.engines``): named I/O, profiles and ``run_bound``."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run_bound(self, bindings: dict, profile: str | None = None) -> None: ...


def check_executor(executor: Executor, io: StepIO) -> None:
    """Raise ValueError when an engine's inputs/outputs do not match the contract the config implies."""
    name = getattr(executor, "name", "?")
    for kind, have, want in (("input", executor.inputs, io.inputs), ("output", executor.outputs, io.outputs)):
        have_d = {t.name: tuple(t.shape) for t in have}
        want_d = {t.name: tuple(t.shape) for t in want}
        missing = sorted(set(want_d) - set(have_d))
        extra = sorted(set(have_d) - set(want_d))
        wrong = sorted(n for n in set(want_d) & set(have_d) if have_d[n] != want_d[n])
        if missing or extra or wrong:
            detail = []
            if missing:
                detail.append(f"missing {kind}s {missing[:5]}")
            if extra:
                detail.append(f"unexpected {kind}s {extra[:5]}")
            if wrong:
                detail.append("; ".join(f"{n}: engine {have_d[n]} vs config {want_d[n]}" for n in wrong[:3]))
            raise ValueError(
                f"engine {name} does not match the bundle's generator config ({', '.join(detail)}); "
                "the bundle's manifest and engines are out of step: rebuild the bundle"
            )


def sigma_next(sigma: np.ndarray, schedule_sigmas: Sequence[float]) -> np.ndarray:
    """Per-token next sigma: the largest schedule sigma strictly below ``sigma - 1e-6`` (0 if none).

    Same rule as diffusers' ``FlowMatchEulerDiscreteScheduler.step`` with ``per_token_timesteps``.
    """
    sig = np.asarray(schedule_sigmas, dtype=np.float32)  # includes the terminal 0
    lower = sig[None, :] < (sigma[:, None] - np.float32(1e-6))  # [n, K]
    return np.where(lower, sig[None, :], np.float32(0.0)).max(axis=1).astype(np.float32)


def euler_step(x: np.ndarray, v: np.ndarray, timestep: np.ndarray, schedule_sigmas: Sequence[float]) -> np.ndarray:
    """x <- x + (sigma_next - sigma) * v per frame; ``x, v`` [1, C, n, H, W], ``timestep`` [n] on 0..1000."""
    dt = euler_dt(timestep, schedule_sigmas)  # [n]; 0 for the condition frame
    return (x.astype(np.float32) + dt[None, None, :, None, None] * v.astype(np.float32)).astype(np.float32)


@dataclass
class Conditioning:
    """Per-clip inputs the generator reads every chunk (batch 1)."""

    condition_latent: np.ndarray  # [1, C, 1, H, W] clean latent of the first frame
    text: np.ndarray  # [1, L, Ct] stage-1 prompt features
    text_mask: np.ndarray  # [1, L] 1 = token, 0 = padding
    camera: np.ndarray  # [T, 20] relative c2w + intrinsics per latent frame
    plucker: np.ndarray  # [48, T, H, W]

    @property
    def num_latent_frames(self) -> int:
        return int(self.camera.shape[0])


@dataclass
class ChunkResult:
    index: int
    start: int  # first latent frame (absolute)
    end: int  # one past the last latent frame
    buffer: object  # sanawm.engines.memory.Buffer: the clean latents where the engine ran
    timings: dict = field(default_factory=dict)  # seconds per pass kind
    _host: np.ndarray | None = None

    @property
    def latents(self) -> np.ndarray:
        """[1, C, n, H, W] clean latents on the host (chunk 0 includes the condition frame); read out of the
        pool on first access only, so a pipeline that keeps latents on the device never pays for it."""
        if self._host is None:
            self._host = self.buffer.memory.download(self.buffer)
        return self._host


class GeneratorRunner:
    """Runs one chunk at a time through the generator engine; the session's ``GeneratorStatePool`` holds
    every tensor (see ``sanawm.runtime.state``).

    Args:
        engine: the one ``generator`` engine (profiles ``first`` / ``next``), or, for the torch reference and
            tests, the two fixed-shape step functions ``(first, next_)`` (wrapped in ``GeneratorPair``).
        memory: where the pools live; default: host memory, or the engine's own (``engine.memory``).
    """

    def __init__(self, cfg: GeneratorConfig, engine, next_=None, schedule: StreamingSchedule = StreamingSchedule(),
                 check: bool = True, memory=None):
        if isinstance(next_, StreamingSchedule):
            schedule, next_ = next_, None
        if schedule.cfg_scale != 1.0:
            raise ValueError(f"the distilled generator runs at CFG 1; got cfg_scale={schedule.cfg_scale}")
        if next_ is not None:
            from ..engines.host import GeneratorPair

            if check:
                check_executor(engine, generator_step_io(cfg, True))
                check_executor(next_, generator_step_io(cfg, False))
            engine = GeneratorPair(cfg, engine, next_)
        self.cfg, self.engine, self.schedule = cfg, engine, schedule
        if check:
            check_executor(engine, generator_engine_io(cfg))
        # the engine's own tensors (the K/V storage dtype is an export choice) define the session pool
        self.io = StepIO(tuple(engine.inputs), tuple(engine.outputs), dict(engine.state_map))
        if memory is None:
            memory = getattr(engine, "memory", None)
        if memory is None:
            from ..engines.memory import HostMemory

            memory = HostMemory()
        self.memory = memory

    def new_state(self) -> GeneratorStatePool:
        return GeneratorStatePool(self.cfg, self.io, self.memory)

    def chunk_bounds(self, num_latent_frames: int) -> list[tuple[int, int]]:
        return self.cfg.chunk_bounds(num_latent_frames)

    def run_chunk(
        self, c: int, start: int, end: int, noise: np.ndarray, cond: Conditioning, state: GeneratorStatePool
    ) -> ChunkResult:
        """Denoise chunk ``c`` (frames [start, end)) from ``noise`` [1, C, n, H, W] and commit its state.

        Crosses the host: the chunk's noise (with the condition latent in frame 0 of chunk 0), its camera
        inputs and frame indices, the window mask, and per pass ``timestep`` and ``dt`` ([1, n] each). The
        latents stay in the pool between passes (the engine's Euler output feeds the next pass).
        """
        first = c == 0
        profile = "first" if first else "next"
        n = end - start
        x = np.array(noise, dtype=np.float32, copy=True)  # [1, C, n, H, W]
        if first:
            x[:, :, 0:1] = cond.condition_latent
        if not state.prompt_set:
            state.set_prompt(cond.text.astype(np.float32), cond.text_mask.astype(np.float32))
        state.upload_chunk(c, n, {
            "latents": x,
            "frame_index": np.arange(start, end, dtype=np.int64),
            "camera": cond.camera[None, start:end].astype(np.float32),  # [1, n, 20]
            "plucker": cond.plucker[None, :, start:end].astype(np.float32),  # [1, 48, n, H, W]
        })
        timings = {"denoise": 0.0, "commit": 0.0}
        for t in self.schedule.timesteps:
            ts = np.full((n,), t, dtype=np.float32)  # per-frame timestep
            if first:
                ts[0] = 0.0  # the condition frame is clean (its dt is 0, so it stays exactly as encoded)
            t0 = time.perf_counter()
            self._call(state, n, profile, ts, euler_dt(ts, self.schedule.sigmas), commit=False)
            timings["denoise"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        zeros = np.zeros((n,), dtype=np.float32)
        self._call(state, n, profile, zeros, zeros, commit=True)  # t = 0 commit pass (dt 0: latents unchanged)
        state.commit(c, n)
        timings["commit"] = time.perf_counter() - t0
        return ChunkResult(c, start, end, state.current_latents(n), timings)

    def _call(self, state: GeneratorStatePool, n: int, profile: str, ts: np.ndarray, dt: np.ndarray, commit: bool) -> None:
        state.upload_pass(n, ts[None], dt[None])
        self.engine.run_bound(state.bindings(n, commit), profile)
        if not commit:
            state.after_pass()


def euler_dt(timestep: np.ndarray, schedule_sigmas: Sequence[float]) -> np.ndarray:
    """Per-frame ``sigma_next - sigma`` for ``timestep`` [n] on 0..1000 (0 for a clean frame)."""
    sigma = (np.asarray(timestep, dtype=np.float32) / np.float32(1000.0)).astype(np.float32)
    return (sigma_next(sigma, schedule_sigmas) - sigma).astype(np.float32)


def stream_latents(
    runner: GeneratorRunner,
    cond: Conditioning,
    noise: NoiseSource,
    state: GeneratorStatePool | None = None,
) -> Iterator[ChunkResult]:
    """Yield each chunk's clean latents in order, starting at ``state.committed`` (0 for a new state)."""
    state = state if state is not None else runner.new_state()
    bounds = runner.chunk_bounds(cond.num_latent_frames)
    for c in range(state.committed, len(bounds)):
        s, e = bounds[c]
        yield runner.run_chunk(c, s, e, noise.take(s, e), cond, state)
