"""Progressive video output: fragmented MP4 playable after every chunk, PNG frames, raw latents.

The MP4 is fragmented (``movflags=frag_keyframe+empty_moov+default_base_moof+frag_every_frame``, plus
``flush_packets``): the header carries no sample table and every frame goes to disk as its own fragment as
soon as the next one is muxed, so a run that dies mid-clip leaves a playable file of everything made except
the newest frame (the mp4 muxer holds one packet to know its duration; PyAV exposes no muxer flush; the
frame lands with the next chunk or at ``close``). Each chunk starts with a keyframe. libx264 (``tune=zerolatency``: no
lookahead, no B-frames, so each frame's packet leaves the encoder at once) when available, else mpeg4;
yuv420p; 16 fps (the release's output rate).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from ..constants import FPS


def _check_frames(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[3] != 3 or f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3]; got {f.dtype} {f.shape}")
    return f


class ProgressiveMP4Writer:
    """Append uint8 RGB frames chunk by chunk; the file is playable after every ``write_chunk``.

    Args:
        path: output .mp4.
        fps: frame rate (16).
        codec: "libx264", "mpeg4" or None (libx264 if this PyAV build has it, else mpeg4).
        crf: libx264 quality (18 as in the release); mpeg4 uses a fixed high bitrate instead.
    """

    def __init__(self, path, fps: int = FPS, codec: str | None = None, crf: int = 18):
        import av  # PyAV, only when video is written

        self._av = av
        self.path = Path(path)
        self.fps, self.crf = int(fps), int(crf)
        self.codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
        self.container = None
        self.stream = None
        self.frames_written = 0

    def _open(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"yuv420p needs even frame sizes; got {width}x{height}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self._av.open(
            str(self.path),
            mode="w",
            format="mp4",
            options={"movflags": "frag_keyframe+empty_moov+default_base_moof+frag_every_frame", "flush_packets": "1"},
        )
        s = self.container.add_stream(self.codec, rate=Fraction(self.fps, 1))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.time_base = Fraction(1, self.fps)
        if self.codec == "libx264":
            s.options = {"crf": str(self.crf), "preset": "medium", "tune": "zerolatency"}
        else:
            s.bit_rate = 8 * width * height * self.fps // 10  # ~0.8 bit per pixel: near-transparent for mpeg4
            s.codec_context.max_b_frames = 0
        self.stream = s

    def write_chunk(self, frames: np.ndarray) -> None:
        """Encode ``frames`` [F, H, W, 3] uint8; the chunk starts with a keyframe and is flushed to disk."""
        frames = _check_frames(frames)
        if frames.shape[0] == 0:
            return
        if self.container is None:
            self._open(frames.shape[1], frames.shape[2])
        elif (frames.shape[1], frames.shape[2]) != (self.stream.height, self.stream.width):
            raise ValueError(f"frame size changed mid-clip: {frames.shape[1:3]} vs {(self.stream.height, self.stream.width)}")
        for j, rgb in enumerate(frames):
            vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts = self.frames_written
            vf.time_base = Fraction(1, self.fps)
            if j == 0:  # keyframe: closes the previous fragment (frag_keyframe)
                vf.pict_type = self._av.video.frame.PictureType.I
            for pkt in self.stream.encode(vf):
                self.container.mux(pkt)
            self.frames_written += 1

    def close(self) -> None:
        """Drain the encoder and finish the file (a crash before this still leaves a playable file)."""
        if self.container is None:
            return
        for pkt in self.stream.encode(None):
            self.container.mux(pkt)
        self.container.close()
        self.container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PNGWriter:
    """Write each frame as ``frame_00000.png`` (numbered across chunks)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def write_chunk(self, frames: np.ndarray) -> None:
        from PIL import Image

        for rgb in _check_frames(frames):
            Image.fromarray(rgb, "RGB").save(self.dir / f"frame_{self.count:05d}.png")
            self.count += 1

    def close(self) -> None:
        pass


class LatentWriter:
    """Collect each chunk's latents [1, C, n, H, W]; ``close`` writes the clip [1, C, T, H, W] to one .npy."""

    def __init__(self, path):
        self.path = Path(path)
        self.parts: list[np.ndarray] = []

    def write_chunk(self, latents: np.ndarray) -> None:
        self.parts.append(np.asarray(latents, dtype=np.float32))

    def close(self) -> None:
        if self.parts:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.path, np.concatenate(self.parts, axis=2), allow_pickle=False)


def read_video(path) -> np.ndarray:
    """Decode every frame of a video file as [F, H, W, 3] uint8 (for checks and tests)."""
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
