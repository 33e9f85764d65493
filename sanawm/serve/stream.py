"""The two loops of a running session: generate chunks just in time, show one frame per tick.

Generation runs ahead of display by a few frames only (``lead``: the frames one chunk takes to generate,
plus a margin), so the next chunk reads the controls as late as possible and a key reaches generated
frames after the current chunk has played. With ``fps = 0`` frames go out as fast as they are generated
(benchmarks) and generation never waits.
"""

from __future__ import annotations

import asyncio
import math
import time

from .images import encode_jpeg
from .player import Shown
from .protocol import pack_frame

LEAD_MARGIN_FRAMES = 3  # frames of slack on top of one chunk's generation time
CHUNK_TIME_SMOOTHING = 0.3  # weight of the newest chunk in the moving average


def lead_frames(slot) -> int:
    return math.ceil(slot.chunk_s * slot.fps) + LEAD_MARGIN_FRAMES


async def send_json(slot, msg: dict) -> None:
    ws = slot.ws
    if ws is not None and not ws.closed:
        async with slot.send_lock:
            await ws.send_json(msg)


async def send_shown(manager, slot, shown: Shown) -> None:
    """Warp (if needed) and encode off the event loop, then send with its header."""
    ws = slot.ws
    if ws is None or ws.closed or shown is None:
        return
    loop = asyncio.get_running_loop()
    K = slot.K
    t0 = time.perf_counter()
    jpeg = await loop.run_in_executor(manager.render_pool, lambda: encode_jpeg(shown.render(K)))
    render_ms = (time.perf_counter() - t0) * 1000.0
    src = shown.source
    # seq: newest input the shown picture reflects (with the preview); gen_seq: newest input the generated
    # content itself reflects (its chunk's camera read it), which is what key -> generated frame measures
    header = {"kind": shown.kind, "chunk": src.chunk, "frame": src.frame, "seq": shown.seq, "gen_seq": src.seq,
              "pose": [round(float(v), 6) for v in shown.pose.ravel()], "sent_ms": time.time() * 1000.0,
              "timings": {k: round(v * 1000.0, 2) for k, v in src.timings.items()}, "queued": slot.player.queued,
              "render_ms": round(render_ms, 2)}
    async with slot.send_lock:
        if not ws.closed:
            await ws.send_bytes(pack_frame(header, jpeg))


async def generate_loop(manager, slot) -> None:
    while True:
        live, player = slot.live, slot.player
        if live is None:
            return
        if not slot.running or (slot.fps > 0 and player.queued > lead_frames(slot)):
            slot.wake.clear()
            await slot.wake.wait()
            continue
        if live.at_limit:
            slot.running = False
            await send_json(slot, {"type": "end", "reason": "max_length", "message":
                                   f"the session reached its maximum length of {live.max_frames} frames "
                                   f"({(live.max_frames - 1) / 16:.0f} s); snapshot or fork it, or start a new one"})
            continue
        t0 = time.perf_counter()
        async with slot.lock:
            chunk = await manager.in_engine(live.step)
        dt = time.perf_counter() - t0
        slot.chunk_s = dt if slot.chunk_s == 0 else (1 - CHUNK_TIME_SMOOTHING) * slot.chunk_s + CHUNK_TIME_SMOOTHING * dt
        if chunk.frames is None:
            raise RuntimeError("the bundle has no VAE decoder; sanawm serve needs decoded frames")
        player.push_chunk(chunk.frames, chunk.poses, chunk.velocities, chunk.index, chunk.first_frame, chunk.seq,
                          chunk.timings)
        slot.frames_ready.set()


async def display_loop(manager, slot) -> None:
    next_t = time.perf_counter()
    while slot.player is not None:
        player = slot.player
        if slot.fps <= 0:  # unpaced: drain whatever is queued
            if not player.queued:
                slot.frames_ready.clear()
                await slot.frames_ready.wait()
                continue
            await send_shown(manager, slot, player.tick())
            slot.wake.set()
            continue
        period = 1.0 / slot.fps
        next_t = max(next_t + period, time.perf_counter() - period)  # no burst after a stall
        await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
        if slot.ws is None:
            continue
        shown = player.tick()
        if player.queued <= lead_frames(slot):
            slot.wake.set()
        await send_shown(manager, slot, shown)


async def _guard(manager, slot, loop_fn) -> None:
    """Run a loop; an engine failure stops the session with an error message instead of dying silently."""
    try:
        await loop_fn(manager, slot)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - reported to the client, the server goes on
        slot.running = False
        await send_json(slot, {"type": "error", "code": "engine", "message": f"generation stopped: {e}"})


def start_loops(manager, slot) -> None:
    for t in slot.tasks:
        t.cancel()
    slot.tasks = [asyncio.create_task(_guard(manager, slot, generate_loop)),
                  asyncio.create_task(_guard(manager, slot, display_loop))]
