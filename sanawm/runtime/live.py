"""``LiveSession``: a ``Session`` steered chunk by chunk while it runs.

    live = LiveSession(runtime, first_frame, prompt, seed=0)
    live.set_keys("w")                 # any thread, any time; the latest state wins
    out = live.step()                  # next chunk, its camera built from the state at this moment
    live.save("snap/abc")              # abc.npz (Session.save) + abc.json (rig, controls, action log)
    live2 = LiveSession.restore("snap/abc", runtime); twin = live.fork()
    again = list(LiveSession.replay(runtime, first_frame, prompt, 0, live.log))   # the same chunks

Inputs that arrive while a chunk runs only change the controls; ``step`` reads them once, when it builds the
next chunk's camera, so several key events during one chunk collapse into the last one ("latest state
wins"). The action log holds, per chunk, exactly what was read (keys + mouse turn, or an explicit c2w
segment), so (bundle, seed, first frame, prompt, log) replays a session. The clip length is bounded by
``max_frames``; ``step`` refuses past it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..camera.conditioning import MODEL_IMAGE_HW
from .noise import NoiseSource
from .prompt import coerce_prompt
from .scheduler import Conditioning
from .session import Session
from .steering import TEMPORAL_STRIDE, CameraRig, chunk_camera, chunk_frames, parse_keys

DEFAULT_HFOV_DEG = 60.0  # the CLI's default lens (sanawm generate / demo)
DEFAULT_MAX_FRAMES = 961  # 60 s at 16 fps: upstream's longest benchmark clip
LIVE_FORMAT = "sanawm-live"
LIVE_FORMAT_VERSION = 1


def default_intrinsics(image_hw, hfov_deg: float = DEFAULT_HFOV_DEG) -> list[float]:
    h, w = image_hw
    f = 0.5 * w / np.tan(np.radians(hfov_deg) / 2)
    return [float(f), float(f), w / 2.0, h / 2.0]


@dataclass
class Controls:
    """The input state ``step`` reads: held keys, a pending mouse turn (degrees), or an explicit segment."""

    keys: frozenset = frozenset()
    mouse: tuple = (0.0, 0.0)  # (yaw, pitch) degrees, consumed by the next chunk
    segment: np.ndarray | None = None  # (k, 4, 4) c2w relative to the current pose, consumed by the next chunk
    seq: int = 0  # the client's sequence number of the newest input folded in


@dataclass
class LiveChunk:
    index: int
    frames: np.ndarray | None  # [F, H, W, 3] uint8 (None without a VAE decoder)
    latents: np.ndarray  # [1, C, n, h, w] refined latents
    poses: np.ndarray  # [F, 4, 4] c2w of the chunk's video frames (frame 0 = the first frame's camera)
    velocities: np.ndarray  # [F, 4] the rig's eased velocity at each frame (forward, strafe, yaw, pitch)
    first_frame: int  # index of the chunk's first video frame in the clip (the conditioning frame is 0)
    seq: int  # newest input sequence number this chunk reflects
    timings: dict = field(default_factory=dict)


class LiveSession:
    def __init__(self, runtime, first_frame_or_latent, prompt, seed: int = 0, *, intrinsics=None, style: str = "current",
                 easing: bool = True, max_frames: int = DEFAULT_MAX_FRAMES, _latent=None):
        self.runtime, self.seed = runtime, int(seed)
        self.image_hw = tuple(getattr(runtime, "image_hw", MODEL_IMAGE_HW))
        self.intrinsics = list(intrinsics) if intrinsics is not None else default_intrinsics(self.image_hw)
        self.rig = CameraRig(style=style, easing=easing)
        self.max_frames = int(max_frames)
        cfg = runtime.cfg
        if self.max_frames < 1 + chunk_frames(0, cfg.first_chunk_size):
            raise ValueError(f"max_frames = {max_frames} is shorter than one chunk "
                             f"({1 + chunk_frames(0, cfg.first_chunk_size)} frames); raise it")
        self._latent = _latent if _latent is not None else runtime.encode_first_frame(first_frame_or_latent)
        self._prompt = prompt
        self.session: Session | None = None
        self.poses = [np.eye(4)]  # c2w of every video frame so far (frame 0 = identity)
        self.controls = Controls()
        self.log: list[dict] = []
        self._lock = threading.Lock()  # controls are written by the server's event loop, read by the engine thread

    # ------------------------------------------------------------------ input (any thread; latest wins)
    def set_keys(self, keys, seq: int | None = None) -> None:
        held = parse_keys(keys)
        with self._lock:
            self.controls.keys = held
            self._bump(seq)

    def add_mouse(self, yaw_deg: float, pitch_deg: float, seq: int | None = None) -> None:
        if not (np.isfinite(yaw_deg) and np.isfinite(pitch_deg)):
            raise ValueError("mouse turn must be finite degrees")
        with self._lock:
            y, p = self.controls.mouse
            self.controls.mouse = (y + float(yaw_deg), p + float(pitch_deg))
            self._bump(seq)

    def set_segment(self, c2w, seq: int | None = None) -> None:
        """Explicit camera for the next chunk: (k, 4, 4) c2w relative to the current pose, k = the chunk's frames."""
        from ..camera.trajectory import as_c2w

        seg = as_c2w(c2w)
        if seg.shape[0] != self.next_chunk_frames:
            raise ValueError(f"the next chunk has {self.next_chunk_frames} video frames; the segment has {seg.shape[0]} poses")
        with self._lock:
            self.controls.segment = seg
            self._bump(seq)

    def _bump(self, seq):
        self.controls.seq = self.controls.seq + 1 if seq is None else max(self.controls.seq, int(seq))

    # ------------------------------------------------------------------ progress
    @property
    def chunks_done(self) -> int:
        return 0 if self.session is None else self.session.next_chunk

    def _bounds(self, c: int) -> tuple[int, int]:
        cfg = self.runtime.cfg
        return (0, cfg.first_chunk_size) if c == 0 else (cfg.first_chunk_size + (c - 1) * cfg.chunk_size,
                                                          cfg.first_chunk_size + c * cfg.chunk_size)

    @property
    def next_chunk_frames(self) -> int:
        return chunk_frames(*self._bounds(self.chunks_done))

    @property
    def num_frames(self) -> int:
        """Video frames so far, the conditioning frame included."""
        return len(self.poses)

    @property
    def at_limit(self) -> bool:
        return self.num_frames + self.next_chunk_frames > self.max_frames

    @property
    def pose(self) -> np.ndarray:
        return self.poses[-1]

    # ------------------------------------------------------------------ running
    def _take_controls(self) -> dict:
        """Read and consume the controls once (keys stay held; the mouse turn and a segment are used up)."""
        with self._lock:
            c = self.controls
            entry = {"seq": c.seq}
            if c.segment is not None:
                entry["c2w"] = c.segment.tolist()
            else:
                entry["keys"] = "".join(sorted(c.keys))
                entry["mouse"] = list(c.mouse)
            c.mouse, c.segment = (0.0, 0.0), None
        return entry

    def _advance(self, entry: dict) -> np.ndarray:
        n = self.next_chunk_frames
        if "c2w" in entry:
            return self.rig.follow(np.asarray(entry["c2w"], np.float64))
        return self.rig.roll(parse_keys(entry["keys"]), n, entry.get("mouse", (0.0, 0.0)))

    def step(self, entry: dict | None = None) -> LiveChunk:
        """Generate the next chunk with the current controls (or the logged ``entry``, for replay)."""
        if self.at_limit:
            raise ValueError(f"the session reached its maximum clip length ({self.max_frames} frames = "
                             f"{(self.max_frames - 1) / 16:.1f} s); start a new one or fork from a snapshot")
        t0 = time.perf_counter()
        entry = dict(entry) if entry is not None else self._take_controls()
        c = self.chunks_done
        s, e = self._bounds(c)
        new = self._advance(entry)
        all_poses = np.concatenate([np.stack(self.poses), new])
        cam = chunk_camera(all_poses, self.intrinsics, s, e, (self.runtime.cfg.latent_height, self.runtime.cfg.latent_width),
                           self.image_hw)
        if self.session is None:
            self.session = Session.start(self.runtime, self._latent, self._prompt, cam, seed=self.seed)
        else:
            self.session.extend_camera(cam)
        t1 = time.perf_counter()
        chunk = next(self.session)
        first = len(self.poses)
        self.poses.extend(new)
        self.log.append({"chunk": c, **entry})
        timings = {"camera": t1 - t0, **chunk.timings}
        return LiveChunk(c, chunk.frames, chunk.refined, new, np.stack(self.rig.trace), first, int(entry.get("seq", 0)),
                         timings)

    # ------------------------------------------------------------------ replay / fork / snapshot
    @classmethod
    def replay(cls, runtime, first_frame_or_latent, prompt, seed: int, log: list[dict], **options):
        """Re-run a session from its inputs and action ``log``: yields the same ``LiveChunk``s it produced."""
        live = cls(runtime, first_frame_or_latent, prompt, seed, **options)
        for entry in log:
            yield live.step(entry)

    def _meta(self) -> dict:
        with self._lock:
            c = self.controls
            controls = {"keys": "".join(sorted(c.keys)), "mouse": list(c.mouse), "seq": c.seq,
                        "segment": None if c.segment is None else c.segment.tolist()}
        return {"format": LIVE_FORMAT, "format_version": LIVE_FORMAT_VERSION, "seed": self.seed,
                "intrinsics": self.intrinsics, "image_hw": list(self.image_hw), "max_frames": self.max_frames,
                "rig": self.rig.state_dict(), "controls": controls, "log": self.log,
                "poses": np.stack(self.poses).tolist()}

    def _load_meta(self, meta: dict) -> None:
        self.rig = CameraRig.from_state_dict(meta["rig"])
        self.poses = list(np.array(meta["poses"], np.float64))
        self.log = [dict(e) for e in meta["log"]]
        c = meta["controls"]
        self.controls = Controls(frozenset(c["keys"]), tuple(c["mouse"]),
                                 None if c["segment"] is None else np.array(c["segment"]), int(c["seq"]))

    def save(self, stem) -> Path:
        """Snapshot to ``<stem>.json`` (rig, controls, log, poses) plus ``<stem>.npz`` (``Session.save``)."""
        stem = Path(stem)
        meta = self._meta()
        meta["started"] = self.session is not None
        if self.session is not None:
            self.session.save(stem.with_name(stem.name + ".npz"))
        else:  # nothing generated yet: keep the first-frame latent and prompt in the npz ourselves
            p = coerce_prompt(self._prompt, self.runtime.cfg)
            with open(stem.with_name(stem.name + ".npz"), "wb") as f:
                np.savez(f, latent=self._latent, text=p.text, text_mask=p.text_mask)
        tmp = stem.with_name(stem.name + ".json.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, stem.with_name(stem.name + ".json"))
        return stem

    @classmethod
    def restore(cls, stem, runtime) -> "LiveSession":
        """Continue a snapshot taken with ``save`` on the same bundle."""
        stem = Path(stem)
        jpath, npath = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")
        if not jpath.is_file() or not npath.is_file():
            raise ValueError(f"no snapshot {stem.name} (need {jpath.name} and {npath.name}); take one with save()")
        meta = json.loads(jpath.read_text())
        if meta.get("format") != LIVE_FORMAT or meta.get("format_version") != LIVE_FORMAT_VERSION:
            raise ValueError(f"{jpath} is not a {LIVE_FORMAT} v{LIVE_FORMAT_VERSION} snapshot")
        if meta["started"]:
            session = Session.resume(npath, runtime)
            live = cls(runtime, None, None, meta["seed"], intrinsics=meta["intrinsics"],
                       max_frames=meta["max_frames"], _latent=session.cond.condition_latent)
            live.session = session
        else:
            with np.load(npath, allow_pickle=False) as z:
                latent, prompt = z["latent"], (z["text"], z["text_mask"])
            live = cls(runtime, None, prompt, meta["seed"], intrinsics=meta["intrinsics"],
                       max_frames=meta["max_frames"], _latent=latent)
        live._load_meta(meta)
        return live

    def fork(self) -> "LiveSession":
        """An independent copy: the same state and history, diverging from here on."""
        twin = LiveSession(self.runtime, None, self._prompt, self.seed, intrinsics=self.intrinsics,
                           max_frames=self.max_frames, _latent=self._latent)
        twin._load_meta(json.loads(json.dumps(self._meta())))
        if self.session is not None:
            twin.session = copy_session(self.session)
        return twin


def copy_session(s: Session) -> Session:
    """A deep copy of a session's carried state on the same runtime (what save + resume give, in memory)."""
    c = s.cond
    cond = Conditioning(*(np.array(a, copy=True) for a in (c.condition_latent, c.text, c.text_mask, c.camera, c.plucker)))
    noise = s.noise.state_dict()
    noise = NoiseSource.from_state_dict({"meta": dict(noise["meta"]),
                                         "arrays": {k: v.copy() for k, v in noise["arrays"].items()}})
    twin = Session(s.runtime, cond, noise, s.seed)
    twin.generator_state.load_state_dict({k: np.array(v, copy=True) for k, v in s.generator_state.state_dict().items()})
    for mine, theirs in zip(twin.stages, s.stages):
        mine.load_state_dict({k: np.array(v, copy=True) for k, v in theirs.state_dict().items()})
    return twin
