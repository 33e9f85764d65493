"""The streaming decoder's cache layout: its causal convs in order, their cache shapes, and the decoder graphs' I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...spec import StepIO, TensorSpec
from .config import F32, as_tuple, config_dict, vae_compression


@dataclass(frozen=True)
class ConvSlot:
    """One causal conv of the decoder and the cache it carries."""

    index: int
    module_name: str  # e.g. "up_blocks.0.resnets.1.conv2" under vae.decoder
    channels: int  # input channels of the conv (cache channels)
    frames: int  # k_t - 1 cached input frames
    scale: int  # spatial upsampling of the conv's input relative to the latent


def _decoder_layout(vae_config: Any) -> list[ConvSlot]:
    """Every causal conv of the decoder in execution order, built from the config on the meta device (no
    memory, works for the full config)."""
    from diffusers import AutoencoderKLLTX2Video

    cfg = {k: v for k, v in config_dict(vae_config).items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKLLTX2Video(**cfg)
    return walk_decoder(vae.decoder)


def walk_decoder(dec: nn.Module) -> list[ConvSlot]:
    slots: list[ConvSlot] = []
    scale = 1

    def conv(name: str, m: nn.Module):
        slots.append(ConvSlot(len(slots), name, m.conv.in_channels, m.kernel_size[0] - 1, scale))

    def resnet(name: str, r: nn.Module):
        conv(f"{name}.conv1", r.conv1)
        conv(f"{name}.conv2", r.conv2)

    conv("conv_in", dec.conv_in)
    for i, r in enumerate(dec.mid_block.resnets):
        resnet(f"mid_block.resnets.{i}", r)
    for b, blk in enumerate(dec.up_blocks):
        if blk.conv_in is not None:
            resnet(f"up_blocks.{b}.conv_in", blk.conv_in)
        for u, up in enumerate(blk.upsamplers or []):
            conv(f"up_blocks.{b}.upsamplers.{u}.conv", up.conv)
            scale *= up.stride[1]
        for i, r in enumerate(blk.resnets):
            resnet(f"up_blocks.{b}.resnets.{i}", r)
    conv("conv_out", dec.conv_out)
    return slots


def decoder_pixel_frames(vae_config: Any, first: bool, num_frames: int, drop_first_frame: bool = True) -> int:
    """Pixel frames a decoder chunk returns: chunk 0 -> 1 + t (n - 1) (minus the dropped condition frame),
    later chunks -> t n, t = temporal upsampling (8 for LTX-2)."""
    t = _decoder_time_scale(vae_config)
    if first:
        return 1 + t * (num_frames - 1) - (1 if drop_first_frame else 0)
    return t * num_frames


def _decoder_time_scale(vae_config: Any) -> int:
    c = config_dict(vae_config)
    n = len(c["decoder_layers_per_block"]) - 1
    scaling = as_tuple(c.get("decoder_spatio_temporal_scaling", True), n)
    t = c.get("patch_size_t", 1)
    for on, kind in zip(scaling, c["upsample_type"]):
        if on and kind in ("temporal", "spatiotemporal"):
            t *= 2
    return t


def vae_decoder_io(
    vae_config: Any,
    first: bool,
    latent_hw: tuple[int, int],
    num_frames: int | None = None,
    drop_first_frame: bool = True,
) -> StepIO:
    """Contract of ``vae_decoder_first`` / ``vae_decoder_next`` (batch 1, float32).

    Inputs:
        latents   [1, C, n, h, w]   normalised latent frames of the chunk; n = 4 (condition frame + 3) for
                                    the first chunk, 3 after (default ``num_frames``)
        cache.{i} [1, C_i, k_t-1, h*s_i, w*s_i]   (next only) last k_t - 1 = 2 input frames of causal conv
                                    i (execution order; ``decoder_conv_names`` maps i to the module)
    Outputs:
        frames      [1, 3, F, H, W] RGB, nominally [-1, 1] (not clamped); F = 24 for 3 new latent frames
                                    (the first chunk drops its condition frame unless drop_first_frame=False)
        cache.{i}.out               conv i's cache after this chunk -> ``cache.{i}`` of the next call

    The first graph has no cache inputs (its convs replicate their first frame); its ``state_map`` still
    names the next graph's cache inputs.
    """
    c = config_dict(vae_config)
    n = num_frames if num_frames is not None else (4 if first else 3)
    if n < 1:
        raise ValueError(f"a decoder chunk needs at least one latent frame, got num_frames={n}")
    h, w = latent_hw
    s, _ = vae_compression(c)
    # the decoder's spatial upsampling equals the encoder's compression for LTX-2; read it off the layout
    slots = _decoder_layout(c)
    up_s = slots[-1].scale * c.get("patch_size", 4)
    if h < 2 or w < 2:
        raise ValueError(f"latent {h}x{w} is too small: the decoder's reflect padding needs >= 2 rows and columns")
    C = c["latent_channels"]
    Fp = decoder_pixel_frames(c, first, n, drop_first_frame)
    ins = [TensorSpec("latents", F32, (1, C, n, h, w), "normalised latent frames of the chunk")]
    outs = [TensorSpec("frames", F32, (1, c.get("out_channels", 3), Fp, h * up_s, w * up_s), "decoded RGB frames")]
    state_map = {}
    for sl in slots:
        shape = (1, sl.channels, sl.frames, h * sl.scale, w * sl.scale)
        if not first:
            ins.append(TensorSpec(f"cache.{sl.index}", F32, shape, f"feature cache of {sl.module_name}"))
        outs.append(TensorSpec(f"cache.{sl.index}.out", F32, shape, f"feature cache of {sl.module_name} after this chunk"))
        state_map[f"cache.{sl.index}.out"] = f"cache.{sl.index}"
    return StepIO(tuple(ins), tuple(outs), state_map)


def decoder_conv_names(vae_config: Any) -> list[str]:
    """Module name (under ``vae.decoder``) of the conv whose cache is ``cache.{i}``."""
    return [s.module_name for s in _decoder_layout(vae_config)]
