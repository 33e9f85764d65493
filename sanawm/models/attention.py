"""Self-attention of the blocks: frame-wise GDN (reference 5, 7.3) and softmax (reference 6, 7.4), each with
the UCPE camera branch summed before the shared output gate:

    y = proj( (o_main + out_proj_cam(o_cam)) * SiLU(output_gate(a)) )

Both classes share the parameter layout of the checkpoint (softmax blocks carry the unused GDN gates and have
no ``conv_k`` / ``conv_k_cam``). Time is handled through a :class:`~sanawm.models.plan.Plan`; carried state is
passed in and returned explicitly. Inputs ``a`` are ``[B, T, S, C]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GeneratorConfig
from ..kernels.gdn import gdn_scan
from .layers import RMSNorm
from .plan import Plan
from .rope import apply_rope
from .ucpe import downscale_to_reference_rms, ucpe_apply

# finite "minus infinity": exact zero weight in fp32 softmax, and no inf * 0 = NaN in fp16 graphs
MASK_VALUE = -30000.0


@dataclass
class PosContext:
    """Per-call positional tensors shared by all blocks (tokens frame-major, N = T * S)."""

    cos: torch.Tensor  # [N, D/2] main RoPE
    sin: torch.Tensor
    cam_cos: torch.Tensor  # [N, D/4] sliced RoPE of the camera branch
    cam_sin: torch.Tensor
    P: torch.Tensor  # [B, N, 4, 4] ray <- world
    P_inv: torch.Tensor  # [B, N, 4, 4]
    height: int
    width: int


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``[B, T, S, C]`` -> ``[B, h, T*S, D]``."""
    B, T, S, C = x.shape
    return x.reshape(B, T * S, h, C // h).transpose(1, 2)


def _merge(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, h, T*S, D]`` -> ``[B, T, S, C]``."""
    B, h, N, D = x.shape
    return x.transpose(1, 2).reshape(B, T, N // T, h * D)


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    segments: tuple[tuple[int, int], ...],
    tail: torch.Tensor | None,
    across: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided depthwise temporal conv of the K projection (reference 5.1 step 2).

    y[t] = sum_j w_j x[t-K+1+j] + sum_j w_j x[t+K-1-j] - w_{K-1} x[t]: the causal kernel run forwards and
    backwards, centre tap counted once. The backward half never crosses a segment end; the forward half
    crosses segments when ``across`` (starting from ``tail``, the previous call's last K-1 raw frames, or
    zeros), else restarts from zeros at every segment.

    Args:
        x: ``[B, T, S, C]`` raw projection. weight: ``[C, 1, K]`` (tap K-1 multiplies the current frame).
    Returns:
        ``(y [B, T, S, C], new_tail [B, K-1, S, C])``; new_tail = last K-1 raw frames of [tail ; x].
    """
    B, T, S, C = x.shape
    w = weight[:, 0, :].to(x.dtype)  # [C, K]
    K = w.shape[-1]
    zeros = x.new_zeros(B, K - 1, S, C)
    left = zeros if tail is None else tail.to(x.dtype)
    xp = torch.cat([left, x], dim=1)

    def causal(z: torch.Tensor, n: int) -> torch.Tensor:  # z has K-1 frames of left context
        return sum(w[:, j] * z[:, j : j + n] for j in range(K))

    if across:
        fwd = causal(xp, T)
    else:
        fwd = torch.cat([causal(torch.cat([zeros, x[:, s:e]], 1), e - s) for s, e in segments], 1)
    bwd = torch.cat(
        [causal(torch.cat([x[:, s:e], zeros], 1).flip(1), e - s).flip(1) for s, e in segments], 1
    )
    y = fwd + bwd - w[:, K - 1] * x
    return y, xp[:, xp.shape[1] - (K - 1) :]


class _AttnBase(nn.Module):
    """Parameters common to both attention kinds (names = checkpoint keys under ``blocks.{i}.attn.``)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        C, h = cfg.hidden_size, cfg.num_heads
        self.heads = h
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C)
        self.q_norm = RMSNorm(C, cfg.qk_norm_eps)
        self.k_norm = RMSNorm(C, cfg.qk_norm_eps)
        self.beta_proj = nn.Linear(C, h)
        self.gate_proj = nn.Linear(C, h)
        self.A_log = nn.Parameter(torch.zeros(h))
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.register_buffer("recall_gate", torch.zeros(1))  # unused; in the checkpoint
        self.output_gate = nn.Linear(C, C)
        self.q_proj_cam = nn.Linear(C, C)
        self.k_proj_cam = nn.Linear(C, C)
        self.v_proj_cam = nn.Linear(C, C)
        self.out_proj_cam = nn.Linear(C, C)
        self.q_norm_cam = RMSNorm(C, cfg.qk_norm_eps)
        self.k_norm_cam = RMSNorm(C, cfg.qk_norm_eps)

    def _finish(self, a: torch.Tensor, main: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        o = main + self.out_proj_cam(cam)
        # gate in fp32 as the release does
        o = o.float() * F.silu(self.output_gate(a).float())
        return self.proj(o.to(a.dtype))


class GDNAttention(_AttnBase):
    """Frame-wise bidirectional / chunk-causal / streaming Gated DeltaNet with the UCPE camera branch.

    State (all optional, zeros when absent): ``S_kv [B,h,D,D]``, ``S_z [B,h,D]``, ``cam_S_kv [B,h,D,D]`` (fp32),
    ``k_tail`` / ``cam_k_tail`` ``[B,K-1,S,C]`` raw K projections of the previous frames.
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg)
        C, K = cfg.hidden_size, cfg.conv_kernel_size
        self.conv_k = _ShortConvWeight(C, K)
        self.conv_k_cam = _ShortConvWeight(C, K)
        self.eps = cfg.gdn_eps

    def gates(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """beta ``[B,h,T,S]`` per token; gamma ``[B,h,T]`` per frame (fp32) from the frame-mean input."""
        beta = torch.sigmoid(self.beta_proj(a)).permute(0, 3, 1, 2)
        g = self.gate_proj(a.mean(dim=2)).float()  # [B, T, h]
        gamma = torch.exp(-torch.exp(self.A_log.float()) * F.softplus(g + self.dt_bias.float()))
        return beta, gamma.transpose(1, 2)

    def _scan(self, plan: Plan, q, k, v, beta, gamma, qz=None, kz=None, state=None, z=None):
        """gdn_scan per segment; forward state crosses segments, reverse scan stays inside each one."""
        outs = []
        for s, e in plan.segments:
            o, state, z = gdn_scan(
                q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], beta[:, :, s:e], gamma[:, :, s:e],
                None if qz is None else qz[:, :, s:e], None if kz is None else kz[:, :, s:e],
                state=state, z=z, reverse=True, eps=self.eps,
            )
            outs.append(o)
        o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return o, state, z

    def forward(self, a: torch.Tensor, pos: PosContext, plan: Plan, state: dict | None = None):
        """``a`` ``[B, T, S, C]`` -> ``(y [B, T, S, C], state_out dict)``."""
        state = state or {}
        B, T, S, C = a.shape
        h = self.heads
        D = C // h
        kappa = (D * S) ** -0.5
        beta, gamma = self.gates(a)

        def to5(x):  # [B, h, N, D] -> [B, h, T, S, D]
            return x.reshape(B, h, T, S, D)

        # ---- main branch
        q, k, v = self.qkv(a).chunk(3, dim=-1)
        k, k_tail = short_conv(k, self.conv_k.weight, plan.segments, state.get("k_tail"), across=True)
        q = F.relu(self.q_norm(q))
        k = F.relu(self.k_norm(k)) * kappa
        qh, kh, vh = _heads(q, h), _heads(k, h), _heads(v, h)
        q_rot = apply_rope(qh, pos.cos, pos.sin)
        k_rot = apply_rope(kh, pos.cos, pos.sin)
        o, S_kv, S_z = self._scan(
            plan, to5(q_rot), to5(k_rot), to5(vh), beta, gamma, to5(qh), to5(kh),
            state.get("S_kv"), state.get("S_z"),
        )
        main = _merge(o.reshape(B, h, T * S, D), T)

        # ---- camera branch (numerator only)
        qc, kc, vc = self.q_proj_cam(a), self.k_proj_cam(a), self.v_proj_cam(a)
        kc, cam_k_tail = short_conv(
            kc, self.conv_k_cam.weight, plan.segments,
            state.get("cam_k_tail") if plan.cam_conv_across else None, across=plan.cam_conv_across,
        )
        qc = _heads(F.relu(self.q_norm_cam(qc)), h)
        kc = _heads(F.relu(self.k_norm_cam(kc)) * kappa, h)
        vc = _heads(vc, h)
        qu = downscale_to_reference_rms(qc, ucpe_apply(qc, pos.P.transpose(-1, -2), pos.cam_cos, pos.cam_sin))
        ku = downscale_to_reference_rms(kc, ucpe_apply(kc, pos.P_inv, pos.cam_cos, pos.cam_sin))
        vu = downscale_to_reference_rms(vc, ucpe_apply(vc, pos.P_inv, pos.cam_cos, pos.cam_sin))
        # beta discount by the mean squared key stretch of each frame (reference 7.3 step 4)
        infl = (ku.norm(dim=-1).clamp_min(1e-6) / kc.norm(dim=-1).clamp_min(1e-6)) ** 2  # [B, h, N]
        beta_c = beta / infl.reshape(B, h, T, S).mean(-1, keepdim=True).clamp_min(1.0)
        oc, cam_S_kv, _ = self._scan(
            plan, to5(qu).float(), to5(ku).float(), to5(vu).float(), beta_c.float(), gamma,
            state=state.get("cam_S_kv"),
        )
        oc = ucpe_apply(oc.reshape(B, h, T * S, D).to(a.dtype), pos.P, pos.cam_cos, pos.cam_sin, inverse_rope=True)
        y = self._finish(a, main, _merge(oc, T))
        out = {"S_kv": S_kv, "S_z": S_z, "cam_S_kv": cam_S_kv, "k_tail": k_tail, "cam_k_tail": cam_k_tail}
        return y, out


