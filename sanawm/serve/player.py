"""What a session shows, frame by frame: generated frames in order, timewarped while a key press is newer.

Generated chunks are queued; the server shows one frame per tick (1/fps). When an input arrives that the
queued frames do not reflect (their sequence number is older), a *preview* camera starts at the pose and
velocity of the last shown frame and integrates the newest keys with the session's own rig (the same
easing), one step per tick; every shown frame is warped from the pose it was generated at to the preview
pose. The first generated frame whose chunk read that input ends the preview, unwarped: the generated
chunk replaces the reprojection. An input also produces one frame at once (the last frame warped one
step ahead), so a key moves the view without waiting for the next tick.

Pure logic, no I/O: ``tick`` and ``on_input`` return ``Shown`` records (image, pose, kind, seq); the server
warps (``render``) and encodes them off the event loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..runtime.steering import CameraRig
from .reproject import reproject


@dataclass
class QueuedFrame:
    image: np.ndarray  # [h, w, 3] uint8
    pose: np.ndarray  # (4, 4) c2w it was generated at
    velocity: np.ndarray  # (4,) the rig's velocity there
    chunk: int
    frame: int  # index in the clip
    seq: int  # newest input its chunk reflects
    timings: dict


@dataclass
class Shown:
    kind: str  # "gen" (a generated frame as is) or "reproj" (warped to the preview camera)
    source: QueuedFrame
    pose: np.ndarray  # the camera it is shown from
    seq: int  # newest input it reflects

    def render(self, K: np.ndarray) -> np.ndarray:
        if self.kind == "gen":
            return self.source.image
        return reproject(self.source.image, K, self.source.pose, self.pose)


class Player:
    def __init__(self, rig_state: dict):
        self.rig_state = rig_state  # style / easing / fps of the session's rig, for the preview camera
        self.queue: deque[QueuedFrame] = deque()
        self.last: QueuedFrame | None = None  # the last generated frame shown
        self.preview: CameraRig | None = None
        self.keys: frozenset = frozenset()
        self.mouse = (0.0, 0.0)  # turn (degrees) the preview applies on its next step
        self.seq = 0  # newest input seen
        self.stepped_ahead = False  # on_input already took this tick's preview step

    @property
    def queued(self) -> int:
        return len(self.queue)

    def push_chunk(self, frames, poses, velocities, chunk: int, first_frame: int, seq: int, timings: dict) -> None:
        for i, img in enumerate(frames):
            self.queue.append(QueuedFrame(img, poses[i], velocities[i], chunk, first_frame + i, seq,
                                          timings if i == 0 else {}))

    def _start_preview(self) -> None:
        rig = CameraRig.from_state_dict(self.rig_state)
        self.preview = rig.place(self.last.pose, self.last.velocity)

    def _advance(self) -> None:
        self.preview.step(self.keys, *self.mouse)
        self.mouse = (0.0, 0.0)

    def on_input(self, keys: frozenset, mouse_deg=(0.0, 0.0), seq: int = 0) -> Shown | None:
        """An input arrived: fold it into the preview and return a frame to show now (None before any frame)."""
        self.keys, self.seq = keys, max(self.seq, seq)
        self.mouse = (self.mouse[0] + mouse_deg[0], self.mouse[1] + mouse_deg[1])
        if self.last is None:
            return None
        if self.preview is None:
            self._start_preview()
        self._advance()
        self.stepped_ahead = True
        return Shown("reproj", self.last, self.preview.pose, self.seq)

    def tick(self) -> Shown | None:
        """One display period: the next generated frame (warped while a newer input is pending), or the last
        frame warped to the advancing preview camera when none is queued. None when there is nothing new."""
        if self.preview is not None and not self.stepped_ahead:
            self._advance()
        self.stepped_ahead = False
        nxt = self.queue.popleft() if self.queue else None
        if nxt is not None:
            self.last = nxt
            if self.preview is not None and nxt.seq >= self.seq:
                self.preview = None  # the generated chunk reflects the newest input: it replaces the preview
            if self.preview is None:
                return Shown("gen", nxt, nxt.pose, nxt.seq)
            return Shown("reproj", nxt, self.preview.pose, self.seq)
        if self.preview is not None and self.last is not None:
            return Shown("reproj", self.last, self.preview.pose, self.seq)
        return None
