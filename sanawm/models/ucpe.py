"""UCPE camera geometry: per-token ray matrices and the half-head transforms of the coarse camera branch.

Reference 7.2-7.4. For latent frame f with relative camera-to-world pose (R, t) and pinhole intrinsics
(fx, fy, cx, cy) in latent pixels, every latent pixel (u, v) gets a ray frame: z = normalise(R d_cam),
x = normalise(R[:, 1] x z), y = normalise(z x x), and the "ray <- world" matrix
P = [[R_l^T, -R_l^T t], [0, 0, 0, 1]] with R_l = [x y z]. The camera branch multiplies the first half of
each head (groups of 4) by P^T (queries) or P^-1 (keys, values) and P (outputs), and rotates the second half
with the sliced RoPE table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rope import apply_rope


def _se3(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Stack rotation ``[..., 3, 3]`` and translation ``[..., 3]`` into ``[..., 4, 4]``."""
    top = torch.cat([R, t[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom = torch.cat([bottom[..., :3], torch.ones_like(bottom[..., 3:])], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def ray_matrices(camera: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ray matrices from the packed camera vector.

    Args:
        camera: ``[B, n, 20]``: row-major relative c2w (16) then fx, fy, cx, cy in latent pixels.
        height, width: latent grid; pixel centres at integer coordinates 0..W-1, 0..H-1 (no half-pixel shift).

    Returns:
        ``(P, P_inv)``, each ``[B, n * height * width, 4, 4]`` in ``camera.dtype``, tokens frame-major.
    """
    B, n, _ = camera.shape
    c2w = camera[..., :16].reshape(B, n, 4, 4)
    fx, fy, cx, cy = (camera[..., 16 + i][:, :, None, None] for i in range(4))
    R = c2w[..., :3, :3]  # [B, n, 3, 3]
    t_cam = c2w[..., :3, 3]
    u = torch.arange(width, dtype=camera.dtype, device=camera.device)[None, None, None, :]
    v = torch.arange(height, dtype=camera.dtype, device=camera.device)[None, None, :, None]
    x = ((u - cx) / fx).expand(B, n, height, width)
    y = ((v - cy) / fy).expand(B, n, height, width)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    d_cam = d_cam / torch.sqrt(1.0 + x * x + y * y)[..., None]  # unit ray (UCM with xi = 0)
    d_world = torch.einsum("bnij,bnhwj->bnhwi", R, d_cam)
    cam_y = R[..., :, 1][:, :, None, None, :].expand_as(d_world)
    z_r = F.normalize(d_world, dim=-1, eps=1e-6)
    x_r = F.normalize(torch.cross(cam_y, z_r, dim=-1), dim=-1, eps=1e-6)
    y_r = F.normalize(torch.cross(z_r, x_r, dim=-1), dim=-1, eps=1e-6)
    R_w2l = torch.stack([x_r, y_r, z_r], dim=-2)  # rows = ray axes
    t_exp = t_cam[:, :, None, None, :].expand_as(d_world)
    t_w2l = -torch.einsum("bnhwij,bnhwj->bnhwi", R_w2l, t_exp)
    P = _se3(R_w2l, t_w2l)
    # closed-form SE(3) inverse of P (not the c2w), as the reference does
    R_inv = R_w2l.transpose(-1, -2)
    P_inv = _se3(R_inv, -torch.einsum("bnhwij,bnhwj->bnhwi", R_inv, t_w2l))
    # degenerate rays (NaN intrinsics/poses) fall back to identity instead of poisoning the branch
    bad = torch.isnan(d_world).any(-1)[..., None, None]
    eye = torch.eye(4, dtype=camera.dtype, device=camera.device)
    P = torch.where(bad, eye, P)
    P_inv = torch.where(bad, eye, P_inv)
    N = n * height * width
    return P.reshape(B, N, 4, 4), P_inv.reshape(B, N, 4, 4)


def ucpe_apply(
    x: torch.Tensor,
    M: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    inverse_rope: bool = False,
) -> torch.Tensor:
    """Block-diagonal UCPE transform of head vectors.

    Args:
        x: ``[B, h, N, D]``.
        M: ``[B, N, 4, 4]`` per-token matrix applied to each group of 4 channels of the first half.
        cos, sin: ``[N, D / 4]`` sliced RoPE tables for the second half.
        inverse_rope: rotate the second half by the conjugate (output decoding).
    """
    B, h, N, D = x.shape
    half = D // 2
    proj, rot = x[..., :half], x[..., half:]
    proj = torch.einsum("bnij,bhnkj->bhnki", M.to(x.dtype), proj.reshape(B, h, N, half // 4, 4))
    rot = apply_rope(rot, cos, sin, inverse=inverse_rope)
    return torch.cat([proj.reshape(B, h, N, half), rot], dim=-1)


def downscale_to_reference_rms(reference: torch.Tensor, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each head vector of ``x`` down (never up) to the RMS of ``reference`` (same shape, ``[..., D]``).

    The UCPE translation part can inflate vectors a lot; diffusers' SANA-WM clamps the transformed q/k/v back to
    their pre-transform envelope before attention, and so do we so the two agree numerically.
    """
    ref_rms = reference.square().mean(-1, keepdim=True).add(eps).sqrt()
    x_rms = x.square().mean(-1, keepdim=True).add(eps).sqrt()
    return x * (ref_rms / x_rms.clamp_min(eps)).clamp(max=1.0)
