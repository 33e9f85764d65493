"""The engine deployment: each replica loads the bundle once and hosts up to K live sessions.

Every method takes the session id first; the router (``router.py``) sends each call to the replica that
holds the session. Expected refusals come back as ``{"error": code, "message": ...}`` dicts (they cross the
Ray boundary unchanged); exceptions are bugs. A call for a session this replica does not hold restores
it from its newest migration snapshot (``store.py``): that is how sessions move after a replica dies or
drains. The caller then replays the chunks generated after that snapshot with their logged inputs
(``step`` reports where the restored session stands and a digest of every chunk's frames).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..runtime.live import DEFAULT_MAX_FRAMES, LiveSession
from . import DEFAULT_SNAPSHOT_EVERY
from .store import SnapshotStore, check_id


def busy(message: str) -> dict:
    return {"error": "busy", "message": message}


def frames_digest(frames) -> str:
    return hashlib.sha256(frames.tobytes()).hexdigest()[:32]


def replica_name() -> str:
    """This replica's id in Serve (the unique part of its actor name); a process tag outside Serve."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not inside a Serve replica (unit tests, bench)
        import os

        return f"local-{os.getpid()}"


@dataclass
class Hosted:
    live: LiveSession | None = None  # None: admitted at connect, not started yet
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one call at a time per session
    busy: threading.Lock = field(default_factory=threading.Lock)  # held by the thread generating a chunk: drain waits


