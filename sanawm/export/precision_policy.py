"""Per-layer precision policy for FP8 exports: which layers stay high precision, and how activation scales are set.

``--keep-high-precision`` takes a comma list of

* ``embedders``: patch / Plücker / raymap / timestep / caption embedders (already FP32 by the model's own
  ``fp8_skip``; named so the manifest states it),
* ``final``: the final layer (likewise),
* ``first:N`` / ``last:N``: every quantizable layer of the first / last N transformer blocks,
* ``blocks:I-J``: blocks I..J inclusive,
* any other token with a ``.`` or ``*`` (or ``re:<regex>``): a module-name pattern relative to the model.

Weights are quantized per output channel (``weight_scale`` per row; per tensor with ``per_channel_weights=False``);
activation scales per tensor by ``--act-scale`` (:mod:`sanawm.export.act_scale`). The manifest's
``export.precision_policy`` records the tokens, the resolved blocks and the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .act_scale import parse_act_scale

DEFAULT_KEEP = "embedders,final"
GROUPS = {  # named groups -> module-name patterns relative to the model that declares the FP8 policy
    "embedders": ("x_embedder*", "raymap_embedder*", "plucker_embedder*", "t_embedder*", "t_block*", "y_embedder*"),
    "final": ("final_layer*",),
}
BLOCK_LISTS = ("blocks", "layers", "transformer_blocks")  # attribute holding the transformer blocks


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class PrecisionPolicy:
    keep: tuple[str, ...] = tuple(DEFAULT_KEEP.split(","))
    act_scale: str = "max"
    per_channel_weights: bool = True

    @classmethod
    def parse(cls, keep: str | None = None, act_scale: str = "max") -> "PrecisionPolicy":
        toks = tuple(t.strip() for t in (DEFAULT_KEEP if keep is None else keep).split(",") if t.strip())
        for t in toks:
            _check_token(t)
        parse_act_scale(act_scale)  # raises with the accepted spellings
        return cls(toks, act_scale.strip().lower())

    @property
    def percentile(self) -> float | None:
        return parse_act_scale(self.act_scale)

    def kept_blocks(self, depth: int) -> list[int]:
        out: set[int] = set()
        for t in self.keep:
            kind, _, arg = t.partition(":")
            if kind == "first":
                out |= set(range(min(int(arg), depth)))
            elif kind == "last":
                out |= set(range(max(depth - int(arg), 0), depth))
            elif kind == "blocks":
                i, _, j = arg.partition("-")
                out |= set(range(int(i), min(int(j or i), depth - 1) + 1))
        return sorted(out)

    def exclude_patterns(self, module: nn.Module) -> list[str]:
        """Full module-name patterns of ``module`` to keep high precision (for ``quantize_fp8(exclude=...)``);
        only patterns that match a Linear / Conv of ``module`` are returned (the named groups are optional)."""
        prefix, model = _policy_root(module)
        blocks_attr, depth = _blocks(model)
        optional = [prefix + p for t in self.keep for p in GROUPS.get(t, ())]
        if blocks_attr is not None:
            optional += [f"{prefix}{blocks_attr}.{i}.*" for i in self.kept_blocks(depth)]
        raw = [prefix + t for t in self.keep if t not in GROUPS and ":" not in t]
        raw += [t for t in self.keep if t.startswith("re:")]
        missed = [p for p in raw if not _only_matching(module, [p])]
        if missed:
            raise PolicyError(f"--keep-high-precision pattern(s) {missed} match no Linear/Conv layer of "
                              f"{type(module).__name__}; module names look like '{prefix}blocks.0.attn.qkv'")
        return _only_matching(module, optional) + raw

    def to_manifest(self, module: nn.Module | None = None) -> dict:
        d = {"keep_high_precision": list(self.keep), "act_scale": self.act_scale,
             "weights": "per_output_channel" if self.per_channel_weights else "per_tensor",
             "activations": "per_tensor"}
        if module is not None:
            _, model = _policy_root(module)
            attr, depth = _blocks(model)
            d["kept_blocks"] = self.kept_blocks(depth) if attr else []
        return d


def _check_token(t: str) -> None:
    kind, sep, arg = t.partition(":")
    if t in GROUPS or t.startswith("re:") or (not sep and ("." in t or "*" in t)):
        return
    if kind in ("first", "last") and arg.isdigit():
        return
    if kind == "blocks" and re.fullmatch(r"\d+(-\d+)?", arg):
        return
    raise PolicyError(f"--keep-high-precision: {t!r} is not understood; use embedders, final, first:N, last:N, "
                      "blocks:I-J or a module pattern (e.g. 'blocks.*.cross_attn.*')")


def _policy_root(module: nn.Module) -> tuple[str, nn.Module]:
    """(name prefix, submodule) of the model that declares ``fp8_quantizable`` (a step wraps the model)."""
    for name, m in module.named_modules():
        if getattr(type(m), "fp8_quantizable", None) and _blocks(m)[0] is not None:
            return (name + "." if name else ""), m
    return "", module


def _blocks(model: nn.Module) -> tuple[str | None, int]:
    for attr in BLOCK_LISTS:
        b = getattr(model, attr, None)
        if isinstance(b, nn.ModuleList):
            return attr, len(b)
    return None, 0


def _only_matching(module: nn.Module, pats: list[str]) -> list[str]:
    from .quantize import _WRAP, _match

    names = [n for n, m in module.named_modules() if type(m) in _WRAP]
    return [p for p in pats if any(_match(n, p) for n in names)]
