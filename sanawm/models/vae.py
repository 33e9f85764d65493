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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import StepIO, TensorSpec

F32 = "float32"

# ----------------------------------------------------------------------------------------------- configs


def full_vae_config() -> dict:
    """LTX-2 video VAE (diffusers ``AutoencoderKLLTX2Video`` defaults; 128 latent channels, 32x spatial, 8x
    temporal). The compression ratios are set explicitly because diffusers' fallback formula counts the
    encoder's temporal-only block as spatial."""
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=128,
        block_out_channels=(256, 512, 1024, 2048),
        decoder_block_out_channels=(256, 512, 1024),
        layers_per_block=(4, 6, 6, 2, 2),
        decoder_layers_per_block=(5, 5, 5, 5),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        scaling_factor=1.0,
        encoder_spatial_padding_mode="zeros",
        decoder_spatial_padding_mode="reflect",
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    )


def tiny_vae_config(**overrides: Any) -> dict:
    """Same structure as ``full_vae_config`` (4 down blocks incl. the temporal-only one, 3 residual
    depth-to-space up blocks, reflect padding) with 8 latent channels and 1 resnet per block: 64x96
    images -> 2x3 latents, runs in well under a second on a CPU. ``scaling_factor`` != 1 so tests see
    the normalisation."""
    cfg = full_vae_config()
    cfg.update(
        latent_channels=8,
        block_out_channels=(8, 16, 16, 16),
        # decoder channels must halve block to block (upsample_factor 2), as in the full (256, 512, 1024)
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        scaling_factor=0.7,
    )
    cfg.update(overrides)
    return cfg


def build_vae(config: Mapping[str, Any], seed: int | None = 0, random_latent_stats: bool = False):
    """A randomly initialised diffusers ``AutoencoderKLLTX2Video`` in float32 eval mode (tests, benchmarks).

    ``random_latent_stats`` fills ``latents_mean`` / ``latents_std`` with non-trivial values (the
    diffusers defaults 0 / 1 would hide a normalisation bug)."""
    from diffusers import AutoencoderKLLTX2Video

    if seed is not None:
        torch.manual_seed(seed)
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    vae = AutoencoderKLLTX2Video(**cfg).float().eval()
    if random_latent_stats:
        with torch.no_grad():
            vae.latents_mean.copy_(torch.randn_like(vae.latents_mean) * 0.5)
            vae.latents_std.copy_(torch.rand_like(vae.latents_std) + 0.5)
    return vae


def load_vae(source: Any, dtype: torch.dtype = torch.float32):
    """The VAE from a diffusers folder (``config.json`` + safetensors; local files only, never the hub)
    or an in-memory ``AutoencoderKLLTX2Video`` (returned cast to ``dtype``, eval mode, no grad)."""
    from diffusers import AutoencoderKLLTX2Video

    if isinstance(source, AutoencoderKLLTX2Video):
        vae = source
    else:
        path = Path(source)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a diffusers AutoencoderKLLTX2Video folder (no config.json); point at the "
                "checkpoint's vae/ (or ltx2_causal_vae/) folder holding config.json and the safetensors"
            )
        vae = AutoencoderKLLTX2Video.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    vae = vae.to(dtype).eval()
    vae.requires_grad_(False)
    return vae


def _cfg(vae_or_config: Any) -> dict:
    """Config dict of a model or a config mapping (diffusers FrozenDict or plain dict)."""
    c = getattr(vae_or_config, "config", vae_or_config)
    return dict(c)


