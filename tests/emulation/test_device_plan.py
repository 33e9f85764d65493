"""bench/device_plan.py at the tiny config: the same code path as the full-size plan, checked for internally
consistent accounting (not a timing test; the emulated device counts bytes, it is not a GPU)."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

pytest.importorskip("diffusers")

CHUNKS = 3


@pytest.fixture(scope="module")
def plan():
    import device_plan

    return device_plan.build("tiny", "fp8", "fp16", CHUNKS)


def test_generator_pool_is_the_state_pool_and_allocated_once(plan):
    for variant, run in plan["runs"].items():
        assert run["pool_bytes"]["generator"] == run["pool_buffers"]["generator"] > 0, variant
        assert sum(run["pool_by_kind"]["generator"].values()) == run["pool_bytes"]["generator"]
        for c in run["chunks"][1:]:  # nothing allocated after chunk 0, on the device or in any pool
            assert c["device"]["alloc_calls"] == 0, (variant, c["chunk"])
            assert all(t["allocations"] == 0 for t in c["traffic"].values()), (variant, c["chunk"])


def test_generator_traffic_is_exactly_what_run_chunk_uploads(plan):
    from device_plan import with_kv_dtype

    from sanawm.config import tiny
    from sanawm.spec import generator_engine_io, generator_profiles

    cfg = tiny()
    io = with_kv_dtype(generator_engine_io(cfg), "float16")
    passes = 5  # 4 denoise + the commit pass
    for c, rec in enumerate(plan["runs"]["stage1"]["chunks"]):
        n = generator_profiles(cfg)["first" if c == 0 else "next"]["n"]
        con = io.concrete({"n": n})
        size = {t.name: t.nbytes for t in con.inputs}
        want = sum(size[k] for k in ("latents", "frame_index", "camera", "plucker", "window_valid"))
        want += passes * (size["timestep"] + size["dt"])
        if c == 0:
            want += size["text"] + size["text_mask"]  # the prompt goes up once per session
        got = rec["traffic"]["generator"]
        assert got["h2d"] == want, c
        assert got["d2h"] == 0  # the clean latents stay in the pool
        # every host copy the device saw went through the pool's counted Memory
        assert rec["device"]["copy_bytes"]["h2d"] == got["h2d"]
        assert rec["device"]["executes"] == passes


def test_decoder_and_refiner_traffic_and_device_totals(plan):
    full = plan["runs"]["full"]
    for rec in full["chunks"]:
        t = rec["traffic"]
        # only the uint8 frames leave the decoder
        host = {k: v for k, v in t["vae_decoder"]["by_name"].items() if not k.startswith("d2d:")}
        assert t["vae_decoder"]["h2d"] == 0 and host == {"d2h:frames": t["vae_decoder"]["d2h"]}
        assert sum(x["h2d"] for x in t.values()) == rec["device"]["copy_bytes"]["h2d"]
        assert sum(x["d2h"] for x in t.values()) == rec["device"]["copy_bytes"]["d2h"]
    from device_plan_engines import decoder_engine_io

    from sanawm.models.vae import tiny_vae_config

    io, _ = decoder_engine_io(tiny_vae_config(latent_channels=16), (4, 6))
    out = io.output("frames")
    assert out.dtype == "uint8" and out.shape[-1] == 3
    for rec in full["chunks"]:  # one uint8 [F, H, W, 3] download per chunk
        assert rec["traffic"]["vae_decoder"]["d2h"] == out.nbytes
    # refiner later chunk (the runtime's RefinerStage): the block's noise + positions + the [sink ; history ring]
    # mask + 4 calls x 5 scalars, nothing else; the clean block is copied from the generator's pool on the device
    from sanawm.config import tiny

    cfg = tiny()
    prefix_tokens = cfg.patch_tokens * 11  # kv_max_frames 11 = 1 sink frame + 10 history frames
    noise = cfg.in_channels * 3 * cfg.patch_tokens * 4
    want = noise + 3 * 8 + 1 * 8 + prefix_tokens * 4 + 4 * 5 * 4
    for rec in full["chunks"][1:]:
        assert rec["traffic"]["refiner"]["h2d"] == want
        assert rec["traffic"]["refiner"]["d2h"] == 0
        assert rec["traffic"]["refiner"]["d2d"] >= noise  # the clean block and the K/V commits stay on the device
    # the refiner's carried state (sink + history ring, both at the K/V dtype) is its pool's state part
    from sanawm.spec_refiner import refiner_engine_io

    from device_plan import model_facts

    _, _, layout, _, core = model_facts("tiny", "fp16")
    io = refiner_engine_io(core, layout, "float16")
    state = sum(t.nbytes for t in io.inputs if t.name.endswith(("sink_k", "sink_v", "hist_k", "hist_v")))
    assert full["pool_by_kind"]["refiner"]["state"] == state > 0
    assert plan["plans"]["vae_decoder"]["weight_bytes"] > 0


def test_weights_once_and_device_peak_is_the_sum_of_its_parts(plan):
    for variant, run in plan["runs"].items():
        engines = run["engines"]
        assert run["weight_loads"] == len(engines)
        assert run["weights_h2d_at_load"] == sum(run["weight_bytes"].values())
        assert run["arena_bytes"] == max(run["workspace_bytes"].values())
        parts = sum(run["weight_bytes"].values()) + run["arena_bytes"] + sum(run["pool_bytes"].values())
        n_allocs = len(engines) + 1 + 200 * len(engines)  # generous bound on cudaMalloc's 256 B rounding
        assert parts <= run["device_peak_bytes"] <= parts + 256 * n_allocs, variant


def test_fp16_windows_halve_the_generator_window_bytes(plan):
    from device_plan import with_kv_dtype

    from sanawm.config import tiny
    from sanawm.spec import generator_engine_io

    io = generator_engine_io(tiny()).concrete({"n": 4})
    half = with_kv_dtype(generator_engine_io(tiny()), "float16").concrete({"n": 4})
    win = lambda s: sum(t.nbytes for t in s.inputs if t.name.endswith("_win"))  # noqa: E731
    assert win(half) * 2 == win(io) > 0


def test_roofline_and_targets_are_derived_from_the_counts(plan):
    rf = plan["roofline"]
    for comp, kinds in rf["per_chunk"].items():
        for row in kinds.values():
            assert row["flops"] >= row["flops_fp8"] >= 0 and row["bytes"] > 0
            for g in rf["gpus"]:
                assert row[g]["floor_s"] == max(row[g]["compute_s"], row[g]["memory_s"]) > 0
    t = plan["targets"]["memory:full"]
    assert t["planned_bytes"] == plan["runs"]["full"]["device_peak_bytes"] and t["meets"]
    hp = plan["refiner_host_path"]["per_block"]
    dev = plan["runs"]["full"]["chunks"][1]["traffic"]["refiner"]
    assert hp["h2d"] > dev["h2d"]  # the old host path uploaded the history on every call


def test_generator_pool_follows_the_planned_kv_dtype(plan):
    """State = two slots per chained tensor + the windows at the plan's K/V dtype (FP16 here)."""
    from device_plan import with_kv_dtype

    from sanawm.config import tiny
    from sanawm.spec import generator_engine_io

    io = with_kv_dtype(generator_engine_io(tiny()), "float16").concrete({"n": 4})
    chained = set(io.state_map.values())
    want = 2 * sum(t.nbytes for t in io.inputs if t.name in chained)
    want += sum(t.nbytes for t in io.inputs if t.name.endswith("_win"))
    for run in plan["runs"].values():
        assert run["pool_by_kind"]["generator"]["state"] == want
