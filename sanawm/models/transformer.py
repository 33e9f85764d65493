"""``SanaWMGenerator``: the stage-1 SANA-WM DiT (reference 8) with bidirectional and chunk-causal modes.

Parameter names are the official checkpoint keys (minus the dropped ``pos_embed`` buffer), so
``load_state_dict`` of an official state dict works as is; see :mod:`sanawm.models.loading` for files.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from ..config import GeneratorConfig
from .attention import PosContext
from .block import SanaWMBlock
from .layers import CaptionEmbedder, FinalLayer, PatchEmbed3D, RMSNorm, TimestepEmbedder, truncate_timestep
from .plan import ChunkRule, Plan, bidirectional_plan, chunked_plan
from .rope import RopeTables
from .ucpe import ray_matrices

TEXT_MASK_BIAS = -10000.0  # additive bias on padded text tokens (release SDPA path)


class SanaWMGenerator(nn.Module):
    """Stage-1 DiT. ``forward`` is the whole-sequence model; :meth:`run` is the shared core that the streaming
    step (:mod:`sanawm.models.generator_step`) calls with carried state.

    Precision policy for the quantiser (``fnmatch`` patterns over ``named_modules`` / ``named_parameters``):
    ``fp8_quantizable`` linears/1x1 convs may run in FP8; everything matching ``fp8_skip`` stays high precision.
    """

    fp8_quantizable = (
        "blocks.*.attn.qkv",
        "blocks.*.attn.proj",
        "blocks.*.attn.output_gate",
        "blocks.*.attn.q_proj_cam",
        "blocks.*.attn.k_proj_cam",
        "blocks.*.attn.v_proj_cam",
        "blocks.*.attn.out_proj_cam",
        "blocks.*.cross_attn.q_linear",
        "blocks.*.cross_attn.kv_linear",
        "blocks.*.cross_attn.proj",
        "blocks.*.mlp.inverted_conv.conv",
        "blocks.*.mlp.point_conv.conv",
        "blocks.*.plucker_proj",
    )
    fp8_skip = (
        "x_embedder*",
        "raymap_embedder*",
        "plucker_embedder*",
        "t_embedder*",
        "t_block*",
        "y_embedder*",
        "attention_y_norm*",
        "final_layer*",
        "*norm*",
        "*.scale_shift_table",
        "blocks.*.attn.beta_proj*",
        "blocks.*.attn.gate_proj*",
        "blocks.*.attn.A_log",
        "blocks.*.attn.dt_bias",
        "blocks.*.attn.conv_k*",
        "blocks.*.mlp.depth_conv*",
        "blocks.*.mlp.t_conv*",  # dense temporal conv: carries chunk-boundary context, kept high precision
    )

    @classmethod
    def fp8_policy(cls, name: str) -> str:
        """``"quantize"`` or ``"skip"`` for a module/parameter name (skip wins; unknown names are skipped)."""
        if any(fnmatch.fnmatch(name, p) for p in cls.fp8_skip):
            return "skip"
        if any(fnmatch.fnmatch(name, p) for p in cls.fp8_quantizable):
            return "quantize"
        return "skip"

    @classmethod
    def from_pretrained(cls, path, config=None, kind: str | None = None, dtype: torch.dtype = torch.float32):
        """The generator stored at ``path`` (official ``.safetensors``, training ``.pt`` or a diffusers folder), with
        its config detected from ``config.json`` / the weight shapes (``config``: a name or GeneratorConfig to
        insist on; a mismatch raises). See :mod:`sanawm.models.pretrained`."""
        from .pretrained import from_pretrained

        return from_pretrained(path, config, kind, dtype)

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        C = cfg.hidden_size
        self.x_embedder = PatchEmbed3D(cfg.in_channels, C)
        self.raymap_embedder = PatchEmbed3D(3, C)  # unused with the Plücker branch on; in the checkpoint
        self.plucker_embedder = PatchEmbed3D(cfg.plucker_channels, C)
        self.t_embedder = TimestepEmbedder(C)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.caption_length)
        self.attention_y_norm = RMSNorm(C, cfg.y_norm_eps)
        self.blocks = nn.ModuleList([SanaWMBlock(cfg, i) for i in range(cfg.num_layers)])
        self.final_layer = FinalLayer(C, cfg.in_channels)
        self.rope = RopeTables(cfg)

    # ------------------------------------------------------------------ core
    def run(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        camera: torch.Tensor,
        plucker: torch.Tensor,
        frame_index: torch.Tensor,
        plan: Plan,
        states: list[dict] | None = None,
    ) -> tuple[torch.Tensor, list[dict]]:
        """Core forward over explicit time handling and carried state.

        Args:
            latents ``[B, Cin, T, H, W]``; timestep ``[B, T]`` (0..1000, truncated here); text ``[B, L, Ct]``;
            text_mask ``[B, L]`` (1 = token); camera ``[B, T, 20]``; plucker ``[B, 48, T, H, W]``;
            frame_index ``[T]`` int64 absolute latent frame indices (RoPE rows); plan: time handling;
            states: per block carried state dicts (None = nothing carried).
        Returns:
            ``(velocity [B, Cin, T, H, W], per-block state dicts after this call)``.
        """
        B, _, T, H, W = latents.shape
        dtype = self.x_embedder.proj.weight.dtype
        x = self.x_embedder(latents.to(dtype))  # [B, T, S, C]
        pl = self.plucker_embedder(plucker.to(dtype))

        t = truncate_timestep(timestep)
        t_emb = self.t_embedder(t)  # [B, T, C]
        t0 = self.t_block(t_emb).unflatten(-1, (6, -1))  # [B, T, 6, C]

        y = self.attention_y_norm(self.y_embedder(text.to(dtype)))
        mask = text_mask.to(dtype)
        text_bias = ((1.0 - mask) * TEXT_MASK_BIAS)[:, None, None, :]

        cos, sin = self.rope(frame_index, H, W)
        cam_cos, cam_sin = self.rope.cam_slice(cos, sin)
        P, P_inv = ray_matrices(camera.float(), H, W)
        pos = PosContext(cos, sin, cam_cos, cam_sin, P.to(dtype), P_inv.to(dtype), H, W)

        outs = []
        for i, block in enumerate(self.blocks):
            x, st = block(x, y, text_bias, t0, pl, pos, plan, None if states is None else states[i])
            outs.append(st)
        out = self.final_layer(x, t_emb)  # [B, T, S, Cin]
        v = out.permute(0, 3, 1, 2).reshape(B, -1, T, H, W)
        return v, outs

    # -------------------------------------------------------------- public
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        camera: torch.Tensor,
        plucker: torch.Tensor,
        chunked: bool = False,
        rule: ChunkRule | None = None,
    ) -> torch.Tensor:
        """Whole-sequence velocity.

        Args:
            latents: ``[B, Cin, T, H, W]``.
            timestep: ``[B, 1, T]`` or ``[B, T]`` per frame (or ``[B]``), 0..1000.
            text: ``[B, 1, L, Ct]`` or ``[B, L, Ct]``; text_mask ``[B, L]``.
            camera: ``[B, T, 20]``; plucker ``[B, 48, T, H, W]``.
            chunked: chunk-causal mode over ``cfg.chunk_bounds(T)`` (reference 9.2) instead of bidirectional.
            rule: chunk-causal softmax window / scale / camera-conv rule (default: training teacher);
                ``ChunkRule.streaming(cfg)`` reproduces the streaming step exactly.
        Returns:
            velocity ``[B, Cin, T, H, W]`` (eps - x0).
        """
        B, _, T = latents.shape[:3]
        if timestep.dim() == 3:
            timestep = timestep.reshape(B, T)
        elif timestep.dim() == 1:
            timestep = timestep[:, None].expand(B, T)
        if text.dim() == 4:
            text = text[:, 0]
        plan = chunked_plan(self.cfg, T, rule) if chunked else bidirectional_plan(self.cfg, T)
        frame_index = torch.arange(T, device=latents.device)
        v, _ = self.run(latents, timestep, text, text_mask, camera, plucker, frame_index, plan)
        return v
