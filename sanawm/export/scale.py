"""The stage-1 generator exported at scale through the streamed path (``sanawm.export.streamed``): a random
official-format checkpoint written tensor by tensor, and one FP32 / FP8 streamed export of the ``generator``
engine with its peak host memory. Used by the memory test (in a subprocess, so the peak is the export's own) and
by ``bench/export_scale.py``."""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

GENERATOR_PREFIX = "step.model."  # where GeneratorEngine holds the SanaWMGenerator (checkpoint keys below it)


def run_module(module: str, args: list[str], timeout: float, root: Path) -> dict:
    """``python -m module args`` in a subprocess (its own peak RSS) with ``root`` importable; its last stdout line is
    the JSON facts. The scale benches measure each export this way."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def depth_reduced(cfg, num_layers: int, latent_hw: tuple[int, int] | None = None):
    """``cfg`` with ``num_layers`` blocks (full width kept) and optionally smaller latents (cheaper calibration)."""
    kw = {"num_layers": num_layers, "plucker_post_attn_blocks": min(cfg.plucker_post_attn_blocks, num_layers)}
    if latent_hw:
        kw.update(latent_height=latent_hw[0], latent_width=latent_hw[1])
    return dataclasses.replace(cfg, **kw).validate()


def ghost_generator(cfg):
    """The ``generator`` engine module over a ghost-parameter SanaWMGenerator (no weight memory)."""
    from ..models.generator_engine import GeneratorEngine
    from ..models.transformer import SanaWMGenerator
    from .weights_stream import ghost_parameters_, meta_parameters

    with meta_parameters():
        model = SanaWMGenerator(cfg).eval()
    ghost_parameters_(model)
    return GeneratorEngine(model).eval()


def write_random_checkpoint(cfg, path, seed: int = 0, dtype=torch.float32) -> int:
    """A random official-format safetensors file for ``cfg`` (the model's state-dict keys, ``randomize_`` values),
    written one tensor at a time. Returns its size in bytes."""
    from ..models.random_init import random_value
    from .weights_stream import write_safetensors

    eng = ghost_generator(cfg)
    model = eng.step.model
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict(keep_vars=True)
    items = []
    for name, t in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in sd]:
        make = (lambda n=name, s=tuple(t.shape): random_value(n, s, g)) if t.is_floating_point() else (lambda t=t: t)
        items.append((name, tuple(t.shape), dtype if t.is_floating_point() else t.dtype, make))
    return write_safetensors(path, items)


def quick_calibration(cfg):
    """One engine call per profile (first, next): every quantized layer runs, at a fraction of the streaming
    loop's cost. For memory and graph tests; real exports calibrate over chunks (``generator_calibration``)."""
    from .families.generator import generator_engine_feeds
    from .onnx import run_torch

    def loop(eng) -> None:
        for prof in ("first", "next"):
            feeds = generator_engine_feeds(cfg, prof, seed=3)
            run_torch(eng, eng.io.concrete(eng_profiles(cfg)[prof]), feeds)

    return loop


def eng_profiles(cfg) -> dict:
    from ..spec import generator_profiles

    return generator_profiles(cfg)


def peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` of its address space. Not ``ru_maxrss``: Linux carries that
    across ``exec``, so a subprocess started from a large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def export_generator(checkpoint, cfg, out, precision: str = "fp8", calib_chunks: int = 1, fixed: bool = False) -> dict:
    """Streamed export of the ``generator`` engine of ``cfg`` from ``checkpoint`` to ``out/generator.onnx``.
    ``fixed``: the ``next`` chunk shape only (no symbolic frame axis; traces in half the time: memory tests).
    Returns the facts (seconds, bytes, unit bytes, peak RSS of this process so far)."""
    from ..spec_dynamic import frame_bounds
    from .families.generator import generator_calibration, generator_engine_feeds
    from .streamed import export_streamed, quantize_streamed
    from .weights_stream import SafetensorsReader, WeightSource

    from .weights_stream import release_freed_weights

    release_freed_weights()  # before the first large allocation (the wrappers' ghost reads)
    t0 = time.time()
    eng = ghost_generator(cfg)
    src = WeightSource(SafetensorsReader(checkpoint), eng, GENERATOR_PREFIX)
    if precision == "fp8":
        calib = generator_calibration(cfg, None, calib_chunks) if calib_chunks > 0 else quick_calibration(cfg)
        rep = quantize_streamed(eng, src, calib)
        layers = len(rep.layers)
    elif precision == "fp32":
        layers = 0
    else:
        raise ValueError(f"streamed export covers fp32 and fp8, not {precision!r}")
    t_cal = time.time() - t0
    io = eng.io.concrete(eng_profiles(cfg)["next"]) if fixed else eng.io
    path = export_streamed(eng, io, Path(out) / "generator.onnx", src, sample_inputs=generator_engine_feeds(cfg, "next", seed=7),
                           dims=None if fixed else frame_bounds(cfg))
    block = [n for n in src.params if n.startswith(GENERATOR_PREFIX + "blocks.0.")]
    return {
        "precision": precision, "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "fp8_layers": layers,
        "calibration_s": round(t_cal, 2), "seconds": round(time.time() - t0, 2),
        "onnx_bytes": path.stat().st_size + path.with_name(path.name + ".data").stat().st_size,
        "block0_weight_bytes": src.nbytes(block), "checkpoint_bytes": Path(checkpoint).stat().st_size,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def build_generator_plan(cfg, onnx_path, plan_path, targets=("sm_120",)) -> dict:
    """TensorRT-RTX AOT plan of a streamed ``generator`` graph (one profile per chunk length, as the pipeline
    builds it); returns the build facts with this process's peak RSS."""
    from ..spec import generator_profiles
    from .build import build_engine

    eng = ghost_generator(cfg)
    profiles = [{t.name: (t.shape,) * 3 for t in eng.io.concrete(dims).inputs
                 if next(x for x in eng.io.inputs if x.name == t.name).is_dynamic}
                for dims in generator_profiles(cfg).values()]
    del eng
    r = build_engine(onnx_path, plan_path, backend="tensorrt_rtx", compute_capabilities=list(targets), profiles=profiles)
    return {"build_s": round(r.seconds, 2), "plan_bytes": Path(plan_path).stat().st_size, "targets": list(targets),
            "build_peak_rss_bytes": peak_rss_bytes()}


def main(argv=None) -> int:
    """``python -m sanawm.export.scale CKPT OUT LAYERS H W PRECISION CALIB_CHUNKS``: one export at full width,
    ``LAYERS`` blocks and ``H x W`` latents (0 0: the published size); its facts as JSON on stdout. A trailing
    ``fixed`` exports the ``next`` chunk shape only.
    ``python -m sanawm.export.scale build ONNX PLAN LAYERS H W``: its TensorRT-RTX plan for sm_120."""
    from ..config import full

    args = list(argv or sys.argv[1:])
    if args and args[0] == "build":  # build ONNX PLAN LAYERS H W: the TensorRT-RTX sm_120 plan of an export
        onnx_path, plan, layers, h, w = args[1:6]
        cfg = depth_reduced(full(), int(layers), (int(h), int(w)) if int(h) else None)
        print(json.dumps(build_generator_plan(cfg, onnx_path, plan)))
        return 0
    ckpt, out, layers, h, w, precision, chunks = args[:7]
    cfg = depth_reduced(full(), int(layers), (int(h), int(w)) if int(h) else None)
    print(json.dumps(export_generator(ckpt, cfg, out, precision, int(chunks), fixed=args[7:8] == ["fixed"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
