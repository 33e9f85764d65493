"""The migration store's pointer: the two furthest snapshots, whoever saved them, and clean removal."""

import json

import pytest

from sanawm.fleet.store import SnapshotStore

SID = "session-abcd"


class FakeLive:
    """What ``SnapshotStore.save`` needs of a live session: its chunk count and ``save(stem)``."""

    def __init__(self, chunks):
        self.chunks_done = chunks

    def save(self, stem):
        for ext in (".json", ".npz"):
            stem.with_name(stem.name + ext).write_text(json.dumps({"chunk": self.chunks_done}))


def names(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_pointer_keeps_the_two_furthest_and_forget_removes_every_file(tmp_path):
    store = SnapshotStore(tmp_path)
    for c in (0, 2, 4):
        store.save(SID, FakeLive(c))
    assert [s["chunk"] for s in store.snapshots(SID)] == [4, 2]
    assert not (tmp_path / f"mig-{SID}-0.npz").exists()
    store.save(SID, FakeLive(3))  # a stopping replica drains a state the router has already moved past
    assert [s["chunk"] for s in store.snapshots(SID)] == [4, 3]
    assert not (tmp_path / f"mig-{SID}-2.npz").exists()
    store.save(SID, FakeLive(1))  # behind both: not kept
    assert [s["chunk"] for s in store.snapshots(SID)] == [4, 3] and not (tmp_path / f"mig-{SID}-1.npz").exists()
    assert store.save(SID, FakeLive(4)) == {"stem": f"mig-{SID}-4", "chunk": 4}  # again: nothing new
    (tmp_path / f"mig-{SID}-9.npz").write_text("stray")  # a stem no pointer names
    (tmp_path / "mig-session-other.latest").write_text("[]")
    store.forget(SID)
    assert names(tmp_path) == ["mig-session-other.latest"]


def test_load_skips_a_snapshot_removed_under_it(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save(SID, FakeLive(2))
    (tmp_path / f"mig-{SID}-2.json").unlink()
    assert store.load(SID, runtime=None) is None  # nothing usable: None, not an exception
    assert store.load("session-none", runtime=None) is None
    with pytest.raises(ValueError, match="malformed"):
        store.load("../etc", runtime=None)
