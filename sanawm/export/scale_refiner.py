"""The stage-2 refiner exported at scale through the streamed path: a random diffusers-format checkpoint at the
published width (hidden 4096 = 32 x 128, in/out 128, caption 3840, cross-attention 4096) and a chosen depth, written
tensor by tensor, and one FP32 / FP8 streamed export of the ``refiner`` engine with its peak host memory. Used by the
memory test (in a subprocess, so the peak is the export's own) and by ``bench/export_scale_refiner.py``.

The checkpoint holds the video-path tensors only (what ``RefinerEngine`` reads): the published file's audio modules
are never read by the video-only engine, so leaving them out changes no number measured here."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from .scale import peak_rss_bytes

PUBLISHED_LAYERS = 48
# the published LTX-2 refiner: diffusers' defaults except the RoPE layout (sana-wm-reference.md section 10)
PUBLISHED_CONFIG = {"_class_name": "SanaWMLTX2RefinerTransformer3DModel", "rope_type": "split",
                    "num_layers": PUBLISHED_LAYERS}
BENCH_LAYOUT = {"latent_hw": (2, 2), "caption_length": 8}  # tiny activations; every weight keeps its full size
CONFIG_FILE, WEIGHTS_FILE = "config.json", "diffusion_pytorch_model.safetensors"


def bench_layout():
    """The refiner layout of the scale runs: the runtime's block / history sizes over tiny latents and prompt."""
    from ..refiner_layout import RefinerLayout

    return RefinerLayout(*BENCH_LAYOUT["latent_hw"], BENCH_LAYOUT["caption_length"])


def calibration_state_bytes(latent_hw=(22, 40), kv_bytes: int = 2, layers: int = PUBLISHED_LAYERS, heads: int = 32,
                            head_dim: int = 128, block: int = 3, kv_max_frames: int = 11) -> dict:
    """Bytes of what the calibration run carries besides weights at a given latent size (the bench runs tiny
    latents): the stage's sink + history K/V for every layer, and one call's per-layer K/V outputs (``kv_bytes``:
    2 for the fp16 K/V an FP8 export stores). Computed from the shapes, not measured."""
    S = latent_hw[0] * latent_hw[1]
    per_tok = 2 * layers * heads * head_dim * kv_bytes  # K and V of every layer
    return {"latent_hw": list(latent_hw), "kv_bytes": kv_bytes, "sink_history_kv": kv_max_frames * S * per_tok,
            "call_kv_out": block * S * per_tok}


def refiner_config(num_layers: int) -> dict:
    return {**PUBLISHED_CONFIG, "num_layers": int(num_layers)}


def _random(name: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    """Plausible random weights: N(0, 1/fan_in) matrices, small biases, unit norms, N(0, 0.2) modulation tables."""
    if name.endswith("scale_shift_table"):
        return torch.randn(shape, generator=g) * 0.2
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(shape[-1])
    if "norm" in name:
        return torch.ones(shape)
    return torch.randn(shape, generator=g) * 0.02


def write_random_refiner(folder, num_layers: int, seed: int = 0, dtype=torch.bfloat16) -> int:
    """``folder/config.json`` + ``folder/diffusion_pytorch_model.safetensors`` (random, ``dtype`` on disk, the
    engine's tensors only), written one tensor at a time. Returns the weights file's size in bytes."""
    from .families.refiner_streamed import checkpoint_key, ghost_engine
    from .weights_stream import write_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(refiner_config(num_layers), indent=1))
    eng = ghost_engine(folder, bench_layout(), "float32")
    g = torch.Generator().manual_seed(seed)
    items = [(checkpoint_key(n), tuple(p.shape), dtype, (lambda n=n, s=tuple(p.shape): _random(n, s, g)))
             for n, p in eng.named_parameters()]
    return write_safetensors(folder / WEIGHTS_FILE, items)


def export_refiner(folder, out, num_layers: int, precision: str = "fp8", calib_blocks: int = 1,
                   fixed: bool = False, calib_device: str = "cpu") -> dict:
    """Streamed export of the ``refiner`` engine of the first ``num_layers`` layers of ``folder`` to
    ``out/refiner.onnx``. ``fixed``: the block profile's shapes only (no symbolic frame axis: half the trace time).
    Returns the facts (seconds, bytes, one layer's weight bytes on disk and as float32, peak RSS so far)."""
    from ..spec_refiner import BLOCK, FRAME_DIM, refiner_profiles
    from .families.refiner import refiner_feeds
    from .families.refiner_loop import engine_calibration
    from .families.refiner_streamed import ENGINE_LAYERS, ghost_engine, weight_source
    from .streamed import export_streamed, quantize_streamed
    from .weights_stream import release_freed_weights

    release_freed_weights()  # before the first large allocation
    t0 = time.time()
    layout = bench_layout()
    eng = ghost_engine(folder, layout, "float32", num_layers)
    src = weight_source(folder, eng)
    if precision == "fp8":
        layers = len(quantize_streamed(eng, src, engine_calibration(layout, calib_blocks), device=calib_device).layers)
    elif precision == "fp32":
        layers = 0
    else:
        raise ValueError(f"streamed export covers fp32 and fp8, not {precision!r}")
    t_cal = time.time() - t0
    profiles = refiner_profiles(layout)
    io = eng.io.concrete(profiles[BLOCK]) if fixed else eng.io
    n = sorted(p[FRAME_DIM] for p in profiles.values())
    path = export_streamed(eng, io, Path(out) / "refiner.onnx", src, dims=None if fixed else {FRAME_DIM: (n[0], n[-1])},
                           sample_inputs=refiner_feeds(eng.core, layout, BLOCK, seed=7))
    layer0 = [p for p in src.params if p.startswith(ENGINE_LAYERS + "0.")]
    return {
        "precision": precision, "num_layers": num_layers, "hidden_size": eng.core.heads * eng.core.head_dim,
        "fp8_layers": layers, "calib_device": calib_device, "calibration_s": round(t_cal, 2),
        "seconds": round(time.time() - t0, 2),
        "onnx_bytes": path.stat().st_size + path.with_name(path.name + ".data").stat().st_size,
        "layer0_weight_bytes_on_disk": src.nbytes(layer0),
        "layer0_weight_bytes_fp32": sum(4 * src.params[p].numel() for p in layer0),
        "checkpoint_bytes": (Path(folder) / WEIGHTS_FILE).stat().st_size,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def main(argv=None) -> int:
    """``python -m sanawm.export.scale_refiner write FOLDER LAYERS``: the random checkpoint;
    ``python -m sanawm.export.scale_refiner FOLDER OUT LAYERS PRECISION CALIB_BLOCKS [fixed]``: one export, its facts
    as JSON on stdout."""
    args = list(argv or sys.argv[1:])
    if args and args[0] == "write":
        print(json.dumps({"checkpoint_bytes": write_random_refiner(args[1], int(args[2]))}))
        return 0
    folder, out, layers, precision, blocks = args[:5]
    print(json.dumps(export_refiner(folder, out, int(layers), precision, int(blocks), fixed="fixed" in args[5:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