class _ShortConvWeight(nn.Module):
    """Holds the ``[C, 1, K]`` causal depthwise kernel under the checkpoint name ``conv_k.weight``."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        w = torch.zeros(channels, 1, kernel)
        w[:, 0, -1] = 1.0  # identity tap (training init)
        self.weight = nn.Parameter(w)


def _segment_bias(plan: Plan, S: int, device, dtype) -> torch.Tensor | None:
    """Additive ``[N, N]`` key mask of a multi-segment softmax (None when there is one segment)."""
    segs = plan.segments
    if len(segs) == 1:
        return None
    T = plan.num_frames
    allowed = [[False] * T for _ in range(T)]
    for c, (s, e) in enumerate(segs):
        seen = set(range(c)) if plan.window is None else set(plan.window[c])
        seen.add(c)
        for d in seen:
            ks, ke = segs[d]
            for f in range(s, e):
                for g in range(ks, ke):
                    allowed[f][g] = True
    frame = torch.tensor(allowed, device=device)
    tok = frame.repeat_interleave(S, 0).repeat_interleave(S, 1)
    return torch.where(tok, torch.zeros((), dtype=dtype, device=device),
                       torch.full((), MASK_VALUE, dtype=dtype, device=device))


def _sdpa(q, k, v, bias, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class SoftmaxAttention(_AttnBase):
    """Softmax attention (main: RMSNorm + full RoPE; camera: UCPE) over this call's tokens plus an optional
    external window of cached K/V (``[B,h,Wt,D]`` each, masked by ``valid [Wt]``)."""

    def forward(self, a: torch.Tensor, pos: PosContext, plan: Plan, window: dict | None = None):
        """Returns ``(y [B,T,S,C], kv)`` with ``kv`` = this call's post-RoPE k, v and post-UCPE cam k, v
        ``[B, h, T*S, D]`` (what the streaming cache stores)."""
        B, T, S, C = a.shape
        h = self.heads
        q, k, v = self.qkv(a).chunk(3, dim=-1)
        q = apply_rope(_heads(self.q_norm(q), h), pos.cos, pos.sin)
        k = apply_rope(_heads(self.k_norm(k), h), pos.cos, pos.sin)
        v = _heads(v, h)

        qc = _heads(self.q_norm_cam(self.q_proj_cam(a)), h)
        kc = _heads(self.k_norm_cam(self.k_proj_cam(a)), h)
        vc = _heads(self.v_proj_cam(a), h)
        qu = downscale_to_reference_rms(qc, ucpe_apply(qc, pos.P.transpose(-1, -2), pos.cam_cos, pos.cam_sin))
        ku = downscale_to_reference_rms(kc, ucpe_apply(kc, pos.P_inv, pos.cam_cos, pos.cam_sin))
        vu = downscale_to_reference_rms(vc, ucpe_apply(vc, pos.P_inv, pos.cam_cos, pos.cam_sin))

        bias = _segment_bias(plan, S, a.device, q.dtype)
        K_, V_, CK, CV = k, v, ku, vu
        if window is not None:
            valid = window["valid"].to(q.dtype)
            wb = torch.where(valid > 0.5, torch.zeros_like(valid), torch.full_like(valid, MASK_VALUE))
            bias = torch.cat([wb, torch.zeros(T * S, dtype=q.dtype, device=a.device)])[None, None, None, :]
            K_ = torch.cat([window["k"].to(k.dtype), k], dim=2)
            V_ = torch.cat([window["v"].to(v.dtype), v], dim=2)
            CK = torch.cat([window["cam_k"].to(ku.dtype), ku], dim=2)
            CV = torch.cat([window["cam_v"].to(vu.dtype), vu], dim=2)
        main = _sdpa(q, K_, V_, bias, plan.main_scale)
        oc = _sdpa(qu, CK, CV, bias, plan.cam_scale)
        oc = ucpe_apply(oc, pos.P, pos.cam_cos, pos.cam_sin, inverse_rope=True)
        y = self._finish(a, _merge(main, T), _merge(oc, T))
        return y, {"k": k, "v": v, "cam_k": ku, "cam_v": vu}
