"""Export the generator step as ONE graph for both chunk lengths (symbolic frame axis; issue 11 item 1).

``export_generator_dynamic(model, path)`` traces :class:`~sanawm.models.generator_step.GeneratorStepDynamic`
with ``torch.export.Dim("n", min=chunk_size, max=first_chunk_size)`` on the frame axis of latents, timestep,
frame_index, camera and plucker, and checks the ONNX on ONNX Runtime at every chunk length against the
fixed-shape torch steps: at n = first_chunk_size with a fully masked window against ``GeneratorStep(first=True)``,
at n = chunk_size with a real window against ``GeneratorStep(first=False)``. The graph holds the weights once.

Why not an ONNX ``If`` over the two fixed graphs: TensorRT propagates shape equalities from both branches and
refuses the network ("4 == timestep_d1 and 3 == timestep_d1"). The dynamic graph is built with one TensorRT
optimization profile per chunk length (``sanawm.spec_dynamic.trt_profiles``; ``build_engine(profiles=...)``).
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from ..spec import StepIO
from ..spec_dynamic import frame_bounds, frame_counts, masked_window_feeds, resolve_io
from .onnx import ExportError, ExportResult, export_onnx, run_torch


def torch_dynamic_shapes(io: StepIO, dims: Mapping[str, tuple[int, int]]) -> dict:
    """``dynamic_shapes`` for ``torch.onnx.export`` of a ``forward(*args)`` step: every string dim of an input
    becomes the ``torch.export.Dim`` of that name with the bounds in ``dims``."""
    import torch

    made: dict[str, object] = {}
    specs = []
    for t in io.inputs:
        spec = {}
        for axis, d in enumerate(t.shape):
            if not isinstance(d, str):
                continue
            if d not in dims:
                raise ExportError(f"input {t.name!r} has symbolic dim {d!r} but dims gives no bounds for it "
                                  f"(got {sorted(dims)}); pass dims={{{d!r}: (min, max)}}")
            if d not in made:
                lo, hi = dims[d]
                made[d] = torch.export.Dim(d, min=int(lo), max=int(hi))
            spec[axis] = made[d]
        specs.append(spec or None)
    return {"args": tuple(specs)}


def dynamic_sample_feeds(cfg, n: int, seed: int, masked: bool | None = None, chunk: int = 2) -> dict[str, np.ndarray]:
    """Feeds of the dynamic graph at ``n`` frames. ``masked`` (default: n is the first chunk's length): chunk 0,
    the all-masked window; otherwise chunk ``chunk`` with the half-filled random window of ``generator_feeds``."""
    from .families.generator import generator_feeds

    first = n == cfg.first_chunk_size if masked is None else masked
    if first:
        f = generator_feeds(cfg, True, seed=seed)
        f.update(masked_window_feeds(cfg))
    else:
        if n != cfg.chunk_size:
            raise ValueError(f"a real window needs n = chunk_size ({cfg.chunk_size}), got {n}")
        f = generator_feeds(cfg, False, seed=seed, chunk=chunk)
    return f


def export_generator_dynamic(
    model,
    path: str | os.PathLike,
    *,
    quantized=None,
    check: bool = True,
    seed: int = 0,
) -> ExportResult:
    """Export the one-graph generator step to ``path`` (+ ``path.data``).

    Args:
        model: float ``SanaWMGenerator`` (the reference of the check, and what is exported unless ``quantized``).
        quantized: optional transformed ``GeneratorStepDynamic`` to export instead (``quantize_fp8`` /
            ``convert_fp16`` of ``GeneratorStepDynamic(model)``); the check then compares against it.
        check: ORT CPU vs torch at each chunk length; ``rel_errors`` keys are ``"n=<n>/<output>"``: the
            first length vs ``GeneratorStep(first=True)`` with a fully masked window, the other vs
            ``GeneratorStep(first=False)`` with a real window (fp32), or both vs ``quantized`` itself.
    Returns:
        ExportResult (paths, opset, per-output relative errors, seconds).
    """
    from ..models.generator_step import GeneratorStep, GeneratorStepDynamic
    from .onnx import run_onnx_cpu
    from ..testing import rel_error

    cfg = model.cfg
    step = quantized if quantized is not None else GeneratorStepDynamic(model).eval()
    io = step.io
    sample = dynamic_sample_feeds(cfg, cfg.chunk_size, seed=seed + 7)
    res = export_onnx(step, io, path, sample_inputs=sample, check=False, dims=frame_bounds(cfg))
    if check:
        for n in frame_counts(cfg):
            first = n == cfg.first_chunk_size
            feeds = dynamic_sample_feeds(cfg, n, seed=seed + 11 + n)
            if quantized is not None:
                ref = run_torch(quantized, resolve_io(io, n), feeds)
            else:
                fixed = GeneratorStep(model, first).eval()
                ref = run_torch(fixed, fixed.io, {t.name: feeds[t.name] for t in fixed.io.inputs})
            got = run_onnx_cpu(res.onnx_path, feeds)
            for name, want in ref.items():
                res.rel_errors[f"n={n}/{name}"] = rel_error(want, got[name])
    return res