class FleetEngine:
    def __init__(self, bundle, backend: str = "onnxruntime", *, options: dict | None = None, max_sessions: int = 2,
                 snapshot_dir, snapshot_every: int = DEFAULT_SNAPSHOT_EVERY, max_frames: int = DEFAULT_MAX_FRAMES,
                 encoder: dict | None = None):
        from ..runtime import Runtime

        if max_sessions < 1 or snapshot_every < 1:
            raise ValueError(f"max_sessions and snapshot_every must be >= 1; got {max_sessions}, {snapshot_every}")
        self.runtime = Runtime.load(Path(bundle), backend, **(options or {}))
        if not self.runtime.has_decoder or not self.runtime.has_encoder:
            raise ValueError(f"bundle {bundle} lacks the VAE encoder/decoder; the fleet needs images in and out")
        self.max_sessions, self.snapshot_every, self.max_frames = max_sessions, snapshot_every, max_frames
        self.store = SnapshotStore(snapshot_dir)
        self.sessions: dict[str, Hosted] = {}
        self.replica = replica_name()
        self.pool = ThreadPoolExecutor(max_workers=max_sessions, thread_name_prefix="sanawm-fleet")
        self.encode = None
        if encoder:
            from ..serve.cli import _prompt_encoder

            self.encode = _prompt_encoder(SimpleNamespace(tiny_encoder=bool(encoder.get("tiny")),
                                                          stage1_encoder=encoder.get("stage1_encoder")), self.runtime)
        self._prompts: dict[str, object] = {}
        self.draining = False  # set by drain(): this replica is stopping and takes no session any more

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _draining(self) -> dict:
        return {"error": "draining", "message": f"replica {self.replica} is stopping; the call goes elsewhere"}

    def _admit(self, sid: str) -> dict | None:
        check_id(sid)
        if self.draining:
            return self._draining()
        if sid not in self.sessions and len(self.sessions) >= self.max_sessions:
            return busy(f"replica {self.replica} hosts {len(self.sessions)} of {self.max_sessions} sessions")
        self.sessions.setdefault(sid, Hosted())
        return None

    def _info(self, sid: str) -> dict:
        live = self.sessions[sid].live
        return {"replica": self.replica, "image_hw": list(live.image_hw), "intrinsics": live.intrinsics,
                "max_frames": live.max_frames, "chunks": live.chunks_done, "frames": live.num_frames,
                "seq": live.controls.seq, "keys": "".join(sorted(live.controls.keys)), "rig": live.rig.state_dict(),
                "pose": live.pose, "at_limit": live.at_limit}

    # ------------------------------------------------------------------ the API the ingress calls
    def describe(self) -> dict:
        return {"replica": self.replica, "image_hw": list(self.runtime.image_hw), "max_sessions": self.max_sessions,
                "sessions": sorted(self.sessions), "prompt_encoder": self.encode is not None}

    async def reserve(self, sid: str) -> dict:
        """Hold a place for a session about to start (the WebSocket is open); a busy dict when full."""
        return self._admit(sid) or {"replica": self.replica}

    async def open(self, sid: str, image, prompt_text: str, seed: int) -> dict:
        refused = self._admit(sid)
        if refused:
            return refused
        prompt = await self._prompt(prompt_text)
        live = await self._run(lambda: LiveSession(self.runtime, image, prompt, seed, max_frames=self.max_frames))
        return await self._host(sid, live)

    async def restore(self, sid: str, snapshot_id: str) -> dict:
        """Continue a user snapshot (the ``resume`` op) as session ``sid``."""
        refused = self._admit(sid)
        if refused:
            return refused
        check_id(snapshot_id)
        try:
            live = await self._run(LiveSession.restore, self.store.root / snapshot_id, self.runtime)
        except ValueError as e:
            self.sessions.pop(sid, None)
            return {"error": "bad_snapshot", "message": str(e)}
        live.max_frames = min(live.max_frames, self.max_frames)
        return await self._host(sid, live)

    async def _host(self, sid: str, live: LiveSession) -> dict:
        hosted = self.sessions[sid]
        async with hosted.lock:
            hosted.live = live
            await self._run(self.store.save, sid, live)  # resumable from the very start
        return self._info(sid)

    async def step(self, sid: str, entry: dict, chunk: int) -> dict:
        """Generate chunk ``chunk`` with the controls ``entry``. A session restored from a migration snapshot
        behind ``chunk`` answers ``{"at": c, ...}`` instead: the caller replays chunks c..chunk-1 first."""
        hosted = self.sessions.get(sid)
        migrated = hosted is None or hosted.live is None
        if migrated:
            refused = self._admit(sid)
            if refused:
                return refused
            hosted = self.sessions[sid]
            async with hosted.lock:
                hosted.live = await self._run(self.store.load, sid, self.runtime, chunk)
                if hosted.live is None:
                    self.sessions.pop(sid, None)
                    return {"error": "no_session", "message": f"session {sid} has no snapshot to resume from; start anew"}
        live = hosted.live
        async with hosted.lock:
            if live.chunks_done != chunk:
                if live.chunks_done > chunk:
                    return {"error": "bad_request", "message": f"chunk {chunk} is behind the session ({live.chunks_done})"}
                return {"at": live.chunks_done, "replica": self.replica, "migrated": migrated}
            if live.at_limit:
                return {"error": "max_length", "message": f"the session reached its maximum length of {live.max_frames} frames"}
            out = await self._run(self._generate, sid, hosted, entry)
            if out is None:
                return self._draining()
        return {"replica": self.replica, "index": out.index, "frames": out.frames, "poses": out.poses,
                "velocities": out.velocities, "first_frame": out.first_frame, "seq": out.seq, "timings": out.timings,
                "digest": frames_digest(out.frames), "at_limit": live.at_limit, "migrated": migrated}

    def _generate(self, sid: str, hosted: Hosted, entry: dict):
        """One chunk, then the periodic snapshot (engine thread; ``busy`` keeps a drain from saving mid-chunk)."""
        with hosted.busy:
            if self.draining:  # saved and handed on already: generating here would fork the session
                return None
            t0 = time.perf_counter()
            out = hosted.live.step(entry)
            if hosted.live.chunks_done % self.snapshot_every == 0:
                t1 = time.perf_counter()
                self.store.save(sid, hosted.live)
                out.timings["snapshot"] = time.perf_counter() - t1
            out.timings["engine"] = time.perf_counter() - t0  # this call's time on the replica, queueing excluded
        return out

    async def snapshot(self, sid: str) -> dict:
        hosted = self.sessions.get(sid)
        if hosted is None or hosted.live is None:
            return {"error": "not_started", "message": f"no live session {sid} on replica {self.replica}"}
        snap = secrets.token_urlsafe(12)
        async with hosted.lock:
            await self._run(hosted.live.save, self.store.root / snap)
        return {"id": snap}

    async def retire(self, sid: str) -> dict:
        """Idle: save a user snapshot, then free the session."""
        out = await self.snapshot(sid)
        await self.close(sid)
        return out

    async def close(self, sid: str) -> dict:
        hosted = self.sessions.pop(sid, None)
        if hosted is not None:
            async with hosted.lock:
                hosted.live = None
        self.store.forget(sid)
        return {"closed": sid}

    def drain(self) -> list[str]:
        """Save every hosted session for migration and free them (scale-down, redeploy, shutdown). A chunk
        being generated finishes first, so the snapshot is the newest state."""
        self.draining = True
        moved = []
        for sid, hosted in list(self.sessions.items()):
            with hosted.busy:
                if hosted.live is not None:
                    self.store.save(sid, hosted.live)
                    moved.append(sid)
        self.sessions.clear()
        return moved

    async def _prompt(self, text: str):
        from ..runtime.prompt import PromptEmbeddings

        if not text or self.encode is None:
            return PromptEmbeddings.zeros(self.runtime.cfg)
        if text not in self._prompts:
            self._prompts[text] = await self._run(self.encode, text)
        return self._prompts[text]

    def __del__(self):
        # Serve calls this when it stops the replica (after its requests in flight have finished)
        try:
            self.drain()
        except Exception:  # noqa: BLE001 - never raise from a destructor; the periodic snapshots remain
            pass
