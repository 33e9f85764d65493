"""Numbers and names shared by the build side and the run side, defined once.

The engine names are the bundle's contract between ``sanawm-export`` (which writes them) and the runtime
(which looks them up); the temporal stride, frame rate and stage-2 sigmas are properties of SANA-WM itself.
"""

from __future__ import annotations

FPS = 16  # output video frame rate of SANA-WM
TEMPORAL_STRIDE = 8  # pixel frames per latent frame (LTX-2 VAE)
STAGE_2_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875, 0.0)  # the refiner's Euler schedule

GENERATOR = "generator"  # bundle schema 2: one engine, optimization profiles "first" / "next"
# the two fixed-shape step functions the torch reference and the test fakes come as (engines of schema 1)
GENERATOR_FIRST = "generator_first"
GENERATOR_NEXT = "generator_next"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"  # bundle schema 2: one engine, optimization profiles "first" / "next"
# the two fixed-shape decoder step functions of the torch reference and the test fakes (engines of schema 1)
VAE_DECODER_FIRST = "vae_decoder_first"
VAE_DECODER_NEXT = "vae_decoder_next"
REFINER = "refiner"  # bundle schema 2: one engine, optimization profiles "sink" / "block"
# the three engines older bundles held the refiner as (each with the full weights): refused, with the rebuild command
REFINER_RETIRED = ("refiner_sink", "refiner_step", "refiner_capture")

GENERATOR_ENGINES = (GENERATOR,)  # what a bundle holds for stage 1
VAE_DECODER_ENGINES = (VAE_DECODER,)  # what a bundle holds for decoding
VAE_DECODER_PAIR = (VAE_DECODER_FIRST, VAE_DECODER_NEXT)
VAE_ENGINES = (VAE_ENCODER, *VAE_DECODER_ENGINES)
REFINER_ENGINES = (REFINER,)
