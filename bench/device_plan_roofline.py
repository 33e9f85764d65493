"""Roofline PROJECTION per chunk: floor time = max(FLOPs / peak, bytes / bandwidth), per component and GPU.

FLOPs per call come from ``device_plan_models`` (FlopCounterMode over the real step modules); FLOPs inside the
FP8-quantized layers run at the FP8 tensor peak, the rest (attention, GDN, norms, the FP32 VAE) at the BF16
tensor peak, which assumes those run in BF16/FP16 on tensor cores (the FP32 ops the exporter keeps today would
be slower). Bytes per call are a lower bound: weights read once, every bound input read once, every output
written once; activations are assumed to stay on chip (so the VAE, whose activations dwarf its weights, is
certainly slower than its byte floor). A projection, never a measurement.

Peak rates (dense, datasheet; /work/shared/design/peers-and-anchors.md section 4a, which cites them):
RTX 5090: FP8 419 TFLOPS and BF16 209.5 TFLOPS with FP32 accumulate, 1792 GB/s (NVIDIA spec via
main-horse.github.io/posts/5090-mm-perf and spheron.network/blog/nvidia-rtx-5090-specs); H100 SXM: FP8 1979,
BF16 989 TFLOPS, 3.35 TB/s (glennklockwood.com/garden/processors/h100).
"""

from __future__ import annotations

GPUS = {
    "RTX 5090": {"fp8_tflops": 419.0, "bf16_tflops": 209.5, "bandwidth_gbs": 1792.0,
                 "source": "NVIDIA RTX 5090 spec (FP32 accumulate) via peers-and-anchors.md 4a"},
    "H100 SXM": {"fp8_tflops": 1979.0, "bf16_tflops": 989.0, "bandwidth_gbs": 3350.0,
                 "source": "NVIDIA H100 SXM datasheet via peers-and-anchors.md 4a"},
}
CLIP_SECONDS_TARGET = 34.0  # per minute-long clip (RTX 5090, peers-and-anchors.md: NVFP4 stage 1 "denoised in 34 s")
CLIP_PIXEL_FRAMES = 961  # one minute at 16 fps (+ the condition frame)
TEMPORAL = 8  # LTX-2 VAE: pixel frames per latent frame


def _io_bytes(io) -> int:
    return sum(t.nbytes for t in io.inputs) + sum(t.nbytes for t in io.outputs)


def _calls() -> dict:
    """(profile facts key, engine profile, calls) per component for chunk 0 and a later chunk."""
    gen_passes = 5  # 4 denoise + the t = 0 commit pass (StreamingSchedule)
    steps = 3  # refiner sigmas (0.909375, 0.725, 0.421875), then the sigma-0 commit pass (same graph)
    return {
        "generator": {"first": [("first", "first", gen_passes)], "next": [("next", "next", gen_passes)]},
        "refiner": {"first": [("sink", "sink", 1), ("block", "block", steps + 1)], "next": [("block", "block", steps + 1)]},
        "vae_decoder": {"first": [("first", "first", 1)], "next": [("next", "next", 1)]},
    }


def roofline(cfg, facts, plans) -> dict:
    calls = _calls()
    latent_frames = 1 + (CLIP_PIXEL_FRAMES - 1) // TEMPORAL
    n_chunks = len(cfg.chunk_bounds(latent_frames)) if cfg.latent_height >= 16 else None
    out = {"label": "projection", "gpus": GPUS, "per_chunk": {}, "clip": {}}
    for comp, kinds in calls.items():
        plan = plans[comp]
        out["per_chunk"][comp] = {}
        for kind, seq in kinds.items():
            fl = fp8 = by = 0
            for fkey, prof, k in seq:
                c = facts[comp].calls[fkey]
                fl, fp8 = fl + k * c.flops, fp8 + k * c.flops_fp8
                by += k * (plan.weight_bytes + _io_bytes(plan.io.concrete(plan.profiles[prof])))
            row = {"flops": fl, "flops_fp8": fp8, "bytes": by}
            for g, p in GPUS.items():
                compute = fp8 / (p["fp8_tflops"] * 1e12) + (fl - fp8) / (p["bf16_tflops"] * 1e12)
                memory = by / (p["bandwidth_gbs"] * 1e9)
                row[g] = {"compute_s": compute, "memory_s": memory, "floor_s": max(compute, memory)}
            out["per_chunk"][comp][kind] = row
    if n_chunks:
        out["clip"]["chunks"] = n_chunks
        for variant, comps in (("stage1", ["generator"]), ("stage1+vae", ["generator", "vae_decoder"]),
                               ("full", ["generator", "refiner", "vae_decoder"])):
            out["clip"][variant] = {}
            for g in GPUS:
                s = sum(out["per_chunk"][c]["first"][g]["floor_s"] + (n_chunks - 1) * out["per_chunk"][c]["next"][g]["floor_s"]
                        for c in comps)
                out["clip"][variant][g] = {"floor_s": s, "target_s": CLIP_SECONDS_TARGET, "meets": s <= CLIP_SECONDS_TARGET}
    return out
