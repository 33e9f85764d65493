"""Live-session latency and throughput of `sanawm serve` on loopback (CPU, tiny bundle): a few minutes at most.

    python bench/serve.py --bundle sanawm-demo-bundle [--out bench/results/serve-cpu.json]

Starts `sanawm serve` in a subprocess (as a user would) and drives it with WebSocket clients:

* key -> reprojected frame and key -> generated frame (p50 / p95): one session paced at 16 frames/s, a key
  state change every KEY_PERIOD_S; the clock runs from sending the key message to receiving the first frame
  of each kind whose sequence number covers it (for generated frames: the input their chunk's camera read) (loopback, so the network adds almost nothing; the page adds
  its JPEG decode and paint, which the browser test records in its HUD);
* the same in the page (headless system Chromium over the DevTools protocol, when installed): key press to
  drawn frame, JPEG decode and paint included, as the HUD records it;
* steady frames/s per session: unpaced (fps 0) sessions, generated frames received per second after a
  warm-up, with 1, 2 and 4 sessions at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sanawm.serve.protocol import unpack_frame  # noqa: E402

KEY_PERIOD_S = 0.5
KEY_CYCLE = ["w", "wd", "d", "", "s", "sa", "a", ""]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def connect(http, port, **start):
    import aiohttp  # noqa: F401

    ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=0)
    await ws.receive_json()
    await ws.send_json({"op": "start", **start})
    while True:
        m = await ws.receive()
        if m.type.name == "TEXT" and m.json()["type"] == "started":
            return ws


async def latency(http, port, seconds: float) -> dict:
    ws = await connect(http, port, scene="checker", fps=16)
    sent: dict[int, float] = {}
    reproj: dict[int, float] = {}
    gen: dict[int, float] = {}
    render: list[float] = []  # server-side warp + JPEG time of the frames that answered a key

    async def reader():
        async for m in ws:
            if m.type.name != "BINARY":
                continue
            now = time.perf_counter()
            h, _ = unpack_frame(m.data)
            for s, t in sent.items():
                if h["kind"] == "reproj" and s <= h["seq"] and s not in reproj:
                    reproj[s] = now - t
                    render.append(h["render_ms"] / 1000.0)
                if s <= h["gen_seq"] and s not in gen:  # generated content that read the key (maybe warped further)
                    gen[s] = now - t

    task = asyncio.create_task(reader())
    await asyncio.sleep(2.0)  # warm up: the first chunks
    seq, t_end = 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        seq += 1
        sent[seq] = time.perf_counter()
        await ws.send_json({"op": "keys", "keys": KEY_CYCLE[seq % len(KEY_CYCLE)], "seq": seq})
        await asyncio.sleep(KEY_PERIOD_S)
    await asyncio.sleep(4.0)  # let the last presses reach generated frames
    task.cancel()
    await ws.close()

    def pct(d):
        v = np.array(list(d.values())) * 1000
        return {"p50_ms": round(float(np.percentile(v, 50)), 1), "p95_ms": round(float(np.percentile(v, 95)), 1),
                "n": int(v.size)} if v.size else {"n": 0}

    return {"presses": seq, "key_to_reprojected": pct(reproj), "key_to_generated": pct(gen),
            "reprojection_warp_and_jpeg": pct(dict(enumerate(render)))}


async def page_latency(port, presses: int = 16) -> dict:
    """Key -> drawn frame in the real page (the HUD's own numbers); skipped without a chromium binary."""
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    from serve_cdp import Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        return {"skipped": "no chromium binary"}
    async with Chromium(binary) as b:
        await b.call("Page.navigate", url=f"http://127.0.0.1:{port}/?autostart=1")
        await b.wait_for("window.sanawmStats && window.sanawmStats.gen >= 24", timeout=60)
        for i in range(presses):
            await b.key("keyDown" if i % 2 == 0 else "keyUp", "d")
            await asyncio.sleep(KEY_PERIOD_S)
        await asyncio.sleep(3.0)
        stats = await b.evaluate("window.sanawmStats")

    def pct(v):
        v = np.array(v)
        return {"p50_ms": round(float(np.percentile(v, 50)), 1), "p95_ms": round(float(np.percentile(v, 95)), 1),
                "n": int(v.size)} if v.size else {"n": 0}

    return {"presses": presses, "key_to_reprojected_drawn": pct(stats["latReproj"]),
            "key_to_generated_drawn": pct(stats["latGen"])}


async def throughput(http, port, sessions: int, seconds: float) -> dict:
    wss = [await connect(http, port, scene="road", seed=i, fps=0) for i in range(sessions)]
    counts = [0] * sessions
    counting = False

    async def reader(i, ws):
        async for m in ws:
            if m.type.name == "BINARY" and counting and unpack_frame(m.data)[0]["kind"] == "gen":
                counts[i] += 1

    tasks = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(wss)]
    await asyncio.sleep(1.5)  # warm-up
    counting, t0 = True, time.perf_counter()
    await asyncio.sleep(seconds)
    counting, dt = False, time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    for ws in wss:
        await ws.close()
    per = [c / dt for c in counts]
    return {"sessions": sessions, "frames_per_s_per_session": [round(v, 1) for v in per],
            "frames_per_s_total": round(sum(per), 1)}


async def run(args, port) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(300):  # wait for the server
            try:
                async with http.get(f"http://127.0.0.1:{port}/api/info") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        out = {"latency_16fps": await latency(http, port, args.latency_seconds)}
        await asyncio.sleep(4.0)  # the closed session idles out
        out["page_latency_16fps"] = await page_latency(port)
        await asyncio.sleep(4.0)
        for n in (1, 2, 4):
            out[f"unpaced_{n}_sessions"] = await throughput(http, port, n, args.throughput_seconds)
            await asyncio.sleep(4.0)  # the closed sessions idle out (idle timeout 3 s)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="sanawm-demo-bundle")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve-cpu.json"))
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--throughput-seconds", type=float, default=8.0)
    ap.add_argument("--threads", default="0,1", help="sanawm serve --threads values to run (onnxruntime intra-op "
                                                    "threads; 0 = its default, all cores)")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = {}
    for threads in (int(t) for t in args.threads.split(",")):
        port = free_port()
        with tempfile.TemporaryDirectory() as snaps:
            server = subprocess.Popen([sys.executable, "-m", "sanawm.cli", "serve", "--bundle", args.bundle, "--port",
                                       str(port), "--snapshot-dir", snaps, "--idle-timeout", "3", "--max-seconds", "600",
                                       "--max-sessions", "4", "--threads", str(threads)], env=env)
            try:
                result[f"onnxruntime_threads_{threads or 'default'}"] = asyncio.run(run(args, port))
            finally:
                server.terminate()
                server.wait(timeout=30)
    result["setup"] = {"bundle": "tiny random (sanawm demo), ONNX Runtime CPU FP32, 128x192 frames, 24 frames per chunk",
                       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
                       "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
