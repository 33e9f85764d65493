"""Argument checks shared by every form of the GDN op: bad inputs raise, they never write garbage."""

from __future__ import annotations

import torch


def _shape(name: str, t: torch.Tensor, want: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(want):
        raise ValueError(f"gdn: `{name}` must have shape {what} = {tuple(want)}, got {tuple(t.shape)}")


def check_gdn_inputs(q, k, v, beta, gamma, qz=None, kz=None, state=None, z=None, check_finite: bool = True):
    if q.dim() != 5:
        raise ValueError(f"gdn: `q` must be [B, H, T, S, D], got shape {tuple(q.shape)}")
    B, H, T, S, D = q.shape
    if T < 1 or S < 1:
        raise ValueError(f"gdn: need at least one frame and one token, got T={T}, S={S}")
    _shape("k", k, (B, H, T, S, D), "[B, H, T, S, D] like q")
    if v.dim() != 5 or tuple(v.shape[:4]) != (B, H, T, S):
        raise ValueError(f"gdn: `v` must be [B, H, T, S, Dv] with B, H, T, S of q {(B, H, T, S)}, got {tuple(v.shape)}")
    Dv = v.shape[-1]
    _shape("beta", beta, (B, H, T, S), "[B, H, T, S]")
    _shape("gamma", gamma, (B, H, T), "[B, H, T]")
    if (qz is None) != (kz is None):
        raise ValueError("gdn: pass both `qz` and `kz` (main branch) or neither (camera, numerator only)")
    if qz is not None:
        _shape("qz", qz, (B, H, T, S, D), "[B, H, T, S, D] like q")
        _shape("kz", kz, (B, H, T, S, D), "[B, H, T, S, D] like q")
    if z is not None and qz is None:
        raise ValueError("gdn: `z` (normaliser state) given for the numerator-only form")
    for name, st, want in (("state", state, (B, H, D, Dv)), ("z", z, (B, H, D))):
        if st is None:
            continue
        _shape(name, st, want, "the state layout")
        if st.dtype != torch.float32:
            raise ValueError(f"gdn: `{name}` must be float32 (recurrent state is kept in fp32), got {st.dtype}")
        if not st.is_contiguous():
            raise ValueError(f"gdn: `{name}` must be contiguous; call .contiguous() on it first")
    for name, t in (("q", q), ("k", k), ("v", v), ("beta", beta), ("gamma", gamma), ("qz", qz), ("kz", kz)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"gdn: `{name}` must be a floating tensor, got {t.dtype}")
    if check_finite and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        for name, t in (("beta", beta), ("gamma", gamma)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"gdn: gate `{name}` contains NaN or inf; the inputs upstream of the gates are broken")