def _tuple(v: Any, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def vae_compression(vae_config: Any) -> tuple[int, int]:
    """(spatial, temporal) compression of the encoder, counted from its structure: patch_size times 2 for
    every down block that downsamples in space (resp. patch_size_t times 2 per temporal downsample)."""
    c = _cfg(vae_config)
    n = len(c["layers_per_block"]) - 1
    scaling = _tuple(c.get("spatio_temporal_scaling", True), n)
    s, t = c.get("patch_size", 4), c.get("patch_size_t", 1)
    for on, kind in zip(scaling, c["downsample_type"]):
        if not on:
            continue
        if kind in ("spatial", "spatiotemporal", "conv"):
            s *= 2
        if kind in ("temporal", "spatiotemporal", "conv"):
            t *= 2
    return s, t


# ------------------------------------------------------------------------------------------ normalisation


def normalize_latents(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """z [B, C, T, h, w] raw VAE latent -> normalised (the DiT's latent space); mean/std [C]."""
    return (z - mean.view(1, -1, 1, 1, 1)) * scaling_factor / std.view(1, -1, 1, 1, 1)


def denormalize_latents(z_n: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Inverse of ``normalize_latents``: z = z_n * std / scaling_factor + mean."""
    return z_n * std.view(1, -1, 1, 1, 1) / scaling_factor + mean.view(1, -1, 1, 1, 1)


# ------------------------------------------------------------------------------------------------ encoder


def vae_encoder_io(vae_config: Any, height: int, width: int) -> StepIO:
    """Contract of ``vae_encoder``: image [1, 3, 1, H, W] in [-1, 1] -> latent [1, C, 1, H/s, W/s]
    (normalised, posterior mode)."""
    c = _cfg(vae_config)
    s, _ = vae_compression(c)
    _check_image_size(c, height, width)
    C = c["latent_channels"]
    return StepIO(
        inputs=(TensorSpec("image", F32, (1, c.get("in_channels", 3), 1, height, width), "first frame, RGB in [-1, 1]"),),
        outputs=(TensorSpec("latent", F32, (1, C, 1, height // s, width // s), "normalised latent of the frame"),),
        state_map={},
    )


def _check_image_size(c: Mapping, height: int, width: int) -> None:
    s, _ = vae_compression(c)
    if height % s or width % s or height <= 0 or width <= 0:
        h2, w2 = max(s, height // s * s), max(s, width // s * s)
        raise ValueError(
            f"VAE encoder input is {height}x{width} (HxW); this VAE needs H and W to be multiples of {s} "
            f"(e.g. {h2}x{w2}, or 704x1280 for SANA-WM). Resize / centre-crop the frame first (the runtime "
            "does this in sanawm.camera.crop before encoding)."
        )


class VAEEncoderStep(nn.Module):
    """First-frame encoder: ``forward(image [1, 3, 1, H, W]) -> (latent [1, C, 1, h, w],)``.

    Runs the diffusers encoder causally (one frame: frame 0 maps to its own latent frame), takes the
    posterior mode (the first C of the 2C output channels) and normalises it. Holds the diffusers encoder
    module itself (shared parameters)."""

    def __init__(self, vae, height: int, width: int):
        super().__init__()
        c = _cfg(vae)
        _check_image_size(c, height, width)
        self.height, self.width = height, width
        self.in_channels = c.get("in_channels", 3)
        self.latent_channels = c["latent_channels"]
        self.scaling_factor = float(c.get("scaling_factor", 1.0))
        self.encoder = vae.encoder
        self.register_buffer("latents_mean", vae.latents_mean.detach().clone().float(), persistent=False)
        self.register_buffer("latents_std", vae.latents_std.detach().clone().float(), persistent=False)

    def forward(self, image: torch.Tensor):
        if image.dim() != 5 or tuple(image.shape[:3]) != (1, self.in_channels, 1):
            raise ValueError(
                f"VAE encoder expects image [1, {self.in_channels}, 1, H, W] (batch 1, RGB, one frame), got "
                f"{tuple(image.shape)}; add the batch/frame axes with image[None, :, None] and drop alpha"
            )
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"VAE encoder step was built for {self.height}x{self.width} frames, got "
                f"{image.shape[-2]}x{image.shape[-1]}; resize / centre-crop the frame to "
                f"{self.height}x{self.width} (the runtime does this before encoding)"
            )
        h = self.encoder(image, causal=True)  # [1, 2C, 1, h, w]: mean, then the (repeated) log-variance
        mode = h[:, : self.latent_channels]
        return (normalize_latents(mode, self.latents_mean, self.latents_std, self.scaling_factor),)


# ------------------------------------------------------------------------------------------------ decoder


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

    cfg = {k: v for k, v in _cfg(vae_config).items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKLLTX2Video(**cfg)
    return _walk_decoder(vae.decoder)


def _walk_decoder(dec: nn.Module) -> list[ConvSlot]:
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
    c = _cfg(vae_config)
    n = len(c["decoder_layers_per_block"]) - 1
    scaling = _tuple(c.get("decoder_spatio_temporal_scaling", True), n)
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
    c = _cfg(vae_config)
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


def _pad_spatial(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Spatial padding of [1, C, T, H, W] as nn.Conv3d(padding=(0, ph, pw), padding_mode=mode) does it,
    written as slices + concat so it exports to plain ONNX Slice/Concat (no 3-D reflect-pad op needed)."""
    if mode == "zeros":
        return F.pad(x, (pw, pw, ph, ph)) if (ph or pw) else x
    if mode != "reflect":
        raise NotImplementedError(f"spatial padding mode {mode!r} is not supported (LTX-2 uses 'reflect' / 'zeros')")
    if ph:  # reflect: row p..1 on top, row H-2..H-1-p at the bottom (edge not repeated)
        top = [x[:, :, :, i : i + 1] for i in range(ph, 0, -1)]
        bot = [x[:, :, :, -1 - i : x.shape[3] - i] for i in range(1, ph + 1)]
        x = torch.cat(top + [x] + bot, dim=3)
    if pw:
        left = [x[..., i : i + 1] for i in range(pw, 0, -1)]
        right = [x[..., -1 - i : x.shape[4] - i] for i in range(1, pw + 1)]
        x = torch.cat(left + [x] + right, dim=4)
    return x


def _depth_to_space(x: torch.Tensor, st: int, sh: int, sw: int) -> torch.Tensor:
    """[1, C*st*sh*sw, T, H, W] -> [1, C, T*st, H*sh, W*sw] with diffusers' channel order (c, st, sh, sw).
    Batch 1 is folded away so the permute has 7 axes (TensorRT allows at most 8)."""
    _, ch, T, H, W = x.shape
    x = x.reshape(ch // (st * sh * sw), st, sh, sw, T, H, W)
    x = x.permute(0, 4, 1, 5, 2, 6, 3)  # c, T, st, H, sh, W, sw
    return x.reshape(1, ch // (st * sh * sw), T * st, H * sh, W * sw)


class VAEDecoderStep(nn.Module):
    """One chunk of the causal streaming decoder with explicit per-conv feature caches.

    ``forward(latents, *caches) -> (frames, *caches_out)`` in ``vae_decoder_io`` order; ``first=True``
    takes no caches. Holds the diffusers decoder module (shared parameters) and re-implements its forward
    with the cache. ``timestep_conditioning`` and ``inject_noise`` decoders are refused (LTX-2 uses
    neither; SANA-WM decodes with temb=None)."""

    def __init__(
        self,
        vae,
        first: bool,
        latent_hw: tuple[int, int],
        num_frames: int | None = None,
        drop_first_frame: bool = True,
    ):
        super().__init__()
        c = _cfg(vae)
        self.first = first
        self.drop_first_frame = drop_first_frame
        self.io = vae_decoder_io(c, first, latent_hw, num_frames, drop_first_frame)
        self.decoder = vae.decoder
        self.scaling_factor = float(c.get("scaling_factor", 1.0))
        self.register_buffer("latents_mean", vae.latents_mean.detach().clone().float(), persistent=False)
        self.register_buffer("latents_std", vae.latents_std.detach().clone().float(), persistent=False)
        dec = self.decoder
        if dec.time_embedder is not None or c.get("timestep_conditioning", False):
            raise NotImplementedError(
                "timestep-conditioned LTX decoders are not supported: SANA-WM decodes with temb=None; "
                "set timestep_conditioning=False (the LTX-2 VAE has it off)"
            )
        if dec.patch_size_t != 1:
            raise NotImplementedError(f"decoder patch_size_t={dec.patch_size_t}; only 1 (LTX-2) is supported")
        self.slots = _walk_decoder(dec)
        mods = dict(dec.named_modules())
        for sl in self.slots:
            m = mods[sl.module_name]
            if m.conv.stride != (1, 1, 1) or m.conv.dilation[0] != 1:
                raise NotImplementedError(f"{sl.module_name}: only stride-1, undilated-in-time causal convs cached")
        for name, m in mods.items():
            if getattr(m, "per_channel_scale1", None) is not None:
                raise NotImplementedError(f"{name}: inject_noise (random spatial noise) cannot be a fixed graph")
        self.cache_shapes = [t.shape for t in self.io.inputs[1:]] if not first else None

    # --- building blocks (each takes/returns [1, C, T, H, W]) ---------------------------------------------
    def _conv(self, m: nn.Module, x: torch.Tensor, caches: Sequence[torch.Tensor], new: list) -> torch.Tensor:
        k = m.kernel_size[0]
        left = self._left_context(x, k, caches, len(new))
        xt = torch.cat([left, x], dim=2)  # [1, C, (k-1) + T, H, W]
        new.append(xt[:, :, xt.shape[2] - (k - 1) :])  # last k-1 input frames -> next chunk
        conv: nn.Conv3d = m.conv
        xt = _pad_spatial(xt, conv.padding[1], conv.padding[2], conv.padding_mode)
        return F.conv3d(xt, conv.weight, conv.bias, stride=1, padding=0, dilation=conv.dilation, groups=conv.groups)

    def _resnet(self, r: nn.Module, x: torch.Tensor, caches, new) -> torch.Tensor:
        h = r.nonlinearity(r.norm1(x))  # PerChannelRMSNorm: per pixel over channels, frame-local
        h = self._conv(r.conv1, h, caches, new)
        h = r.nonlinearity(r.norm2(h))  # dropout is identity in eval
        h = self._conv(r.conv2, h, caches, new)
        if r.norm3 is not None:
            x = r.norm3(x.movedim(1, -1)).movedim(-1, 1)  # LayerNorm over channels
        if r.conv_shortcut is not None:
            x = r.conv_shortcut(x)  # 1x1x1, frame-local
        return h + x

    def _upsample(self, u: nn.Module, x: torch.Tensor, caches, new) -> torch.Tensor:
        st, sh, sw = u.stride
        drop = self._dropped_frames(st, x)
        res = None
        if u.residual:
            res = _depth_to_space(x, st, sh, sw)  # [1, C_in/(st sh sw), T st, H sh, W sw]
            res = res.repeat(1, (st * sh * sw) // u.upscale_factor, 1, 1, 1)
            res = res[:, :, drop:]
        h = self._conv(u.conv, x, caches, new)
        h = _depth_to_space(h, st, sh, sw)[:, :, drop:]
        return h + res if res is not None else h

    # --- what differs between chunk 0 and later chunks (VAEDecoderDynamicStep decides it from the shape) ---
    def _left_context(self, x: torch.Tensor, k: int, caches, i: int) -> torch.Tensor:
        if self.first:
            return x[:, :, :1].expand(-1, -1, k - 1, -1, -1)  # causal start: replicate frame 0
        return caches[i]

    def _dropped_frames(self, st: int, x: torch.Tensor):
        return st - 1 if self.first else 0  # the clip's first st-1 frames only exist in chunk 0

    def _drop_condition_frame(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:] if self.first and self.drop_first_frame else x  # the runtime already has it

    def _check_inputs(self, latents: torch.Tensor, caches) -> None:
        exp = self.io.inputs[0].shape
        if tuple(latents.shape) != exp:
            raise ValueError(f"decoder step built for latents {exp}, got {tuple(latents.shape)}")
        if not self.first and len(caches) != len(self.slots):
            raise ValueError(f"decoder next step takes {len(self.slots)} caches (cache.0..), got {len(caches)}")

    def forward(self, latents: torch.Tensor, *caches: torch.Tensor):
        dec = self.decoder
        self._check_inputs(latents, caches)
        new: list[torch.Tensor] = []
        z = denormalize_latents(latents, self.latents_mean, self.latents_std, self.scaling_factor)
        x = self._conv(dec.conv_in, z, caches, new)
        for r in dec.mid_block.resnets:
            x = self._resnet(r, x, caches, new)
        for blk in dec.up_blocks:
            if blk.conv_in is not None:
                x = self._resnet(blk.conv_in, x, caches, new)
            for u in blk.upsamplers or []:
                x = self._upsample(u, x, caches, new)
            for r in blk.resnets:
                x = self._resnet(r, x, caches, new)
        x = dec.conv_act(dec.norm_out(x))
        x = self._conv(dec.conv_out, x, caches, new)  # [1, 3*p*p, F, h', w']
        # unpatchify p x p with diffusers' channel order (c, pw, ph): channel = c*p*p + b_w*p + b_h
        p = dec.patch_size
        _, ch, T, H, W = x.shape
        x = x.reshape(ch // (p * p), p, p, T, H, W).permute(0, 3, 4, 2, 5, 1)  # c, T, H, ph, W, pw
        x = x.reshape(1, ch // (p * p), T, H * p, W * p)
        return (self._drop_condition_frame(x), *new)


class StreamingVAEDecoder:
    """Torch-side chaining of ``VAEDecoderStep`` graphs: ``decode_chunk(latents)`` per chunk, the cache
    carried by ``state_map`` exactly as the runtime will (tests, benchmarks)."""

    def __init__(self, vae, latent_hw: tuple[int, int], first_frames: int = 4, next_frames: int = 3, drop_first_frame: bool = True):
        self.first_step = VAEDecoderStep(vae, True, latent_hw, first_frames, drop_first_frame)
        self.next_step = VAEDecoderStep(vae, False, latent_hw, next_frames, drop_first_frame)
        self.state: dict[str, torch.Tensor] | None = None

    def reset(self) -> None:
        self.state = None

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        step = self.first_step if self.state is None else self.next_step
        ins = [latents] + ([] if self.state is None else [self.state[t.name] for t in step.io.inputs[1:]])
        outs = dict(zip((t.name for t in step.io.outputs), step(*ins)))
        self.state = {step.io.state_map[k]: v for k, v in outs.items() if k in step.io.state_map}
        return outs["frames"]
