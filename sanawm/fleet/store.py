"""Migration snapshots: the last saved state of every live session, in a directory all replicas reach.

A replica saves a session every N chunks and when it drains. Each save goes to a fresh stem
(``mig-<session>-<chunk>``) and only then does the pointer ``mig-<session>.latest`` move to it (atomic
rename), so a replica that dies mid-save leaves the previous snapshot intact. The pointer keeps the two
newest snapshots: a replica can die after saving chunk c but before its reply for chunk c-1 reached the
ingress, and then the ingress asks for chunk c-1, which only the older snapshot can give. User snapshots (the
``snapshot`` op, idle retirement) use the plain ids of ``sanawm serve`` in the same directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..runtime.live import LiveSession
from ..serve.manager import ID_PATTERN

PREFIX = "mig-"
KEEP = 2  # snapshots kept per session (see above)


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
        """Save ``live`` as the newest migration snapshot of ``sid``; returns it as {"stem", "chunk"}."""
        kept = self.snapshots(sid)
        stem = f"{PREFIX}{sid}-{live.chunks_done}"
        if kept and kept[0]["stem"] == stem:
            return kept[0]  # nothing generated since the last save
        live.save(self.root / stem)
        new = {"stem": stem, "chunk": live.chunks_done}
        pointer = self._pointer(sid)
        tmp = pointer.with_name(pointer.name + ".tmp")
        tmp.write_text(json.dumps([new, *kept][:KEEP]))
        os.replace(tmp, pointer)
        for old in kept[KEEP - 1:]:
            self._remove_stem(old["stem"])
        return new

    def snapshots(self, sid: str) -> list[dict]:
        """The kept migration snapshots of ``sid``, newest first."""
        pointer = self._pointer(sid)
        return json.loads(pointer.read_text()) if pointer.is_file() else []

    def latest(self, sid: str) -> dict | None:
        kept = self.snapshots(sid)
        return kept[0] if kept else None

    def load(self, sid: str, runtime, at_most: int | None = None) -> LiveSession | None:
        """The newest migration snapshot of ``sid`` at or before chunk ``at_most``, restored on ``runtime``."""
        for snap in self.snapshots(sid):
            if at_most is None or snap["chunk"] <= at_most:
                return LiveSession.restore(self.root / snap["stem"], runtime)
        return None

    def forget(self, sid: str) -> None:
        kept = self.snapshots(sid)
        self._pointer(sid).unlink(missing_ok=True)
        for snap in kept:
            self._remove_stem(snap["stem"])

    def _remove_stem(self, stem: str) -> None:
        for ext in (".json", ".npz"):
            (self.root / (stem + ext)).unlink(missing_ok=True)

    def size_bytes(self, sid: str) -> int:
        record = self.latest(sid)
        if record is None:
            return 0
        return sum((self.root / (record["stem"] + ext)).stat().st_size for ext in (".json", ".npz"))
