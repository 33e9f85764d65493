"""Refiner benchmark: per-block latency and peak memory of the block-by-block AR refiner.

CPU (always): tiny random config (2 layers, 2 x 16 heads, 4x6 latent, 16 channels), torch step modules and,
unless --no-onnx, the exported FP32 graphs on ONNX Runtime CPU.
GPU (when CUDA is available): full-size random-weight refiner (48 x 4096 unless --layers) in bf16, our torch
step modules vs diffusers' ``SanaWMLTX2Refiner`` AR loop in the same run (same weights, latents, noise, text).
A block = 3 denoising forwards + 1 sigma-0 capture forward. Writes bench/results/refiner-<device>.json.

    python bench/refiner.py                     # CPU part
    python bench/refiner.py --gpu --layers 48   # + full size on the GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests" / "models"))  # OnnxStep is a test helper, not library code
from refiner_harness import OnnxStep  # noqa: E402

from sanawm.models.refiner import (  # noqa: E402
    RefinerCore,
    RefinerLayout,
    RefinerSinkCapture,
    RefinerStep,
    make_tiny_refiner_transformer,
    refine_stream,
    refiner_io,
)


class _Timed:
    """Wrap the capture callable: it is called once per block, at the block's end -> block boundaries."""

    def __init__(self, fn, sync):
        self.fn, self.sync, self.marks = fn, sync, []

    def __call__(self, *a):
        out = self.fn(*a)
        self.sync()
        self.marks.append(time.perf_counter())
        return out


