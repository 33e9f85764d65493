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

import inspect
import os
from typing import Mapping

import numpy as np

from ..spec import StepIO
from ..spec_dynamic import frame_bounds, frame_counts, masked_window_feeds, resolve_io
from .onnx import ExportError, ExportResult, export_onnx, run_torch


def torch_dynamic_shapes(module, io: StepIO, dims: Mapping[str, tuple[int, int]]) -> dict:
    """``dynamic_shapes`` for ``torch.onnx.export`` of a step taking the ``io`` inputs positionally: every string
    dim of an input becomes the ``torch.export.Dim`` of that name with the bounds in ``dims``."""
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
    # torch.export matches dynamic_shapes to forward's signature: named parameters first, *args as one tuple
    out: dict = {}
    i = 0
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            rest = tuple(specs[i:])
            out[p.name] = rest if any(r is not None for r in rest) else None  # (an all-None tuple is refused)
            i = len(specs)
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and i < len(specs):
            out[p.name] = specs[i]
            i += 1
    if i != len(specs):
        raise ExportError(f"{type(module).__name__}.forward takes fewer positional tensors than the {len(specs)} inputs "
                          "of its StepIO")
    return out


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


def export_vae_decoder_dynamic(
    vae,
    latent_hw: tuple[int, int],
    path: str | os.PathLike,
    *,
    first_frames: int = 4,
    next_frames: int = 3,
    check: bool = True,
    seed: int = 0,
) -> ExportResult:
    """Export the one-graph streaming VAE decoder (``VAEDecoderDynamicStep``) to ``path`` (+ ``path.data``).

    The contract is ``sanawm.models.vae.dynamic.vae_decoder_io_dynamic``: latents ``[1, C, "n", h, w]``, every
    cache on every call (chunk 0 ignores them), frames ``[1, 3, 24, H, W]``. ``check``: ORT CPU at n =
    first_frames (caches filled with NaN, to show they are not read) vs ``VAEDecoderStep(first=True)`` and at
    n = next_frames (random caches) vs ``VAEDecoderStep(first=False)``; keys ``"n=<n>/<output>"``.
    """
    from ..models.vae import VAEDecoderStep
    from ..models.vae.dynamic import VAEDecoderDynamicStep
    from ..testing import rel_error
    from .onnx import run_onnx_cpu

    step = VAEDecoderDynamicStep(vae, latent_hw, first_frames, next_frames).eval()
    io = step.io
    res = export_onnx(step, io, path, sample_inputs=vae_decoder_feeds(io, next_frames, seed=seed + 7), check=False,
                      dims={"n": (next_frames, first_frames)})
    if check:
        for n, first in ((first_frames, True), (next_frames, False)):
            fixed = VAEDecoderStep(vae, first, latent_hw, n).eval()
            feeds = vae_decoder_feeds(io, n, seed=seed + 11 + n, cache_fill=float("nan") if first else None)
            ref = run_torch(fixed, fixed.io, {t.name: feeds[t.name] for t in fixed.io.inputs})
            got = run_onnx_cpu(res.onnx_path, feeds)
            for name, want in ref.items():
                res.rel_errors[f"n={n}/{name}"] = rel_error(want, got[name])
    return res


def vae_decoder_feeds(io: StepIO, n: int, seed: int, cache_fill: float | None = None) -> dict[str, np.ndarray]:
    """Feeds of the dynamic decoder at ``n`` latent frames: N(0, 1) latents; caches N(0, 1), or all
    ``cache_fill`` (e.g. 0 or NaN for chunk 0, whose caches are never read)."""
    from ..spec_dynamic import resolve_io

    rng = np.random.default_rng(seed)
    out = {}
    for t in resolve_io(io, n).inputs:
        if t.name != "latents" and cache_fill is not None:
            out[t.name] = np.full(t.shape, cache_fill, np.float32)
        else:
            out[t.name] = rng.standard_normal(t.shape).astype(np.float32)
    return out
