"""Torch reference of the world model (build side): the same weights through the torch step modules.

``TorchWorld(gen_path, vae_path).generate(first_frame, prompt, camera, num_frames, noise)`` encodes the first
frame with ``VAEEncoderStep``, samples with ``StreamingSampler`` (the release's 4-step schedule, the same
clip noise the runtime draws) and decodes with ``StreamingVAEDecoder`` chunk by chunk: the "torch" row of the
quality table, against which the ONNX bundles are compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import world
from ..runtime.frames import from_uint8, to_uint8
from ..runtime.noise import clip_noise


class TorchWorld:
    def __init__(self, gen_path: Path, vae_path: Path):
        from ..models.generator_step import GeneratorStep
        from ..models.loading import load_generator
        from ..models.sampler import StreamingSampler
        from ..models.vae import VAEEncoderStep, load_vae
        from .paths import FRAME_HW

        self.cfg = world()
        self.model = load_generator(gen_path, self.cfg).eval()
        self.vae = load_vae(vae_path)
        self.encoder = VAEEncoderStep(self.vae, *FRAME_HW)
        self.sampler = StreamingSampler(GeneratorStep(self.model, True), GeneratorStep(self.model, False))

    @torch.no_grad()
    def sample(self, first_frame: np.ndarray, prompt, camera, num_frames: int, noise_seed: int = 0) -> torch.Tensor:
        """Normalised latents [1, C, T, h, w] of a clip (T = (F - 1) / 8 + 1), before the VAE decoder."""
        cfg = self.cfg
        T = (num_frames - 1) // 8 + 1
        img = torch.from_numpy(from_uint8(first_frame))
        lat = self.encoder(img)[0]
        noise = torch.from_numpy(clip_noise(noise_seed, (1, cfg.in_channels, T, cfg.latent_height, cfg.latent_width)))
        text, mask = prompt
        cam, pl = camera
        return self.sampler.sample(lat, noise, torch.as_tensor(text), torch.as_tensor(mask),
                                   torch.from_numpy(cam[None, :T]), torch.from_numpy(pl[None, :, :T]))

    @torch.no_grad()
    def generate(self, first_frame: np.ndarray, prompt, camera, num_frames: int, noise_seed: int = 0) -> np.ndarray:
        """Frames (F - 1, H, W, 3) uint8 without the condition frame, like a runtime session."""
        from ..models.vae import StreamingVAEDecoder

        cfg = self.cfg
        T = (num_frames - 1) // 8 + 1
        z = self.sample(first_frame, prompt, camera, num_frames, noise_seed)
        dec = StreamingVAEDecoder(self.vae, (cfg.latent_height, cfg.latent_width), cfg.first_chunk_size, cfg.chunk_size)
        frames = [dec.decode_chunk(z[:, :, s:e]) for s, e in cfg.chunk_bounds(T)]
        return to_uint8(torch.cat(frames, dim=2).numpy())  # the runtime's own conversion
