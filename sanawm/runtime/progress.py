"""Progress on stderr: chunks done/total, frames/s, ETA; a live line on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_chunks: int, total_frames: int, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total_chunks, self.total_frames = total_chunks, total_frames
        self.chunks = self.frames = 0
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, chunk_frames: int, latent_frames: int = 0) -> str:
        """Count one finished chunk of ``chunk_frames`` video frames (or 8 per latent frame without video)."""
        self.chunks += 1
        self.frames += chunk_frames
        dt = max(time.perf_counter() - self.t0, 1e-9)
        fps = self.frames / dt
        left = self.total_frames - self.frames
        eta = left / fps if fps > 0 else float("inf")
        width = 24
        filled = int(width * self.chunks / max(self.total_chunks, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = (
            f"[{bar}] chunk {self.chunks}/{self.total_chunks}  frames {self.frames}/{self.total_frames}  "
            f"{fps:.2f} frames/s  ETA {eta:.0f}s"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.chunks >= self.total_chunks else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line
