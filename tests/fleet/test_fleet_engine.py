"""The engine deployment's class without Ray: admission, migration snapshots every N chunks, and a session
restored on a fresh replica continuing bit-identically (tiny bundle, ONNX Runtime CPU)."""

import asyncio

import numpy as np
import pytest

from sanawm.fleet.engine import FleetEngine
from sanawm.fleet.store import SnapshotStore
from sanawm.serve.images import scene_image

pytestmark = pytest.mark.slow  # needs the exported tiny bundle

SID, OTHER = "session-aaaa", "session-bbbb"


def entry(c):  # a different input every chunk, so a replay with the wrong inputs would show
    return {"seq": c, "keys": "wd"[c % 2], "mouse": [1.5 * c, -0.5]}


def engine(bundle, snaps, **kw):
    return FleetEngine(bundle, max_sessions=kw.pop("max_sessions", 1), snapshot_dir=snaps, **kw)


def test_migration_continues_bit_identically(tiny_bundle, tmp_path):
    async def body():
        a = engine(tiny_bundle, tmp_path, snapshot_every=4)
        info = await a.open(SID, scene_image("checker", tuple(a.runtime.image_hw)), "", 3)
        assert info["chunks"] == 0 and SnapshotStore(tmp_path).latest(SID)["chunk"] == 0  # resumable from the start
        assert (await a.reserve(OTHER))["error"] == "busy"  # K = 1
        straight = [await a.step(SID, entry(c), c) for c in range(5)]
        assert [r["index"] for r in straight] == list(range(5)) and not any(r["migrated"] for r in straight)
        assert [s["chunk"] for s in SnapshotStore(tmp_path).snapshots(SID)] == [4, 0]  # every 4 chunks, two kept
        straight += [await a.step(SID, entry(c), c) for c in range(5, 8)]
        assert [s["chunk"] for s in SnapshotStore(tmp_path).snapshots(SID)] == [8, 4]
        assert len(list(tmp_path.glob("mig-*.npz"))) == 2  # the one at 0 was removed

        # a new replica; the reply for chunk 7 never reached the caller, so it asks for chunk 7 again: the
        # snapshot at 8 is ahead of it, the one at 4 is used and chunks 4-6 are replayed
        b = engine(tiny_bundle, tmp_path, snapshot_every=4)
        told = await b.step(SID, entry(7), 7)
        assert told["at"] == 4 and told["migrated"]
        for c in (4, 5, 6):
            again = await b.step(SID, entry(c), c)
            assert again["digest"] == straight[c]["digest"]
            np.testing.assert_array_equal(again["frames"], straight[c]["frames"])
        after = await b.step(SID, entry(7), 7)
        assert after["digest"] == straight[7]["digest"] and after["replica"] == b.replica
        np.testing.assert_array_equal(after["poses"], straight[7]["poses"])

        wrong = await b.step(SID, entry(9), 2)  # behind the session: refused, not silently accepted
        assert wrong["error"] == "bad_request"
        await b.close(SID)
        assert SnapshotStore(tmp_path).latest(SID) is None
        assert (await b.step(SID, entry(8), 8))["error"] == "no_session"

    asyncio.run(body())


def test_drain_saves_and_user_snapshots_resume(tiny_bundle, tmp_path):
    async def body():
        a = engine(tiny_bundle, tmp_path, snapshot_every=100, max_sessions=2)
        await a.open(SID, scene_image("road", tuple(a.runtime.image_hw)), "", 0)
        first = [await a.step(SID, entry(c), c) for c in range(3)]
        user = (await a.snapshot(SID))["id"]
        assert a.drain() == [SID] and not a.sessions
        assert (await a.reserve(OTHER))["error"] == "draining"  # a stopping replica takes nothing new
        assert SnapshotStore(tmp_path).latest(SID)["chunk"] == 3  # the drain saved the newest state

        b = engine(tiny_bundle, tmp_path, max_sessions=2)
        info = await b.restore(OTHER, user)
        assert info["chunks"] == 3
        x, y = await b.step(SID, entry(3), 3), await b.step(OTHER, entry(3), 3)
        assert x["migrated"] and x["index"] == 3  # the drained session goes on where it was: nothing to replay
        assert x["digest"] == y["digest"]  # the user snapshot and the drain snapshot hold the same state
        assert (await b.restore("session-cccc", "no-such-snap"))["error"] == "busy"  # K = 2 are running
        await b.close(OTHER)
        assert (await b.restore("session-cccc", "no-such-snap"))["error"] == "bad_snapshot"
        assert sorted(b.sessions) == [SID]  # the refused restore left no place taken
        assert first[0]["digest"] != first[1]["digest"]

    asyncio.run(body())
