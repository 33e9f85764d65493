"""The one refiner layout type: the fixed shapes of the exported refiner graphs and the stage-2 schedule.

Torch-free, so the build side (``sanawm.models.refiner``, ``sanawm-export``) and the run side
(``sanawm.runtime.refiner_stage``, from the manifest's ``refiner`` section) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import STAGE_2_SIGMAS


@dataclass(frozen=True)
class RefinerLayout:
    """Fixed shapes of the refiner graphs (batch 1) and the sigmas they run.

    ``latent_height`` / ``latent_width`` / ``caption_length`` are what the graphs are exported at; the runtime,
    which reads shapes from the engines, may leave them None (an older manifest records none).
    """

    latent_height: int | None = None
    latent_width: int | None = None
    caption_length: int | None = None
    block_size: int = 3
    kv_max_frames: int = 11  # sink + history latent frames
    sink_frames: int = 1
    sigmas: tuple[float, ...] = STAGE_2_SIGMAS
    timestep_scale_multiplier: float = 1000.0

    @property
    def tokens_per_frame(self) -> int:
        if self.latent_height is None or self.latent_width is None:
            raise ValueError("this refiner layout has no latent height/width; pass them (the graphs' latent H x W)")
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

    @classmethod
    def from_manifest(cls, section: dict | None) -> "RefinerLayout":
        """From the manifest's ``refiner`` section (``sanawm.export.families.refiner.refiner_section``)."""
        if not section:
            return cls()
        lay = section.get("layout", section)
        hw = lay.get("latent_hw") or (None, None)
        cap = lay.get("caption_length")
        return cls(
            latent_height=None if hw[0] is None else int(hw[0]),
            latent_width=None if hw[1] is None else int(hw[1]),
            caption_length=None if cap is None else int(cap),
            block_size=int(lay.get("block_size", 3)),
            kv_max_frames=int(lay.get("kv_max_frames", 11)),
            sink_frames=int(lay.get("sink_frames", 1)),
            sigmas=tuple(float(s) for s in section.get("sigmas", STAGE_2_SIGMAS)),
            timestep_scale_multiplier=float(section.get("timestep_scale_multiplier", 1000.0)),
        )
