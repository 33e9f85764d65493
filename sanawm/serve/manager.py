"""Sessions of ``sanawm serve``: admission, limits, snapshots by id, forks, idle reaping.

A *slot* is one live session and its WebSocket (attached, or detached after a disconnect or a fork). The
manager admits at most ``max_sessions`` slots (``Busy`` -> HTTP 503 with Retry-After), runs engine work on
a thread pool (the event loop never blocks on a chunk), and retires a slot that has had no client message
for ``idle_timeout_s``: it snapshots it (``LiveSession.save``), frees it and tells the client the id to
resume from.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.live import LiveSession
from .player import Player
from .reproject import intrinsics_matrix

RETRY_AFTER_S = 30
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,32}$")


@dataclass
class Limits:
    max_sessions: int = 4
    idle_timeout_s: float = 300.0
    max_seconds: float = 60.0  # clip length bound of one session
    max_message_bytes: int = 4096  # one control message; up to 64x this is refused with an error, more closes
    max_upload_bytes: int = 8 * 2**20
    max_uploads: int = 64  # kept in memory, oldest dropped first

    @property
    def max_frames(self) -> int:
        return int(round(self.max_seconds * 16)) + 1


class Busy(Exception):
    """No free session slot; the HTTP layer answers 503 with Retry-After."""


def default_snapshot_dir() -> Path:
    root = os.environ.get("SANAWM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sanawm") / "snapshots"


@dataclass
class Slot:
    id: str
    live: LiveSession | None = None
    player: Player | None = None
    K: np.ndarray | None = None
    fps: float = 16.0
    running: bool = False
    ws: object | None = None  # the attached aiohttp WebSocketResponse
    last_active: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one engine call at a time per session
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the generator may have work (frames shown, go)
    frames_ready: asyncio.Event = field(default_factory=asyncio.Event)  # a chunk was queued (unpaced display)
    tasks: list = field(default_factory=list)
    chunk_s: float = 0.0  # moving average of one chunk's engine time
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def attach_live(self, live: LiveSession, fps: float) -> None:
        self.live, self.fps = live, float(fps)
        self.player = Player(live.rig.state_dict())
        self.player.seq = live.controls.seq
        frame_hw = live.image_hw  # decoded frames have the model frame's size
        self.K = intrinsics_matrix(live.intrinsics, live.image_hw, frame_hw)


class SessionManager:
    def __init__(self, runtime, limits: Limits, snapshot_dir=None, prompt_encoder=None):
        self.runtime, self.limits = runtime, limits
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else default_snapshot_dir()
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.prompt_encoder = prompt_encoder  # text -> prompt embeddings (blocking), or None: zeros
        self.slots: dict[str, Slot] = {}
        self.engine_pool = ThreadPoolExecutor(max_workers=max(1, limits.max_sessions), thread_name_prefix="sanawm-engine")
        self.render_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sanawm-render")
        self.uploads: dict[str, np.ndarray] = {}
        self._prompts: dict[str, object] = {}

    # ------------------------------------------------------------------ admission
    def admit(self) -> Slot:
        if len(self.slots) >= self.limits.max_sessions:
            raise Busy(f"all {self.limits.max_sessions} session slots are busy; retry in {RETRY_AFTER_S} s")
        slot = Slot(secrets.token_urlsafe(9))
        self.slots[slot.id] = slot
        return slot

    async def free(self, slot: Slot) -> None:
        self.slots.pop(slot.id, None)
        slot.running = False
        for t in slot.tasks:
            t.cancel()
        slot.tasks.clear()
        slot.live, slot.player = None, None

    def add_upload(self, image: np.ndarray) -> str:
        uid = secrets.token_urlsafe(9)
        self.uploads[uid] = image
        while len(self.uploads) > self.limits.max_uploads:
            self.uploads.pop(next(iter(self.uploads)))
        return uid

    # ------------------------------------------------------------------ engine work (off the event loop)
    async def in_engine(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.engine_pool, fn, *args)

    async def prompt(self, text: str):
        from ..runtime.prompt import PromptEmbeddings

        if not text or self.prompt_encoder is None:
            return PromptEmbeddings.zeros(self.runtime.cfg)
        if text not in self._prompts:
            self._prompts[text] = await self.in_engine(self.prompt_encoder, text)
        return self._prompts[text]

    async def new_live(self, image: np.ndarray, prompt, seed: int) -> LiveSession:
        return await self.in_engine(lambda: LiveSession(self.runtime, image, prompt, seed,
                                                        max_frames=self.limits.max_frames))

    async def snapshot(self, slot: Slot) -> str:
        sid = secrets.token_urlsafe(12)
        async with slot.lock:
            await self.in_engine(slot.live.save, self.snapshot_dir / sid)
        return sid

    async def restore(self, sid: str) -> LiveSession:
        if not ID_PATTERN.match(sid):
            raise ValueError(f"snapshot id {sid!r} is malformed; ids are 8-32 characters of A-Z a-z 0-9 _ -")
        live = await self.in_engine(LiveSession.restore, self.snapshot_dir / sid, self.runtime)
        live.max_frames = min(live.max_frames, self.limits.max_frames)
        return live

    async def fork(self, slot: Slot) -> Slot:
        twin = self.admit()
        try:
            async with slot.lock:
                live = await self.in_engine(slot.live.fork)
        except BaseException:
            self.slots.pop(twin.id, None)
            raise
        twin.attach_live(live, slot.fps)
        # frames generated but not shown yet, and the last one shown: the fork plays on from the same picture and
        # can reproject at once (the engine lock is released, but no chunk was added since the copy)
        twin.player.queue.extend(slot.player.queue)
        twin.player.last = slot.player.last
        return twin

    def idle_slots(self, now: float | None = None) -> list[Slot]:
        now = time.monotonic() if now is None else now
        return [s for s in self.slots.values() if now - s.last_active > self.limits.idle_timeout_s]

    def describe(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for s in self.slots.values():
            d = {"id": s.id, "attached": s.ws is not None, "running": s.running, "idle_s": round(now - s.last_active, 3)}
            if s.live is not None:
                d.update(chunks=s.live.chunks_done, frames=s.live.num_frames, pose=np.asarray(s.live.pose).ravel().tolist(),
                         keys="".join(sorted(s.live.controls.keys)))
            out.append(d)
        return out

    def close(self) -> None:
        self.engine_pool.shutdown(wait=False, cancel_futures=True)
        self.render_pool.shutdown(wait=False, cancel_futures=True)
