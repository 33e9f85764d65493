"""Migration snapshots: the last saved state of every live session, in a directory all replicas reach.

A replica saves a session every N chunks and when it drains. Each save goes to a fresh stem
(``mig-<session>-<chunk>``) and only then does the pointer ``mig-<session>.latest`` move to it (atomic
rename), so a replica that dies mid-save leaves the previous snapshot intact. User snapshots (the
``snapshot`` op, idle retirement) use the plain ids of ``sanawm serve`` in the same directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..runtime.live import LiveSession
from ..serve.manager import ID_PATTERN

PREFIX = "mig-"


def check_id(sid: str) -> str:
    if not ID_PATTERN.match(sid):
        raise ValueError(f"id {sid!r} is malformed; ids are 8-32 characters of A-Z a-z 0-9 _ -")
    return sid


class SnapshotStore:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _pointer(self, sid: str) -> Path:
        return self.root / f"{PREFIX}{check_id(sid)}.latest"

    def save(self, sid: str, live: LiveSession) -> dict:
        """Save ``live`` as the newest migration snapshot of ``sid``; returns its pointer record."""
        pointer = self._pointer(sid)
        old = self.latest(sid)
        stem = f"{PREFIX}{sid}-{live.chunks_done}"
        if old is not None and old["stem"] == stem:
            return old  # nothing generated since the last save
        live.save(self.root / stem)
        record = {"stem": stem, "chunk": live.chunks_done}
        tmp = pointer.with_name(pointer.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, pointer)
        if old is not None:
            self._remove_stem(old["stem"])
        return record

    def latest(self, sid: str) -> dict | None:
        pointer = self._pointer(sid)
        if not pointer.is_file():
            return None
        return json.loads(pointer.read_text())

    def load(self, sid: str, runtime) -> tuple[LiveSession, int] | None:
        """The newest migration snapshot of ``sid`` restored on ``runtime`` and its chunk, or None."""
        record = self.latest(sid)
        if record is None:
            return None
        return LiveSession.restore(self.root / record["stem"], runtime), int(record["chunk"])

    def forget(self, sid: str) -> None:
        record = self.latest(sid)
        self._pointer(sid).unlink(missing_ok=True)
        if record is not None:
            self._remove_stem(record["stem"])

    def _remove_stem(self, stem: str) -> None:
        for ext in (".json", ".npz"):
            (self.root / (stem + ext)).unlink(missing_ok=True)

    def size_bytes(self, sid: str) -> int:
        record = self.latest(sid)
        if record is None:
            return 0
        return sum((self.root / (record["stem"] + ext)).stat().st_size for ext in (".json", ".npz"))
