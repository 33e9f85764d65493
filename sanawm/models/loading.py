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
mismatches, the config that would fit. Unreadable files (truncated / corrupt) raise it too, and so does a
``.pt`` whose pickle carries code: it is read with ``torch.load(weights_only=True)`` only, never executed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import zipfile
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


def _safetensors_size_hint(p: Path) -> str:
    """``" (file has N bytes, its header describes M)"`` when that can be read, else ``""``."""
    try:
        size = p.stat().st_size
        if size < 8:
            return f" (file has {size} bytes, less than the 8-byte header length)"
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 + n:
                return f" (file has {size} bytes, its header alone needs {8 + n})"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if size != 8 + n + end:
            return f" (file has {size} bytes, its header describes {8 + n + end})"
    except Exception:  # noqa: BLE001 - only a hint
        pass
    return ""


def _load_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"could not read safetensors file {str(p)!r}: the file is truncated or corrupt"
            f"{_safetensors_size_hint(p)}; re-download or re-export it ({e})"
        ) from None


# pickled globals a plain tensor checkpoint may reference (torch's weights_only unpickler allows these)
_DATA_GLOBALS = ("collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset",
                 "builtins.bytearray", "builtins.slice", "builtins.complex")
_STRING_OPS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING"}


def _pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every global (GLOBAL / INST / STACK_GLOBAL) referenced by the pickles in ``data``,
    read with :mod:`pickletools` (nothing is unpickled). Best effort: stops at the first unreadable opcode."""
    names: list[str] = []
    memo: dict = {}
    recent: list = []  # last pushed values (strings, else None): enough for STACK_GLOBAL's two operands
    f = io.BytesIO(data)
    try:
        while f.tell() < len(data):
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                    recent.append(None)
                elif op.name == "STACK_GLOBAL":
                    if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                        names.append(f"{recent[-2]}.{recent[-1]}")
                    else:
                        names.append("<unknown global>")
                    recent.append(None)
                elif op.name in _STRING_OPS:
                    recent.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = recent[-1] if recent else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    recent.append(memo.get(arg))
                elif op.stack_after:
                    recent.append(None)
                recent = recent[-2:]
    except Exception:  # noqa: BLE001 - truncated / not a pickle: report what was found so far
        pass
    return names


def _pickle_code_refs(p: Path, limit: int = 1 << 28) -> list[str]:
    """Globals in the checkpoint's pickle(s) that are not part of a plain tensor checkpoint (i.e. code)."""
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        else:
            with open(p, "rb") as f:
                blobs = [f.read(limit)]
    except Exception:  # noqa: BLE001 - unreadable: nothing to report
        return []
    refs = []
    for b in blobs:
        for name in _pickle_globals(b):
            if name.startswith("torch.") or name in _DATA_GLOBALS or name in refs:
                continue
            refs.append(name)
    return refs


def _torch_error_detail(e: Exception) -> str:
    """The informative line(s) of a torch.load error, without its advice to turn ``weights_only`` off."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch 2.6")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(boiler)]
    return " ".join(lines)[:300] or type(e).__name__


def _load_training(p: Path, mmap: bool = False):
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - re-raised with the fix
        code = _pickle_code_refs(p)
        if code:
            raise CheckpointError(
                f"training checkpoint {str(p)!r} contains code and will not be loaded: its pickle references "
                f"{code[:_SHOW]}, which a tensor checkpoint never needs (sanawm reads .pt files with "
                "torch.load(weights_only=True) and does not run code from checkpoints). Get the weights from a "
                "trusted source, preferably as .safetensors"
            ) from None
        if isinstance(e, pickle.UnpicklingError):
            raise CheckpointError(
                f"training checkpoint {str(p)!r} holds something other than tensors and plain containers and "
                f"will not be loaded (torch.load(weights_only=True) refused it: {_torch_error_detail(e)})"
            ) from None
        raise CheckpointError(
            f"could not read training checkpoint {str(p)!r}: the file is truncated or corrupt "
            f"({p.stat().st_size} bytes; {type(e).__name__}: {_torch_error_detail(e)}); re-download it"
        ) from None


def training_tensors(path: str | os.PathLike, mmap: bool = False) -> Mapping[str, torch.Tensor]:
    """The tensor dict of an official / training ``.pt`` (unwrapped from a ``generator`` key), keys as stored.
    ``mmap``: the file is mapped, not read; a tensor's bytes load when it is used (the streamed export)."""
    p = Path(path)
    state = _load_training(p, mmap)
    if isinstance(state, Mapping) and "generator" in state:
        state = state["generator"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"training checkpoint {str(p)!r} holds no tensor state dict (expected a dict of tensors, "
            "or one under the 'generator' key)"
        )
    return state


def _diffusers_dir(p: Path) -> Path:
    if (p / "transformer" / "config.json").exists() and not (p / "config.json").exists():
        return p / "transformer"  # pipeline root
    return p


def _read_diffusers(p: Path) -> dict[str, torch.Tensor]:
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
            sd.update(_load_safetensors(p / f))
        return sd
    single = p / "diffusion_pytorch_model.safetensors"
    if not single.exists():
        raise CheckpointError(
            f"diffusers folder {str(p)!r} has neither diffusion_pytorch_model.safetensors nor its .index.json"
        )
    return _load_safetensors(single)


def read_state_dict(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint and return ``(state_dict with official keys, kind)``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    kind = kind or detect_kind(p)
    if kind not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; choose one of {KINDS}")
    if kind == "official":
        return _clean_official(_load_safetensors(p)), kind
    if kind == "training":
        return _clean_official(training_tensors(p)), kind
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
        cfg = getattr(model, "cfg", None)
        dims = infer_dims(sd)
        if cfg is not None and dims and all(getattr(cfg, a, None) == b for a, b in dims.items()):
            hint = "the checkpoint's overall sizes fit this config, so these tensors are corrupt or from another model"
        else:
            hint = suggest_config(sd)
        more = "".join(f", {k2}: {g2} vs {w2}" for k2, g2, w2 in shapes[1:_SHOW])
        problems.append(f"{len(shapes)} shape mismatch(es), first {k}: checkpoint {got} vs model {want}{more}; {hint}")
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
