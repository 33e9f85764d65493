"""Migration snapshots: the last saved state of every live session, in a directory all replicas reach.

A replica saves a session every N chunks and when it drains. Each save goes to a fresh stem
(``mig-<session>-<chunk>``) and only then does the pointer ``mig-<session>.latest`` move to it (atomic
rename), so a replica that dies mid-save leaves the previous snapshot intact. The pointer keeps the two
furthest snapshots: a replica can die after saving chunk c but before its reply for chunk c-1 reached the
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
        """Save ``live`` as a migration snapshot of ``sid``; returns it as {"stem", "chunk"}.

        Two replicas may save one session for a moment (a stopping replica drains a session the router has
        already moved on); every snapshot is a valid state of the same deterministic session, so the pointer
        simply keeps the ``KEEP`` furthest ones."""
        kept = self.snapshots(sid)
        stem = f"{PREFIX}{sid}-{live.chunks_done}"
        new = {"stem": stem, "chunk": live.chunks_done}
        if any(k["stem"] == stem for k in kept):
            return new  # nothing generated since that save
        live.save(self.root / stem)
        merged = sorted([new, *kept], key=lambda k: -k["chunk"])[:KEEP]
        pointer = self._pointer(sid)
        tmp = pointer.with_name(f"{pointer.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged))
        os.replace(tmp, pointer)
        for old in [new, *kept]:
            if old not in merged:
                self._remove_stem(old["stem"])
        return new

    def snapshots(self, sid: str) -> list[dict]:
        """The kept migration snapshots of ``sid``, furthest first."""
        pointer = self._pointer(sid)
        return json.loads(pointer.read_text()) if pointer.is_file() else []

    def latest(self, sid: str) -> dict | None:
        kept = self.snapshots(sid)
        return kept[0] if kept else None

    def load(self, sid: str, runtime, at_most: int | None = None) -> LiveSession | None:
        """The furthest migration snapshot of ``sid`` at or before chunk ``at_most``, restored on ``runtime``."""
        for snap in self.snapshots(sid):
            if at_most is None or snap["chunk"] <= at_most:
                try:
                    return LiveSession.restore(self.root / snap["stem"], runtime)
                except ValueError:  # removed by a concurrent save of another replica: take the next one
                    continue
        return None

    def forget(self, sid: str) -> None:
        self._pointer(sid).unlink(missing_ok=True)
        for path in self.root.glob(f"{PREFIX}{check_id(sid)}-*"):  # every stem, a stray one of a drain included
            path.unlink(missing_ok=True)

    def _remove_stem(self, stem: str) -> None:
        for ext in (".json", ".npz"):
            (self.root / (stem + ext)).unlink(missing_ok=True)
