"""Checkpoint loading for :class:`~sanawm.models.transformer.SanaWMGenerator`, kept apart from the maths.

Three on-disk kinds hold the same weights (reference 12):

* ``official``: Sana-format ``.safetensors`` (``dit/sana_wm_*.safetensors``), flat keys, plus a ``pos_embed``
  buffer that the official loader drops.
* ``training``: the streaming ``sana_dit/model.pt`` torch pickle; the weights are ``state["generator"]``
  when present, keys may carry a leading ``model.``; ``pos_embed`` dropped.
* ``diffusers``: a folder with ``config.json`` and ``diffusion_pytorch_model*.safetensors`` (possibly sharded
  with an ``.index.json``); the timestep MLP is named ``linear_1/linear_2`` there and the unused null caption
  ``y_embedding`` is absent.

Every mismatch raises :class:`CheckpointError` naming the keys, the checkpoint kind and, for shape
mismatches, the config that would fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from ..config import CONFIGS, GeneratorConfig

DIFFUSERS_RENAMES = (("t_embedder.linear_1.", "t_embedder.mlp.0."), ("t_embedder.linear_2.", "t_embedder.mlp.2."))
DROPPED_KEYS = ("pos_embed",)  # legacy absolute pos-embed buffer; the model uses RoPE
# keys a kind may legitimately lack; the model keeps its own (unused at inference) values for them
OPTIONAL_KEYS = {"diffusers": ("y_embedder.y_embedding",)}
KINDS = ("official", "training", "diffusers")
_SHOW = 5


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message says what is wrong and what to do."""


def convert_diffusers_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``SanaWMTransformer3DModel`` keys -> official keys (only the timestep MLP differs)."""
    out = {}
    for k, v in sd.items():
        for a, b in DIFFUSERS_RENAMES:
            if k.startswith(a):
                k = b + k[len(a) :]
        out[k] = v
    return out


def _clean_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("model."):
            k = k[len("model.") :]
        if k in DROPPED_KEYS:
            continue
        out[k] = v
    return out


def detect_kind(path: str | os.PathLike) -> str:
    p = Path(path)
    if p.is_dir():
        return "diffusers"
    if p.suffix == ".safetensors":
        return "official"
    if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return "training"
    raise CheckpointError(
        f"cannot tell the checkpoint kind of {str(p)!r}: expected a .safetensors file (official), a .pt file "
        "(streaming training checkpoint) or a diffusers folder with config.json"
    )


def _diffusers_dir(p: Path) -> Path:
    if (p / "transformer" / "config.json").exists() and not (p / "config.json").exists():
        return p / "transformer"  # pipeline root
    return p


def _read_diffusers(p: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = _diffusers_dir(p)
    if not (p / "config.json").exists():
        raise CheckpointError(f"{str(p)!r} is not a diffusers model folder: config.json is missing")
    index = p / "diffusion_pytorch_model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (p / f).exists()]
        if missing:
            raise CheckpointError(f"diffusers folder {str(p)!r}: shard(s) {missing} named by {index.name} are missing")
        sd = {}
        for f in files:
            sd.update(load_file(str(p / f)))
        return sd
    single = p / "diffusion_pytorch_model.safetensors"
    if not single.exists():
        raise CheckpointError(
            f"diffusers folder {str(p)!r} has neither diffusion_pytorch_model.safetensors nor its .index.json"
        )
    return load_file(str(single))


def read_state_dict(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint and return ``(state_dict with official keys, kind)``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    kind = kind or detect_kind(p)
    if kind not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; choose one of {KINDS}")
    if kind == "official":
        from safetensors.torch import load_file

        return _clean_official(load_file(str(p))), kind
    if kind == "training":
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the fix
            raise CheckpointError(f"could not read training checkpoint {str(p)!r} with weights_only=True: {e}") from e
        if isinstance(state, Mapping) and "generator" in state:
            state = state["generator"]
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(
                f"training checkpoint {str(p)!r} holds no tensor state dict (expected a dict of tensors, "
                "or one under the 'generator' key)"
            )
        return _clean_official(state), kind
    return convert_diffusers_keys(_read_diffusers(p)), kind


def infer_dims(sd: Mapping[str, torch.Tensor]) -> dict:
    """Structural sizes readable from the weights (latent H/W and chunking are not)."""
    dims = {}
    if "x_embedder.proj.weight" in sd:
        w = sd["x_embedder.proj.weight"]
        dims["hidden_size"], dims["in_channels"] = int(w.shape[0]), int(w.shape[1])
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    if blocks:
        dims["num_layers"] = max(blocks) + 1
    if "blocks.0.attn.beta_proj.weight" in sd:
        dims["num_heads"] = int(sd["blocks.0.attn.beta_proj.weight"].shape[0])
    if "y_embedder.y_proj.fc1.weight" in sd:
        dims["caption_channels"] = int(sd["y_embedder.y_proj.fc1.weight"].shape[1])
    return dims


def suggest_config(sd: Mapping[str, torch.Tensor]) -> str:
    """A sentence naming the built-in config whose sizes match ``sd``, or the sizes themselves."""
    dims = infer_dims(sd)
    for name, make in CONFIGS.items():
        c = make()
        if all(getattr(c, k) == v for k, v in dims.items()):
            return f"this looks like the {name} config, pass --config {name}"
    return "its sizes are " + ", ".join(f"{k}={v}" for k, v in dims.items()) + " (no built-in config matches)"


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], kind: str) -> None:
    """Raise :class:`CheckpointError` on missing / unexpected keys or shape mismatches."""
    own = model.state_dict()
    optional = set(OPTIONAL_KEYS.get(kind, ()))
    missing = sorted(k for k in own if k not in sd and k not in optional)
    unexpected = sorted(k for k in sd if k not in own)
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing key(s) for a {kind} checkpoint, e.g. {missing[:_SHOW]}"
            + (" -- is this the right file or kind (official .safetensors, training .pt, diffusers folder)?")
        )
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:_SHOW]}")
    shapes = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if shapes:
        k, got, want = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatch(es), first {k}: checkpoint {got} vs model {want}; " + suggest_config(sd)
        )
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, kind: str | None = None) -> str:
    """Load ``path`` into ``model`` after checking it; returns the checkpoint kind."""
    sd, kind = read_state_dict(path, kind)
    check_state_dict(model, sd, kind)
    model.load_state_dict(sd, strict=False)
    return kind


def load_generator(path: str | os.PathLike, cfg: GeneratorConfig, kind: str | None = None, dtype=torch.float32):
    """Build a :class:`SanaWMGenerator` for ``cfg`` and load ``path`` into it (eval mode)."""
    from .transformer import SanaWMGenerator

    model = SanaWMGenerator(cfg)
    load_checkpoint(model, path, kind)
    return model.to(dtype).eval()
