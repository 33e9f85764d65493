"""The causal streaming VAE decoder step (every conv cache an explicit tensor) and a torch chunk-by-chunk driver."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import config_dict, denormalize_latents
from .decoder_layout import vae_decoder_io, walk_decoder


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
        c = config_dict(vae)
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
        self.slots = walk_decoder(dec)
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
