"""Model and schedule configs.

Plain dataclasses (no torch) so both the build side and the torch-free run side can read them; a bundle's
``manifest.json`` stores ``GeneratorConfig.to_dict()`` and the runtime rebuilds it with ``from_dict``.

``full()`` is the published SANA-WM stage-1 generator (2.6B); ``tiny()`` keeps every structural feature
(GDN and softmax blocks, camera + Plücker branches, RoPE split, chunking) at sizes that run in seconds on
a CPU. Any other size can be built with ``GeneratorConfig(...)`` or ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GeneratorConfig:
    """Stage-1 SANA-WM DiT (see sana-wm-reference.md sections 2-8)."""

    num_layers: int = 20
    hidden_size: int = 2240
    num_heads: int = 20
    head_dim: int = 112
    in_channels: int = 128  # LTX-2 latent channels (= out channels, pred_sigma off)
    caption_channels: int = 2304  # Gemma-2-2B hidden size
    caption_length: int = 300  # kept text tokens
    softmax_every_n: int = 4  # block i is softmax when (i + 1) % n == 0 -> 3, 7, 11, 15, 19
    mlp_ratio: float = 3.0  # GLUMBConvTemp hidden = ratio * hidden_size
    t_kernel_size: int = 3  # FFN temporal conv
    conv_kernel_size: int = 4  # K short conv (GDN blocks only)
    plucker_channels: int = 48  # 8 raw frames x 6 Plücker channels
    plucker_post_attn_blocks: int = 20  # blocks i < this add plucker_proj(P)
    latent_height: int = 22  # 704 / 32
    latent_width: int = 40  # 1280 / 32
    rope_theta: float = 10000.0
    rope_max_len: int = 1024  # Wan table rows: latent frame indices must stay below this
    qk_norm_eps: float = 1e-5  # self-attention q/k RMSNorm (main and camera)
    cross_norm_eps: float = 1e-6  # cross-attention q/k RMSNorm
    y_norm_eps: float = 1e-5  # attention_y_norm
    gdn_eps: float = 1e-8  # final GDN division
    # --- chunked / streaming inference (sana-wm-streaming.md) ---
    chunk_size: int = 3  # latent frames per chunk after the first
    first_chunk_size: int = 4  # condition frame + 3
    num_cached_chunks: int = 2  # softmax window incl. the sink chunk (num_cached_blocks upstream)
    sink: bool = True  # keep chunk 0 in the softmax window
    # Release code runs cached softmax at 1/sqrt(128) (head dim zero-padded 112 -> 128); a later upstream
    # revision uses 1/sqrt(head_dim). Set to head_dim (112) to serve such a checkpoint.
    streaming_softmax_scale_dim: int = 128
    # Later upstream revision carries a camera K-conv tail across chunks; the release does not.
    cam_kconv_tail: bool = False

    # ----------------------------------------------------------------- derived
    @property
    def patch_tokens(self) -> int:
        """Tokens per latent frame (patch size 1)."""
        return self.latent_height * self.latent_width

    @property
    def ffn_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def softmax_blocks(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if (i + 1) % self.softmax_every_n == 0)

    @property
    def gdn_blocks(self) -> tuple[int, ...]:
        sm = set(self.softmax_blocks)
        return tuple(i for i in range(self.num_layers) if i not in sm)

    def is_softmax_block(self, i: int) -> bool:
        return (i + 1) % self.softmax_every_n == 0

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Complex-pair counts (t, h, w) of the Wan 3-D RoPE for ``head_dim`` (20/18/18 at 112)."""
        hw = self.head_dim // 6
        return self.head_dim // 2 - 2 * hw, hw, hw

    @property
    def cam_rope_split(self) -> tuple[int, int, int]:
        """Pairs of the sliced RoPE on the second half of camera heads (10/9/9 at 112)."""
        r = self.head_dim // 2
        hw = r // 6
        return r // 2 - 2 * hw, hw, hw

    @property
    def key_scale(self) -> float:
        """GDN key scale kappa = 1 / sqrt(D * S)."""
        return (self.head_dim * self.patch_tokens) ** -0.5

    def validate(self) -> "GeneratorConfig":
        problems = []
        if self.hidden_size != self.num_heads * self.head_dim:
            problems.append(
                f"hidden_size ({self.hidden_size}) must equal num_heads * head_dim "
                f"({self.num_heads} * {self.head_dim})"
            )
        if self.head_dim % 8:
            problems.append(f"head_dim ({self.head_dim}) must be divisible by 8 (UCPE 4-groups on half a head)")
        if self.first_chunk_size < 1 or self.chunk_size < 1:
            problems.append("chunk sizes must be positive")
        if problems:
            raise ValueError("invalid GeneratorConfig: " + "; ".join(problems))
        return self

    # ------------------------------------------------------------- chunking
    def chunk_bounds(self, num_latent_frames: int) -> list[tuple[int, int]]:
        """Chunk [start, end) pairs: first chunk ``first_chunk_size`` frames, then ``chunk_size``.

        The released sampler requires T = first + k * chunk; anything else is rejected here with the
        nearest valid lengths, so callers snap the frame count first (``sanawm.camera`` does).
        """
        T = int(num_latent_frames)
        if T < self.first_chunk_size or (T - self.first_chunk_size) % self.chunk_size:
            lo = max(self.first_chunk_size, T - (T - self.first_chunk_size) % self.chunk_size)
            raise ValueError(
                f"{T} latent frames cannot be split into chunks of {self.first_chunk_size}+"
                f"{self.chunk_size}+{self.chunk_size}...; use {lo} or {lo + self.chunk_size} latent frames "
                f"({(lo - 1) * 8 + 1} or {(lo + self.chunk_size - 1) * 8 + 1} video frames)"
            )
        bounds = [(0, self.first_chunk_size)]
        while bounds[-1][1] < T:
            s = bounds[-1][1]
            bounds.append((s, s + self.chunk_size))
        return bounds

    def window_chunks(self, c: int) -> list[int]:
        """Chunks whose softmax K/V chunk ``c`` attends to (besides itself), oldest first.

        Release rule (``_accumulate_softmax_kv_cache``): [max(c - n, 0), c); with the sink on and
        s = c - n + 1 > 0 the set is {0} U [s, c) -- the sink counts towards n.
        """
        n = self.num_cached_chunks
        if c <= 0:
            return []
        if n < 0:
            return list(range(c))
        s = max(c - n + 1, 0) if self.sink else max(c - n, 0)
        if self.sink and s > 0:
            return [0] + list(range(s, c))
        return list(range(max(c - n, 0), c))

    # --------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GeneratorConfig fields {unknown}; is this bundle from a newer sanawm?")
        return cls(**d).validate()


