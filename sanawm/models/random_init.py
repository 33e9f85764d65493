"""Seeded random weights of a sensible scale, for tests, benchmarks and random-weight bundles.

Default initialisation leaves several SANA-WM layers at zero (camera out_proj, plucker_proj, t_conv, the
output gate), which would hide whole branches from any comparison; this fills every float tensor instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every float tensor of the state dict with seeded non-zero values (in place); GDN decay terms
    are kept in their stable ranges so long rollouts stay finite. Non-persistent buffers (RoPE tables) are
    derived, not weights, and stay as they are, so the module can be rebuilt from its state dict."""
    g = torch.Generator().manual_seed(seed)
    saved = set(module.state_dict())
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if name not in saved or not p.is_floating_point() or p.numel() == 0:
                continue
            v = random_value(name, tuple(p.shape), g)
            p.copy_(v.to(p.dtype))
    return module


def random_value(name: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    """The seeded FP32 value ``randomize_`` gives the state-dict entry ``name`` (also used to write random
    checkpoints tensor by tensor, ``sanawm.export.scale``)."""
    p = torch.empty(shape, device="meta")  # shape and dim only
    if name.endswith("A_log"):
        return torch.log(torch.rand(p.shape, generator=g) * 3 + 0.5)
    elif name.endswith("dt_bias"):
        return torch.randn(p.shape, generator=g) * 0.5 - 1.0
    elif "norm" in name and name.endswith("weight"):
        return 1.0 + 0.2 * torch.randn(p.shape, generator=g)
    elif "conv_k" in name:
        return 0.4 * torch.randn(p.shape, generator=g)
    elif name.endswith("scale_shift_table"):
        return 0.2 * torch.randn(p.shape, generator=g)
    elif p.dim() >= 2:
        return torch.randn(p.shape, generator=g) / math.sqrt(p.numel() // p.shape[0])
    else:
        return 0.1 * torch.randn(p.shape, generator=g)
