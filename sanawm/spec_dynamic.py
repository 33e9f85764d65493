"""The generator step as ONE graph with a symbolic frame axis (torch-free; issue 11 item 1).

``generator_step_io_dynamic(cfg)`` is ``generator_step_io(cfg, first=False)`` (always with the softmax window
inputs and ``window_valid``) where every frame-dependent dim is a string:

* ``FRAME_DIM`` = ``"n"``: latent frames of the call, ``n`` in ``frame_counts(cfg)`` = (chunk_size,
  first_chunk_size), i.e. 3 or 4. Inputs latents ``[1,C,n,H,W]``, timestep ``[1,n]``, frame_index ``[n]``,
  camera ``[1,n,20]``, plucker ``[1,48,n,H,W]``; output velocity ``[1,C,n,H,W]``.
* ``"n*S"`` with S the integer ``cfg.patch_tokens`` written out (e.g. ``"n*24"``): the per-chunk K/V outputs
  ``b{i}.{k,v,cam_k,cam_v}_chunk [1,h,n*S,D]``.

Every other dim (state, window ``Wt``, text) is an int, as in the fixed contract. Chunk 0 is this same graph at
``n = first_chunk_size`` with an all-zero ``window_valid`` (``masked_window_feeds``): the window is fully masked
in the softmax, so the call equals the old ``generator_first`` graph. The window K/V need not be zero, but must be
finite (masked weights are exactly 0, and 0 * NaN is NaN): zero a device ring buffer once when it is allocated. ``resolve_io(io, n)`` gives the concrete
``StepIO`` of one chunk length (what one TensorRT optimization profile pins, min = opt = max).
"""

from __future__ import annotations

import numpy as np

from .config import GeneratorConfig
from .spec import StepIO, TensorSpec, generator_engine_io, max_window_frames
from .spec import resolve_dim as _resolve

FRAME_DIM = "n"
# inputs whose frame axis is symbolic, and which axis (the TensorRT profile sets exactly these)
FRAME_AXES = {"latents": 2, "timestep": 1, "frame_index": 0, "camera": 1, "plucker": 2}


def frame_counts(cfg: GeneratorConfig) -> tuple[int, ...]:
    """The chunk lengths the dynamic graph serves, one TensorRT optimization profile each (sorted, unique)."""
    return tuple(sorted({cfg.chunk_size, cfg.first_chunk_size}))


def frame_bounds(cfg: GeneratorConfig) -> dict[str, tuple[int, int]]:
    """``{"n": (min, max)}`` for ``sanawm.export.onnx.export_onnx(dims=...)``."""
    c = frame_counts(cfg)
    return {FRAME_DIM: (c[0], c[-1])}


def generator_step_io_dynamic(cfg: GeneratorConfig) -> StepIO:
    """The fixed ``next`` contract with the frame axis made symbolic (see module docstring): the one generator
    engine's contract without its Euler input/output (``sanawm.spec.generator_engine_io``)."""
    if max_window_frames(cfg) == 0:
        raise ValueError("the dynamic generator graph masks a softmax window for chunk 0; this config has no "
                         "window (num_cached_chunks = 0): export the fixed first/next graphs instead")
    return generator_engine_io(cfg, euler=False)


def resolve_dim(d: int | str, n: int) -> int:
    """An int dim as is; ``"n"`` -> n; ``"n*K"`` -> n * K (``sanawm.spec.resolve_dim`` at ``{"n": n}``)."""
    return _resolve(d, {FRAME_DIM: n})


def resolve_io(io: StepIO, n: int) -> StepIO:
    """The concrete contract of ``io`` at ``n`` frames (every dim an int)."""
    return io.concrete({FRAME_DIM: n})


def trt_profiles(cfg: GeneratorConfig) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """One TensorRT optimization profile per chunk length (min = opt = max), in ``frame_counts`` order:
    ``[{input: (min, opt, max)}, ...]`` over the symbolic inputs only."""
    io = generator_step_io_dynamic(cfg)
    out = []
    for n in frame_counts(cfg):
        r = resolve_io(io, n)
        out.append({name: (r.input(name).shape,) * 3 for name in FRAME_AXES})
    return out


def masked_window_feeds(cfg: GeneratorConfig, dtype=np.float32) -> dict[str, np.ndarray]:
    """The window inputs of chunk 0 on the dynamic graph: zero K/V and an all-zero ``window_valid`` (every
    window token masked), so the call computes exactly what the old ``generator_first`` graph did."""
    io = generator_step_io_dynamic(cfg)
    return {t.name: np.zeros(t.shape, dtype) for t in io.inputs if t.name == "window_valid" or t.name.endswith("_win")}
