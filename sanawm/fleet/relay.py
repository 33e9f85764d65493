"""One client's session as the ingress sees it: controls, the display, and calls to its engine replica.

The ingress owns the controls: each chunk's inputs (keys, mouse turn, seq) are read here and sent with
the ``step`` call, and kept per chunk. When the engine answers that it restored the session from a
migration snapshot behind the chunk asked for (its replica died or drained), the relay replays the
chunks since that snapshot with the same inputs, checks that every replayed chunk's frames hash as
before (bit-identical continuation), tells the client ``{"type": "resumed", ...}`` and goes on. The
display side (pacing, reprojection, frame headers) is ``sanawm serve``'s own (``serve.stream``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..runtime.steering import parse_keys
from ..serve.manager import Slot
from ..serve.player import Player, QueuedFrame
from ..serve.protocol import MOUSE_DEG_PER_PX, ProtocolError, error
from ..serve.reproject import intrinsics_matrix
from ..serve.stream import CHUNK_TIME_SMOOTHING, display_loop, lead_frames, send_json, send_shown

MIGRATE_DEADLINE_S = 120.0  # how long a session waits for a replica to take it over
RETRY_PERIOD_S = 0.25
MAX_MOVES = 4  # moves within one chunk (a replica dying while another replays) before giving up


class EngineRefused(Exception):
    def __init__(self, reply: dict):
        super().__init__(reply["message"])
        self.code = reply["error"]


def _replica_gone(e: Exception) -> bool:
    from ray.exceptions import RayActorError  # ActorDiedError and ActorUnavailableError are both this

    return isinstance(e, RayActorError)


class Relay:
    def __init__(self, sid: str, engine, ws, render_pool):
        self.sid, self.engine = sid, engine
        self.slot = Slot(sid, ws=ws)
        self.render_pool = render_pool  # serve.stream's send_shown reads manager.render_pool
        self.keys, self.mouse, self.seq = frozenset(), (0.0, 0.0), 0
        self.chunk = 0  # the next chunk to generate
        self.entries: dict[int, dict] = {}  # chunk -> the inputs it was generated with
        self.digests: dict[int, str] = {}  # chunk -> hash of its frames
        self.replica: str | None = None
        self.started = False
        self.at_limit = False

    # ------------------------------------------------------------------ engine calls (sticky by session id)
    async def call(self, method: str, *args) -> dict:
        deadline = time.monotonic() + MIGRATE_DEADLINE_S
        while True:
            try:
                reply = await self.engine.options(method_name=method, session_id=self.sid).remote(self.sid, *args)
            except Exception as e:  # noqa: BLE001 - a dead replica is retried; the router places the session anew
                if not _replica_gone(e) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(RETRY_PERIOD_S)
                continue
            if reply.get("error") == "draining" and time.monotonic() < deadline:  # stopping: soon out of the router's set
                await asyncio.sleep(RETRY_PERIOD_S)
                continue
            if "error" in reply:
                raise EngineRefused(reply)
            return reply

    # ------------------------------------------------------------------ session start
    def _begin(self, info: dict, fps: float) -> dict:
        self.started, self.replica, self.chunk = True, info["replica"], info["chunks"]
        self.keys, self.seq = parse_keys(info["keys"]), info["seq"]
        self.at_limit = info["at_limit"]
        slot = self.slot
        slot.fps = float(fps)
        slot.player = Player(info["rig"])
        slot.player.seq = self.seq
        hw = tuple(info["image_hw"])
        slot.K = intrinsics_matrix(info["intrinsics"], hw, hw)
        self.info = info
        return {"type": "started", "id": self.sid, "fps": slot.fps, "seq": self.seq, "chunks": info["chunks"],
                "frames": info["frames"], "max_frames": info["max_frames"], "image_hw": info["image_hw"],
                "intrinsics": info["intrinsics"], "replica": info["replica"]}

    async def start(self, image, prompt: str, seed: int, fps: float) -> dict:
        started = self._begin(await self.call("open", image, prompt, seed), fps)
        # the first frame is shown at once (as in sanawm serve), so keys pressed before chunk 0 already move the view
        self.slot.player.queue.append(QueuedFrame(image, np.asarray(self.info["pose"]), np.zeros(4), -1, 0, -1, {}))
        return started

    async def resume(self, snapshot_id: str, fps: float) -> dict:
        return {**self._begin(await self.call("restore", snapshot_id), fps), "resumed": snapshot_id}

    # ------------------------------------------------------------------ inputs
    def set_keys(self, keys, seq) -> None:
        self.keys = parse_keys(keys)
        self.seq = self.seq + 1 if seq is None else max(self.seq, int(seq))

    def add_mouse(self, dx: float, dy: float, seq) -> tuple[float, float]:
        yaw, pitch = dx * MOUSE_DEG_PER_PX, -dy * MOUSE_DEG_PER_PX  # mouse up looks up
        self.mouse = (self.mouse[0] + yaw, self.mouse[1] + pitch)
        self.seq = self.seq + 1 if seq is None else max(self.seq, int(seq))
        return yaw, pitch

    def _take_entry(self) -> dict:
        entry = {"seq": self.seq, "keys": "".join(sorted(self.keys)), "mouse": list(self.mouse)}
        self.mouse = (0.0, 0.0)
        return entry

    # ------------------------------------------------------------------ generation
    async def next_chunk(self) -> dict:
        entry = self.entries.get(self.chunk) or self._take_entry()
        self.entries[self.chunk] = entry
        for _ in range(MAX_MOVES):
            reply = await self.call("step", entry, self.chunk)
            if "at" not in reply:
                break
            await self._replay(reply)  # restored from a snapshot behind us: replay to here, then generate
        else:
            raise RuntimeError(f"session {self.sid} moved {MAX_MOVES} times within chunk {self.chunk}; start it anew")
        if reply["migrated"]:  # restored exactly where it was (a drain snapshot): nothing to replay
            await self._announce(reply["replica"], self.chunk, 0, True)
        self.replica = reply["replica"]
        self.digests[reply["index"]] = reply["digest"]
        self.chunk += 1
        self.at_limit = reply["at_limit"]
        return reply

    async def _replay(self, reply: dict) -> None:
        start, identical = reply["at"], True
        for c in range(start, self.chunk):
            again = await self.call("step", self.entries[c], c)
            if "at" in again:  # moved again meanwhile: the caller starts over from where that replica stands
                return
            identical &= again["digest"] == self.digests.get(c)
        await self._announce(reply["replica"], start, self.chunk - start, identical)

    async def _announce(self, replica: str, from_chunk: int, replayed: int, identical: bool) -> None:
        note = {"type": "resumed", "id": self.sid, "replica": replica, "from_chunk": from_chunk, "replayed": replayed,
                "identical": identical,
                "message": f"the session moved to replica {replica}; it continues from its snapshot at chunk {from_chunk}"}
        await send_json(self.slot, note)

    async def generate_loop(self) -> None:
        slot = self.slot
        while True:
            if not slot.running or (slot.fps > 0 and slot.player.queued > lead_frames(slot)):
                slot.wake.clear()
                await slot.wake.wait()
                continue
            if self.at_limit:
                slot.running = False
                await send_json(slot, {"type": "end", "reason": "max_length", "message":
                                       "the session reached its maximum length; snapshot it or start a new one"})
                continue
            t0 = time.perf_counter()
            reply = await self.next_chunk()
            dt = time.perf_counter() - t0
            slot.chunk_s = dt if slot.chunk_s == 0 else (1 - CHUNK_TIME_SMOOTHING) * slot.chunk_s + CHUNK_TIME_SMOOTHING * dt
            timings = {**reply["timings"], "call": dt}
            slot.player.push_chunk(reply["frames"], reply["poses"], reply["velocities"], reply["index"],
                                   reply["first_frame"], reply["seq"], timings)
            slot.frames_ready.set()
            # fleet only: which replica made the chunk, and a hash of its frames (clients may ignore it)
            await send_json(slot, {"type": "chunk", "chunk": reply["index"], "replica": reply["replica"],
                                   "digest": reply["digest"], "ms": round(dt * 1000.0, 2),
                                   "engine_ms": round(reply["timings"]["engine"] * 1000.0, 2)})

    def start_loops(self) -> None:
        for t in self.slot.tasks:
            t.cancel()
        self.slot.running = True
        self.slot.tasks = [asyncio.create_task(self._guard(self.generate_loop())),
                           asyncio.create_task(self._guard(display_loop(self, self.slot)))]

    async def _guard(self, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except EngineRefused as e:
            self.slot.running = False
            await send_json(self.slot, error(e.code, str(e)))
        except Exception as e:  # noqa: BLE001 - reported to the client, the ingress goes on
            self.slot.running = False
            await send_json(self.slot, {"type": "error", "code": "engine", "message": f"generation stopped: {e}"})

    async def stop_loops(self) -> None:
        self.slot.running = False
        for t in self.slot.tasks:
            t.cancel()
        await asyncio.gather(*self.slot.tasks, return_exceptions=True)
        self.slot.tasks = []

    async def show_input(self, yaw_pitch=(0.0, 0.0)) -> None:
        if self.slot.player is not None:
            await send_shown(self, self.slot, self.slot.player.on_input(self.keys, yaw_pitch, self.seq))


def need_started(relay: Relay) -> None:
    if not relay.started:
        raise ProtocolError("not_started", "no session yet; send {\"op\": \"start\"} or {\"op\": \"resume\", \"id\": ...} first")
