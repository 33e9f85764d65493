"""Static description of how one forward call treats time (no tensors; fixed at trace time).

Every mode of the generator is the same block code run over a ``Plan``:

* bidirectional: one segment covering all frames; softmax sees everything.
* chunk-causal (reference 9.2): segments = ``cfg.chunk_bounds(T)``; GDN forward state crosses segments, the
  reverse scan and the backward half of the K conv stay inside a segment, FFN t_conv sees the previous
  segment's last frame and zeros on the right, softmax sees its own segment plus ``window`` segments.
* streaming step: one segment (the chunk) with carried state and an external padded softmax window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..config import GeneratorConfig


def flash_padded_dim(head_dim: int) -> int:
    """Head dim after the release's FlashAttention zero-padding (112 -> 128); SDPA then uses 1/sqrt(this)."""
    if head_dim in (32, 64, 128, 256) or head_dim >= 256:
        return head_dim
    return 128 if head_dim <= 128 else 256


@dataclass(frozen=True)
class Plan:
    segments: tuple[tuple[int, int], ...]  # [start, end) frame ranges of this call
    # per segment: indices of earlier segments its softmax also attends to; None = all earlier ones
    window: tuple[tuple[int, ...], ...] | None
    main_scale: float  # softmax scale of the main branch
    cam_scale: float  # softmax scale of the camera branch
    cam_conv_across: bool  # camera K-conv forward half crosses segments (and uses a carried tail)

    @property
    def num_frames(self) -> int:
        return self.segments[-1][1]


@dataclass(frozen=True)
class ChunkRule:
    """How the chunk-causal whole-sequence mode treats softmax context and the camera K conv.

    ``window``: ``c -> earlier chunks`` for the softmax (None = every earlier chunk, the training teacher);
    ``scale_dim``: softmax scale 1/sqrt(scale_dim) for both branches (None = bidirectional scales: main
    1/sqrt(head_dim), camera 1/sqrt(padded head_dim)); ``cam_kconv_across``: camera K-conv forward half
    crosses chunks (teacher) or stays inside the chunk (release streaming).
    """

    window: Callable[[int], list[int]] | None = None
    scale_dim: int | None = None
    cam_kconv_across: bool = True

    @classmethod
    def teacher(cls) -> "ChunkRule":
        return cls()

    @classmethod
    def streaming(cls, cfg: GeneratorConfig) -> "ChunkRule":
        """The rule the streaming step follows: release window, cached-path scale, camera conv per chunk."""
        return cls(window=cfg.window_chunks, scale_dim=cfg.streaming_softmax_scale_dim,
                   cam_kconv_across=cfg.cam_kconv_tail)


def bidirectional_plan(cfg: GeneratorConfig, num_frames: int) -> Plan:
    return Plan(
        segments=((0, num_frames),),
        window=None,
        main_scale=cfg.head_dim**-0.5,
        cam_scale=flash_padded_dim(cfg.head_dim) ** -0.5,
        cam_conv_across=True,
    )


def chunked_plan(cfg: GeneratorConfig, num_frames: int, rule: ChunkRule | None = None) -> Plan:
    rule = rule or ChunkRule.teacher()
    segs = tuple(cfg.chunk_bounds(num_frames))
    window = None if rule.window is None else tuple(tuple(rule.window(c)) for c in range(len(segs)))
    if rule.scale_dim is None:
        main, cam = cfg.head_dim**-0.5, flash_padded_dim(cfg.head_dim) ** -0.5
    else:
        main = cam = 1.0 / math.sqrt(rule.scale_dim)
    return Plan(segs, window, main, cam, rule.cam_kconv_across)


def step_plan(cfg: GeneratorConfig, num_frames: int) -> Plan:
    s = 1.0 / math.sqrt(cfg.streaming_softmax_scale_dim)
    return Plan(((0, num_frames),), None, s, s, cfg.cam_kconv_tail)