def _per_block(core, lat, text, mask, kv_max, sync, text_kv=False, **mods):
    cap = _Timed(mods.pop("capture", None) or RefinerStep(core, capture=True, text_kv=text_kv), sync)
    sink = mods.pop("sink", None) or RefinerSinkCapture(core)
    t_sink = []

    def timed_sink(*a):
        out = sink(*a)
        sync()
        t_sink.append(time.perf_counter())
        return out

    t0 = time.perf_counter()
    refine_stream(core, lat, text, mask, generator=torch.Generator(lat.device).manual_seed(0),
                  kv_max_frames=kv_max, sink=timed_sink, capture=cap, text_kv=text_kv, **mods)
    marks = [t_sink[0]] + cap.marks
    blocks = [b - a for a, b in zip(marks[:-1], marks[1:])]
    return {"sink_s": t_sink[0] - t0, "block_s": blocks, "block_mean_s": sum(blocks) / len(blocks)}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def cpu_part(blocks: int, kv_max: int, onnx: bool, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = make_tiny_refiner_transformer(seed=0)
    core = RefinerCore(model).eval()
    H, W, L = 4, 6, 7
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(1, 16, 1 + 3 * blocks, H, W, generator=g)
    text = torch.randn(1, L, 24, generator=g)
    mask = torch.ones(1, L)
    res = {"config": {"layers": 2, "heads": 2, "head_dim": 16, "latent": [16, H, W], "text_len": L,
                      "blocks": blocks, "kv_max_frames": kv_max, "threads": threads}}
    io = refiner_io(core, RefinerLayout(H, W, L, kv_max_frames=kv_max), "step")
    kv = [t for t in io.inputs if t.name.startswith("l")]
    res["memory_note"] = ("peak_rss_gib is the whole process (imports dominate at this size); state_bytes = "
                          "sink + padded history K/V carried per block, param_bytes = video-path weights")
    res["state_bytes"] = int(sum(4 * int(torch.tensor(t.shape).prod()) for t in kv))
    res["param_bytes"] = int(sum(p.numel() * p.element_size() for p in core.parameters()))
    noop = lambda: None  # noqa: E731
    with torch.no_grad():
        _per_block(core, lat, text, mask, kv_max, noop)  # warm-up
        rss0 = _rss_gb()
        res["torch"] = _per_block(core, lat, text, mask, kv_max, noop)
        res["torch"]["peak_rss_gib"] = _rss_gb()
        res["torch"]["peak_rss_gib_before"] = rss0
    if onnx:
        from sanawm.export.onnx import export_onnx

        lay = RefinerLayout(H, W, L, kv_max_frames=kv_max)
        mods = {"sink": RefinerSinkCapture(core), "step": RefinerStep(core), "capture": RefinerStep(core, capture=True)}
        with tempfile.TemporaryDirectory() as d:
            runners, errs = {}, {}
            for kind, mod in mods.items():
                io = refiner_io(core, lay, kind)
                r = export_onnx(mod, io, Path(d) / f"{kind}.onnx")
                errs[kind] = r.max_rel_error
                runners[kind] = OnnxStep(r.onnx_path, io, threads=threads)
            _per_block(core, lat, text, mask, kv_max, noop, **runners)  # warm-up
            res["onnxruntime"] = _per_block(core, lat, text, mask, kv_max, noop, **runners)
            res["onnxruntime"]["export_rel_err_vs_torch"] = errs
            res["onnxruntime"]["peak_rss_gib"] = _rss_gb()
    return res


def gpu_part(layers: int, blocks: int, kv_max: int, H: int, W: int, text_len: int, device: str = "cuda",
             dtype: torch.dtype = torch.bfloat16, **model_overrides) -> dict:
    """Ours vs diffusers in the same run (``device``/``dtype``/overrides exist for a CPU smoke run)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel
    from diffusers.pipelines.sana_wm.refiner import SanaWMLTX2Refiner

    from sanawm.testing import rel_error

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    cfg = dict(num_layers=layers, rope_type="split", caption_channels=3840, cross_attention_dim=4096)
    cfg.update(model_overrides)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: fp32 full size (~19B params) would not fit
    try:
        with dev:
            model = SanaWMLTX2RefinerTransformer3DModel(**cfg).to(dtype).eval()
    finally:
        torch.set_default_dtype(old)
    c = model.config
    g = torch.Generator(dev).manual_seed(1)
    lat = torch.randn(1, c.in_channels, 1 + 3 * blocks, H, W, generator=g, device=dev).to(dtype)
    text = torch.randn(1, text_len, c.caption_channels, generator=g, device=dev).to(dtype)
    mask = torch.ones(1, text_len, device=dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = (lambda: torch.cuda.max_memory_allocated() / 2**30) if cuda else _rss_gb
    reset = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    out = {"config": {"layers": layers, "dim": c.num_attention_heads * c.attention_head_dim,
                      "heads": c.num_attention_heads, "head_dim": c.attention_head_dim,
                      "latent": [c.in_channels, H, W], "text_len": text_len, "blocks": blocks,
                      "kv_max_frames": kv_max, "dtype": str(dtype).replace("torch.", ""), "weights": "random"},
           "gpu": torch.cuda.get_device_name() if cuda else None}

    core = RefinerCore(model).eval()
    with torch.no_grad():
        _per_block(core, lat, text, mask, kv_max, sync)  # warm-up
        reset()
        ours = _per_block(core, lat, text, mask, kv_max, sync)
        ours["peak_gib"] = peak()
        reset()
        ours_tkv = _per_block(core, lat, text, mask, kv_max, sync, text_kv=True)
        ours_tkv["peak_gib"] = peak()
        refined = refine_stream(core, lat, text, mask, generator=torch.Generator(dev).manual_seed(0),
                                kv_max_frames=kv_max)
    out["ours_torch"] = ours
    out["ours_torch_text_kv"] = ours_tkv

    pipe = SanaWMLTX2Refiner(transformer=model, connectors=None, tokenizer=None, text_encoder=None,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    pipe._encode_prompt = lambda prompt, device, dtype: (text, mask)

    def run_oracle():
        return pipe(lat, "", fps=16.0, generator=torch.Generator(dev).manual_seed(0), kv_max_frames=kv_max,
                    output_type="latent")

    run_oracle()  # warm-up
    reset()
    sync()
    t0 = time.perf_counter()
    ref = run_oracle()
    sync()
    total = time.perf_counter() - t0
    out["diffusers"] = {"total_s": total, "block_mean_s_incl_sink": total / blocks,
                             "peak_gib": peak()}
    out["ours_vs_diffusers_rel_err"] = rel_error(ref[:, :, 1:].float(), refined[:, :, 1:].float())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--kv-max-frames", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (2 on a 2-core box shared with other jobs ran 50x slower: OpenMP spinning)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="also run the full-size GPU comparison (needs CUDA)")
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--gpu-blocks", type=int, default=5)
    ap.add_argument("--latent-hw", type=int, nargs=2, default=(15, 26), help="latent H W (480x832 video: 15 26)")
    ap.add_argument("--text-len", type=int, default=1024)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args(argv)

    import diffusers
    import onnxruntime

    res = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "onnxruntime": onnxruntime.__version__},
        "cpu_tiny": cpu_part(a.blocks, a.kv_max_frames, not a.no_onnx, a.threads),
    }
    device = "cpu"
    if a.gpu or torch.cuda.is_available():
        if not torch.cuda.is_available():
            res["gpu_full"] = {"skipped": "CUDA is not available"}
        else:
            res["gpu_full"] = gpu_part(a.layers, a.gpu_blocks, a.kv_max_frames, *a.latent_hw, a.text_len)
            device = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    res["device"] = device
    os.makedirs(a.out, exist_ok=True)
    path = Path(a.out) / f"refiner-{device}.json"
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
