"""Fixed shapes of the exported refiner graphs."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class RefinerLayout:
    """Fixed shapes of the exported graphs (batch 1)."""

    latent_height: int
    latent_width: int
    caption_length: int
    block_size: int = 3
    kv_max_frames: int = 11
    sink_frames: int = 1

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_height * self.latent_width

    @property
    def history_frames(self) -> int:
        return self.kv_max_frames - self.sink_frames

    @property
    def history_tokens(self) -> int:
        return self.history_frames * self.tokens_per_frame

    def __post_init__(self):
        if self.history_frames < 1:
            raise ValueError(
                f"kv_max_frames={self.kv_max_frames} leaves no history after {self.sink_frames} sink frame(s); "
                "use kv_max_frames >= sink_frames + 1"
            )
