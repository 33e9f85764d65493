"""LTX-2 VAE for SANA-WM (build side): first-frame encoder and causal streaming decoder as export-ready steps.

Export goes through the shared ``sanawm.export.onnx.export_onnx`` (StepIO modules); see
tests/models/test_vae_export.py.

Both steps reuse the *parameters* of a diffusers ``AutoencoderKLLTX2Video`` (0.42.1); the decoder re-implements
the forward with every causal conv's temporal feature cache as an explicit tensor (sana-wm-reference.md 3.1
and 11, sana-wm-streaming.md 5.3).

Latent normalisation (per channel, both directions, reference 3.1):
    encode  z_n = (z - latents_mean) * scaling_factor / latents_std
    decode  z   = z_n * latents_std / scaling_factor + latents_mean

Causal decode with a cache. Every decoder conv is a ``LTX2VideoCausalConv3d`` with temporal kernel k_t = 3
and stride 1: its input is left-padded in time with k_t - 1 frames, which in a whole-clip causal decode
(``vae.decode(z, causal=True)``) are copies of the clip's first frame, and in a streaming decode are the
last k_t - 1 input frames of the previous chunk (the feature cache). Everything else in the decoder is
frame-local (per-pixel channel RMSNorm, LayerNorm over channels, 1x1x1 shortcut, depth-to-space), except
the depth-to-space upsampler, which drops its first ``stride_t - 1`` output frames once, at the very
start of the clip. So:

* chunk 0 (``first=True``): convs pad with copies of their first input frame; upsamplers drop their
  first stride_t - 1 frames -> 1 + 8 (n - 1) pixel frames for n latent frames.
* later chunks: convs pad with the cache; no frames dropped -> 8 n pixel frames.

Chained chunk decodes therefore equal one whole-clip causal decode exactly (same maths, same order of
reductions per output element up to conv algorithm choice). The release decodes one latent frame at a
time with the cache (``decode_per_frame_with_cache``); per-frame and per-chunk are the same computation
because every op is causal with this cache, so the chunk is processed at once here.

By default the first chunk's graph drops pixel frame 0 (the conditioning frame; the release drops it
too), so both graphs return 8 pixel frames per new latent frame: 24 for chunks of 3.

Modules by job: ``config`` (configs, loading, compression, normalisation), ``encoder``, ``decoder_layout`` (the
conv-cache layout and graph I/O), ``decoder`` (the streaming decoder step and its torch driver).
"""

from .config import (
    build_vae,
    denormalize_latents,
    full_vae_config,
    load_vae,
    normalize_latents,
    tiny_vae_config,
    vae_compression,
)
from .decoder import StreamingVAEDecoder, VAEDecoderStep
from .decoder_layout import ConvSlot, decoder_conv_names, decoder_pixel_frames, vae_decoder_io
from .encoder import VAEEncoderStep, vae_encoder_io

__all__ = [
    "ConvSlot", "StreamingVAEDecoder", "VAEDecoderStep", "VAEEncoderStep", "build_vae", "decoder_conv_names",
    "decoder_pixel_frames", "denormalize_latents", "full_vae_config", "load_vae", "normalize_latents",
    "tiny_vae_config", "vae_compression", "vae_decoder_io", "vae_encoder_io",
]
