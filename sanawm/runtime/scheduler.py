"""The distilled streaming loop of SANA-WM stage 1 over a generator engine pair (numpy only).

Per chunk c with latent frames [s, e) (sana-wm-streaming.md 1.2-1.5):

    x = clip noise[:, :, s:e]; chunk 0: frame 0 := condition latent
    for t_i in schedule.timesteps (1000, 960, 889, 727), CFG 1:
        timestep = t_i per frame (condition frame: 0)
        v = engine(x, timestep, ..., state)                 # state read only, state outputs ignored
        x = x + (sigma_next - sigma) * v  per token          # condition frame held clean
    state <- engine(x, t = 0, ..., state) state outputs      # commit pass; its velocity is discarded
    yield x                                                  # clean latents of the chunk

``generator_first`` runs chunk 0 (condition frame + 3), ``generator_next`` every later chunk. Noise,
timesteps and the state object can all be injected, so the loop can be compared with the torch reference.
Arithmetic runs in float32 (the release rounds latents to bf16 after every step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from ..config import GeneratorConfig, StreamingSchedule
from ..spec import StepIO, TensorSpec, generator_step_io
from .noise import NoiseSource
from .state import GeneratorState


class Executor(Protocol):
    """What the runtime needs from an engine (``sanawm.engines``): named fixed-shape I/O and ``run``."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


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
    sigma = (np.asarray(timestep, dtype=np.float32) / np.float32(1000.0)).astype(np.float32)  # [n]
    dt = (sigma_next(sigma, schedule_sigmas) - sigma).astype(np.float32)  # [n]; 0 for the condition frame
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
    latents: np.ndarray  # [1, C, n, H, W] clean latents (chunk 0 includes the condition frame)
    timings: dict = field(default_factory=dict)  # seconds per pass kind


class GeneratorRunner:
    """Runs one chunk at a time through ``generator_first`` / ``generator_next``; owns no state itself."""

    def __init__(
        self,
        cfg: GeneratorConfig,
        first: Executor,
        next_: Executor,
        schedule: StreamingSchedule = StreamingSchedule(),
        check: bool = True,
    ):
        if schedule.cfg_scale != 1.0:
            raise ValueError(f"the distilled generator runs at CFG 1; got cfg_scale={schedule.cfg_scale}")
        self.cfg, self.first, self.next, self.schedule = cfg, first, next_, schedule
        self.first_io, self.next_io = generator_step_io(cfg, True), generator_step_io(cfg, False)
        if check:
            check_executor(first, self.first_io)
            check_executor(next_, self.next_io)

    def new_state(self) -> GeneratorState:
        return GeneratorState(self.cfg, self.first_io, self.next_io)

    def chunk_bounds(self, num_latent_frames: int) -> list[tuple[int, int]]:
        return self.cfg.chunk_bounds(num_latent_frames)

    def run_chunk(
        self, c: int, start: int, end: int, noise: np.ndarray, cond: Conditioning, state: GeneratorState
    ) -> ChunkResult:
        """Denoise chunk ``c`` (frames [start, end)) from ``noise`` [1, C, n, H, W] and commit its state."""
        first = c == 0
        executor = self.first if first else self.next
        n = end - start
        x = np.array(noise, dtype=np.float32, copy=True)  # [1, C, n, H, W]
        if first:
            x[:, :, 0:1] = cond.condition_latent
        fixed = {
            "frame_index": np.arange(start, end, dtype=np.int64),
            "text": cond.text.astype(np.float32),
            "text_mask": cond.text_mask.astype(np.float32),
            "camera": cond.camera[None, start:end].astype(np.float32),  # [1, n, 20]
            "plucker": cond.plucker[None, :, start:end].astype(np.float32),  # [1, 48, n, H, W]
        }
        fixed.update(state.feeds(c))
        wanted = [t.name for t in executor.inputs]
        timings = {"denoise": 0.0, "commit": 0.0}

        def call(latents: np.ndarray, timestep: np.ndarray) -> dict[str, np.ndarray]:
            feeds = dict(fixed, latents=latents, timestep=timestep[None].astype(np.float32))
            return executor.run({k: feeds[k] for k in wanted})

        for t in self.schedule.timesteps:
            ts = np.full((n,), t, dtype=np.float32)  # per-frame timestep
            if first:
                ts[0] = 0.0  # the condition frame is clean
            t0 = time.perf_counter()
            v = call(x, ts)["velocity"]
            timings["denoise"] += time.perf_counter() - t0
            x = euler_step(x, v, ts, self.schedule.sigmas)
            if first:
                x[:, :, 0:1] = cond.condition_latent  # held clean (dt is already 0; restore as the release does)
        t0 = time.perf_counter()
        outputs = call(x, np.zeros((n,), dtype=np.float32))  # t = 0 commit pass; velocity discarded
        timings["commit"] = time.perf_counter() - t0
        state.commit(c, outputs)
        return ChunkResult(c, start, end, x, timings)


def stream_latents(
    runner: GeneratorRunner,
    cond: Conditioning,
    noise: NoiseSource,
    state: GeneratorState | None = None,
) -> Iterator[ChunkResult]:
    """Yield each chunk's clean latents in order, starting at ``state.committed`` (0 for a new state)."""
    state = state if state is not None else runner.new_state()
    bounds = runner.chunk_bounds(cond.num_latent_frames)
    for c in range(state.committed, len(bounds)):
        s, e = bounds[c]
        yield runner.run_chunk(c, s, e, noise.take(s, e), cond, state)
