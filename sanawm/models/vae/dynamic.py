"""The streaming VAE decoder as ONE graph for chunk 0 and later chunks (symbolic latent-frame axis; issue 11).

``VAEDecoderDynamicStep`` takes ``vae_decoder_io_dynamic``: latents ``[1, C, n, h, w]`` with n in
(next_frames, first_frames) = (3, 4), and ALWAYS every conv cache (chunk 0's are ignored: pass zeros). Which
chunk it is follows from n, as for the generator graph (chunk 0 is the only one with first_frames latents):

* n = first_frames: each causal conv's left context is its first input frame replicated (a ``Where`` on a flag
  computed from n, so whatever sits in the cache buffers is never read), each temporal upsampler drops its
  first st - 1 frames, and the condition frame is dropped at the end, exactly as ``VAEDecoderStep(first=True)``;
* n = next_frames: caches are read and nothing is dropped, as ``VAEDecoderStep(first=False)``.

Both give ``[1, 3, 24, H, W]``: with st = 2 per temporal upsampler the frame count after each one is
2 T - (n - 3), so 4 -> 7 -> 13 -> 25 -> 24 and 3 -> 6 -> 12 -> 24; the exporter sees a static 24.
"""

from __future__ import annotations

from typing import Any

import torch

from ...spec import StepIO, TensorSpec
from ...spec_dynamic import FRAME_DIM
from .config import config_dict as _cfg
from .decoder import VAEDecoderStep
from .decoder_layout import decoder_pixel_frames, vae_decoder_io


def vae_decoder_io_dynamic(vae_config: Any, latent_hw: tuple[int, int], first_frames: int = 4,
                           next_frames: int = 3) -> StepIO:
    """``vae_decoder_io(first=False)`` with latents ``[1, C, "n", h, w]``; frames and caches keep fixed shapes."""
    c = _cfg(vae_config)
    if first_frames != next_frames + 1:
        raise ValueError(f"the dynamic decoder needs first_frames = next_frames + 1 (the condition frame), got "
                         f"{first_frames} and {next_frames}; export the fixed first/next decoder graphs instead")
    f_first = decoder_pixel_frames(c, True, first_frames, drop_first_frame=True)
    f_next = decoder_pixel_frames(c, False, next_frames)
    if f_first != f_next:
        raise ValueError(f"chunk 0 decodes to {f_first} frames and later chunks to {f_next}: one graph needs the same "
                         "output shape for both (this VAE's temporal upsampling does not give it)")
    ref = vae_decoder_io(c, False, latent_hw, next_frames)
    lat = ref.inputs[0]
    shape = list(lat.shape)
    shape[2] = FRAME_DIM
    ins = (TensorSpec(lat.name, lat.dtype, tuple(shape), lat.doc),) + tuple(
        TensorSpec(t.name, t.dtype, t.shape, t.doc + " (ignored when n = first_frames: pass zeros)")
        for t in ref.inputs[1:]
    )
    return StepIO(ins, ref.outputs, dict(ref.state_map))


class VAEDecoderDynamicStep(VAEDecoderStep):
    """One decoder chunk of ``first_frames`` (chunk 0) or ``next_frames`` latent frames; see module docstring."""

    def __init__(self, vae, latent_hw: tuple[int, int], first_frames: int = 4, next_frames: int = 3):
        super().__init__(vae, False, latent_hw, next_frames, drop_first_frame=True)
        self.io = vae_decoder_io_dynamic(vae.config, latent_hw, first_frames, next_frames)
        self.first_frames, self.next_frames = first_frames, next_frames
        self._n = None  # frames of the call in progress (a SymInt while exporting)

    def forward(self, *args: torch.Tensor):
        """``(latents, *caches)``; one ``*args`` so torch.export takes the dynamic shapes as one tuple."""
        self._n = args[0].shape[2]
        try:
            return super().forward(*args)
        finally:
            self._n = None

    def _is_first(self):
        return self._n - self.next_frames  # 1 for chunk 0, 0 after (an int, or a SymInt while tracing)

    def _check_inputs(self, latents: torch.Tensor, caches) -> None:
        exp = self.io.inputs[0].shape
        n = latents.shape[2]
        if isinstance(n, int) and n not in (self.first_frames, self.next_frames):
            raise ValueError(f"the dynamic decoder takes {self.next_frames} or {self.first_frames} latent frames, got {n}")
        if latents.dim() != 5 or tuple(latents.shape[:2]) + tuple(latents.shape[3:]) != exp[:2] + exp[3:]:
            raise ValueError(f"decoder step built for latents {list(exp)}, got {list(latents.shape)}")
        if len(caches) != len(self.slots):
            raise ValueError(f"the dynamic decoder takes {len(self.slots)} caches (cache.0..) on every call, chunk 0 "
                             f"included (zeros), got {len(caches)}")

    def _left_context(self, x: torch.Tensor, k: int, caches, i: int) -> torch.Tensor:
        replicate = x[:, :, :1].expand(-1, -1, k - 1, -1, -1)
        flag = x.new_ones(()) * self._is_first()
        # Where, not a blend: the cache buffers of chunk 0 may hold anything (0 * NaN would leak)
        return torch.where(flag > 0.5, replicate, caches[i].to(x.dtype))

    def _dropped_frames(self, st: int, x: torch.Tensor):
        return (st - 1) * self._is_first()

    def _drop_condition_frame(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self._is_first():]
