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

import re

import numpy as np

from .config import GeneratorConfig
from .spec import StepIO, TensorSpec, generator_step_io, max_window_frames

FRAME_DIM = "n"
# inputs whose frame axis is symbolic, and which axis (the TensorRT profile sets exactly these)
FRAME_AXES = {"latents": 2, "timestep": 1, "frame_index": 0, "camera": 1, "plucker": 2}
_DIM_RE = re.compile(r"^n(?:\*(\d+))?$")


def frame_counts(cfg: GeneratorConfig) -> tuple[int, ...]:
    """The chunk lengths the dynamic graph serves, one TensorRT optimization profile each (sorted, unique)."""
    return tuple(sorted({cfg.chunk_size, cfg.first_chunk_size}))


def frame_bounds(cfg: GeneratorConfig) -> dict[str, tuple[int, int]]:
    """``{"n": (min, max)}`` for ``sanawm.export.onnx.export_onnx(dims=...)``."""
    c = frame_counts(cfg)
    return {FRAME_DIM: (c[0], c[-1])}


def generator_step_io_dynamic(cfg: GeneratorConfig) -> StepIO:
    """The fixed ``next`` contract with the frame axis made symbolic (see module docstring)."""
    if max_window_frames(cfg) == 0:
        raise ValueError("the dynamic generator graph masks a softmax window for chunk 0; this config has no "
                         "window (num_cached_chunks = 0): export the fixed first/next graphs instead")
    ref = generator_step_io(cfg, first=False)
    n, S = cfg.chunk_size, cfg.patch_tokens

    def sym(t: TensorSpec, is_input: bool) -> TensorSpec:
        if is_input and t.name in FRAME_AXES:
            shape = list(t.shape)
            shape[FRAME_AXES[t.name]] = FRAME_DIM
            return TensorSpec(t.name, t.dtype, tuple(shape), t.doc)
        if not is_input and t.name == "velocity":
            return TensorSpec(t.name, t.dtype, (t.shape[0], t.shape[1], FRAME_DIM, *t.shape[3:]), t.doc)
        if not is_input and t.name.endswith("_chunk"):
            assert t.shape[2] == n * S, (t.name, t.shape)
            return TensorSpec(t.name, t.dtype, (t.shape[0], t.shape[1], f"{FRAME_DIM}*{S}", t.shape[3]), t.doc)
        return t

    return StepIO(tuple(sym(t, True) for t in ref.inputs), tuple(sym(t, False) for t in ref.outputs),
                  dict(ref.state_map))


def resolve_dim(d: int | str, n: int) -> int:
    """An int dim as is; ``"n"`` -> n; ``"n*K"`` -> n * K."""
    if isinstance(d, int):
        return d
    m = _DIM_RE.match(d)
    if not m:
        raise ValueError(f"unknown symbolic dim {d!r}: only 'n' and 'n*<int>' are defined (sanawm.spec_dynamic)")
    return n * int(m.group(1) or 1)


def resolve_io(io: StepIO, n: int) -> StepIO:
    """The concrete contract of ``io`` at ``n`` frames (every dim an int)."""

    def fix(t: TensorSpec) -> TensorSpec:
        return TensorSpec(t.name, t.dtype, tuple(resolve_dim(d, n) for d in t.shape), t.doc)

    return StepIO(tuple(fix(t) for t in io.inputs), tuple(fix(t) for t in io.outputs), dict(io.state_map))


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