def full() -> GeneratorConfig:
    """The published SANA-WM 2.6B stage-1 generator."""
    return GeneratorConfig().validate()


def tiny() -> GeneratorConfig:
    """Same structure at test size: 4 blocks (softmax at 1 and 3), 2 heads of 32, 4x6 latent frames."""
    return GeneratorConfig(
        num_layers=4,
        hidden_size=64,
        num_heads=2,
        head_dim=32,
        in_channels=16,
        caption_channels=32,
        caption_length=8,
        softmax_every_n=2,
        mlp_ratio=2.0,
        plucker_post_attn_blocks=4,
        latent_height=4,
        latent_width=6,
    ).validate()


def world() -> GeneratorConfig:
    """The trained toy world model shipped in ``sanawm/assets/tiny_world`` (``sanawm.worlds``): tiny's structure
    at 8x12 latents (32x48 frames through a 4x VAE), 16 latent channels, 4 blocks of width 64 (small enough
    to train on one CPU thread in under an hour)."""
    return dataclasses.replace(tiny(), latent_height=8, latent_width=12).validate()


CONFIGS = {"full": full, "tiny": tiny, "world": world}


def get_config(name: str) -> GeneratorConfig:
    try:
        return CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}") from None


@dataclass(frozen=True)
class StreamingSchedule:
    """Distilled 4-step schedule of the released streaming sampler (sana-wm-streaming.md 1.3-1.5)."""

    timesteps: tuple[float, ...] = (1000.0, 960.0, 889.0, 727.0)  # then a t = 0 cache-write pass
    cfg_scale: float = 1.0  # no unconditional pass

    @property
    def sigmas(self) -> tuple[float, ...]:
        """sigma_i = t_i / 1000, followed by the final 0."""
        return tuple(t / 1000.0 for t in self.timesteps) + (0.0,)
