"""Targets and the printed table of the device plan (plain text; numbers from ``device_plan.build``)."""

from __future__ import annotations

GiB, MiB = 1 << 30, 1 << 20
TARGETS = {  # variant -> (device bytes, GPU)
    "full": (32 * GiB, "RTX 5090 (32 GB)"),
    "stage1+vae": (24 * GiB, "RTX 4090 (24 GB)"),
}
TRAFFIC_TARGET = 64 * MiB  # per chunk, host <-> device, uint8 frames included (read as MiB; 64e6 also reported)


def _steady(run: dict) -> list[dict]:
    return [c for c in run["chunks"] if c["chunk"] > 0]


def chunk_traffic(chunk: dict) -> dict:
    h2d = sum(t["h2d"] for t in chunk["traffic"].values())
    d2h = sum(t["d2h"] for t in chunk["traffic"].values())
    return {"h2d": h2d, "d2h": d2h, "total": h2d + d2h}


def targets(result: dict) -> dict:
    out = {}
    for variant, (limit, gpu) in TARGETS.items():
        peak = result["runs"][variant]["device_peak_bytes"]
        out[f"memory:{variant}"] = {"gpu": gpu, "limit_bytes": limit, "planned_bytes": peak, "meets": peak <= limit,
                                    "over_by_bytes": max(peak - limit, 0)}
    for variant, run in result["runs"].items():
        worst = max(chunk_traffic(c)["total"] for c in _steady(run))
        first = chunk_traffic(run["chunks"][0])["total"]
        out[f"traffic:{variant}"] = {"limit_bytes": TRAFFIC_TARGET, "steady_chunk_bytes": worst, "chunk0_bytes": first,
                                     "meets": worst <= TRAFFIC_TARGET, "meets_decimal_64MB": worst <= 64e6,
                                     "over_by_bytes": max(worst - TRAFFIC_TARGET, 0)}
    return out


def _g(n: float) -> str:
    """Bytes in GiB, or MiB / KiB when small (the tiny config)."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size / 10 or unit == "KiB":
            return f"{n / size:7.2f} {unit}"


def _m(n: float) -> str:
    return f"{n / MiB:8.2f} MiB" if abs(n) >= MiB / 10 else f"{n / 1024:8.2f} KiB"


def render(r: dict) -> str:
    L = [f"SANA-WM device plan: config {r['config']}, precision {r['precision']} (non-FP8 params at {r['rest_bytes']} B), "
         f"K/V windows {r['kv_dtype']}; {r['machine']['method']}; {r['machine']['date']}",
         "activation workspace = ESTIMATE (live set of the eager forward on meta tensors, attention fused; one arena "
         "shared by all engines); generator and refiner run the runtime's own schedules and pools, the decoder a "
         "PLANNED device-resident contract", ""]
    for variant, run in r["runs"].items():
        L.append(f"== {variant}: engines {', '.join(run['engines'])}")
        L.append(f"  {'component':<12} {'weights':>11} {'state':>11} {'I/O bufs':>11} {'workspace':>11} "
                 f"{'h2d/chunk':>12} {'d2h/chunk':>12}  (steady chunk; chunk 0 in brackets)")
        steady = _steady(run)[-1]
        for comp in run["engines"]:
            k = run["pool_by_kind"][comp]
            t, t0 = steady["traffic"][comp], run["chunks"][0]["traffic"][comp]
            L.append(f"  {comp:<12} {_g(run['weight_bytes'][comp])} {_g(k['state'])} {_g(k['io'])} "
                     f"{_g(run['workspace_bytes'][comp])} {_m(t['h2d'])} {_m(t['d2h'])}  [{_m(t0['h2d'])} {_m(t0['d2h'])}]")
        tot = chunk_traffic(steady)
        L.append(f"  shared activation arena {_g(run['arena_bytes'])}; device peak {_g(run['device_peak_bytes'])} "
                 f"(counting device); weights loaded {run['weight_loads']}x for {len(run['engines'])} engines")
        allocs = [sum(t["allocations"] for t in c["traffic"].values()) + c["device"]["alloc_calls"] for c in _steady(run)]
        L.append(f"  host<->device per steady chunk: {_m(tot['total'])} ({tot['total'] / 1e6:.1f} MB); "
                 f"allocations after chunk 0: {sum(allocs)}")
        L.append("")
    hp = r["refiner_host_path"]
    L.append(f"refiner, {hp['label']}: per block h2d {_g(hp['per_block']['h2d'])}, d2h {_g(hp['per_block']['d2h'])} "
             f"(history K/V in FP32: {_g(hp['history_fp32_bytes'])}, uploaded on each of its 4 calls)")
    full = r["runs"].get("full")
    if full and "weight_bytes" in hp:
        now = full["weight_bytes"]["refiner"] + sum(full["pool_by_kind"]["refiner"].values())
        before = hp["weight_bytes"] + hp["io_buffer_bytes"]
        L.append(f"refiner device memory, weights + pool: one engine {_g(now)} (weights {_g(full['weight_bytes']['refiner'])}) "
                 f"vs three engines {_g(before)} (weights 3 x = {_g(hp['weight_bytes'])}, FP32 I/O buffers "
                 f"{_g(hp['io_buffer_bytes'])}): {_g(before - now)} less")
    L.append("")
    L.append("targets:")
    for name, t in r["targets"].items():
        ok = "MEETS" if t["meets"] else "MISSES"
        if name.startswith("memory"):
            L.append(f"  {name:<20} {ok}: planned {_g(t['planned_bytes'])} vs {t['gpu']} {_g(t['limit_bytes'])}"
                     + (f", over by {_g(t['over_by_bytes'])}" if not t["meets"] else ""))
        else:
            L.append(f"  {name:<20} {ok}: {_m(t['steady_chunk_bytes'])} per steady chunk vs 64 MiB"
                     f" (decimal 64 MB: {'meets' if t['meets_decimal_64MB'] else 'misses'}); chunk 0 {_m(t['chunk0_bytes'])}")
    for variant, steps in r.get("what_if", {}).items():
        limit = TARGETS[variant][0]
        L.append(f"  what-if for {variant} (arithmetic on the counted parts, cumulative, NOT run):")
        for st in steps:
            L.append(f"    -{_g(st['saves_bytes'])} -> {_g(st['peak_after_bytes'])} "
                     f"({'fits' if st['peak_after_bytes'] <= limit else 'over'}): {st['change']}")
    rf = r["roofline"]
    L.append("")
    L.append("roofline PROJECTION per later chunk (floor = max(FLOPs/peak, bytes/bandwidth)):")
    for comp, kinds in rf["per_chunk"].items():
        row = kinds["next"]
        cells = "; ".join(f"{g} {row[g]['floor_s'] * 1e3:8.1f} ms ({'compute' if row[g]['compute_s'] >= row[g]['memory_s'] else 'memory'})"
                          for g in rf["gpus"])
        L.append(f"  {comp:<12} {row['flops'] / 1e12:9.1f} TFLOP ({row['flops_fp8'] / 1e12:.1f} in FP8 layers), "
                 f"{row['bytes'] / GiB:7.2f} GiB moved: {cells}")
    if rf["clip"]:
        L.append(f"  minute-long clip ({rf['clip']['chunks']} chunks) floor vs the 34 s target:")
        for variant in ("stage1", "stage1+vae", "full"):
            L.append("    " + f"{variant:<11}" + "; ".join(
                f"{g} {v['floor_s']:6.1f} s ({'meets' if v['meets'] else 'misses'})" for g, v in rf["clip"][variant].items()))
    return "\n".join(L)
