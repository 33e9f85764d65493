"""Running a session to its end (or to a chunk limit) into MP4 / PNG / latents, and the end-of-run summary."""

from __future__ import annotations

import io
import math
import resource
import sys
import time

from ..constants import FPS
from .base import STATE, say


def render(session, out, png_dir=None, save_latents=None, stream=None, max_chunks: int | None = None) -> dict:
    """Run ``session`` (at most ``max_chunks`` more chunks), writing MP4 (+ PNG, latents) chunk by chunk.

    Returns a summary: chunks, frames, preview (latent preview instead of decoded video), timings (seconds per
    stage, summed over the chunks' ``chunk.timings``)."""
    from ..runtime.frames import latent_preview
    from ..runtime.progress import Progress
    from ..runtime.video import LatentWriter, PNGWriter, ProgressiveMP4Writer

    mp4 = ProgressiveMP4Writer(out) if out else None
    png = PNGWriter(png_dir) if png_dir else None
    lat = LatentWriter(save_latents) if save_latents else None
    writers = [w for w in (mp4, png, lat) if w is not None]
    left = session.num_chunks - session.next_chunk
    total = left if max_chunks is None else min(left, max_chunks)
    if stream is None and STATE["verbosity"] < 0:
        stream = io.StringIO()  # -q: no progress lines
    progress = Progress(total, session.num_output_frames, stream)
    cfg = session.cfg
    scale = max(2, 2 * math.ceil(128 / (2 * cfg.latent_width)))  # preview at least ~128 px wide, even size
    previewed = False
    timings: dict[str, float] = {}
    try:
        for chunk in session:
            frames = chunk.frames
            if frames is None:
                if not previewed:
                    print("warning: the bundle has no VAE decoder; the video is a latent preview (channels 0-2)",
                          file=sys.stderr)
                    previewed = True
                frames = latent_preview(chunk.refined, scale=scale, drop_first=chunk.index == 0)
            for w in (mp4, png):
                if w is not None:
                    w.write_chunk(frames)
            if lat is not None:
                lat.write_chunk(chunk.refined)
            for k, v in chunk.timings.items():
                timings[k] = timings.get(k, 0.0) + float(v)
            progress.update(frames.shape[0])
            if progress.chunks >= total:
                break
    finally:
        for w in writers:  # finish the files; the MP4 is playable even when this never runs
            w.close()
    return {"chunks": progress.chunks, "frames": progress.frames, "preview": previewed, "timings": timings}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def summary_line(summary: dict, wall_s: float) -> str:
    """``done: 48 frames (3.0 s of video) in 1.2 s wall, 2.50x realtime; generator 0.80 s, ...; peak RSS 412 MiB``."""
    video_s = summary["frames"] / FPS
    speed = video_s / wall_s if wall_s > 0 else float("inf")
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in summary["timings"].items()) or "no stage timings"
    return (f"done: {summary['frames']} frames ({video_s:.1f} s of video) in {wall_s:.1f} s wall, "
            f"{speed:.2f}x realtime; per stage: {stages}; peak RSS {peak_rss_bytes() / 2**20:.0f} MiB")


def report(summary: dict, t_start: float) -> None:
    say(summary_line(summary, time.perf_counter() - t_start))
