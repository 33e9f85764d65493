"""Config detection for checkpoints: which :class:`GeneratorConfig` a file or diffusers folder holds.

Two sources, cross-checked when both exist:

* a diffusers ``config.json`` (``SanaWMTransformer3DModel`` kwargs), mapped field by field; options sanawm does
  not implement (another patch size, FFN or positional embedding, learned sigma, ...) are refused by name;
* the weights themselves: hidden size / latent channels from ``x_embedder``, depth from the ``blocks.<i>`` keys,
  heads from ``beta_proj``, caption channels from ``y_proj.fc1``, caption length from ``y_embedding`` (absent in
  diffusers folders), the FFN ratio from ``inverted_conv``, kernel sizes from ``t_conv`` / ``conv_k``, the
  softmax period from which blocks lack the GDN ``conv_k`` (softmax blocks have none), the Plücker channels from
  ``plucker_embedder`` and ``plucker_post_attn_blocks`` from which blocks carry ``plucker_proj``.

What the weights cannot say (latent H x W, RoPE / eps constants, chunking) comes from the named config in
:mod:`sanawm.config` with the same structure; when several named configs share the structure and differ only
there (``tiny`` and ``world``), the caller has to name one. A structure no named config has keeps ``full()``'s
values for those fields and gets no name.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Mapping

import torch

from ..config import CONFIGS, GeneratorConfig, full
from .loading import CheckpointError

# GeneratorConfig fields the weights (or a diffusers config.json) fix; the rest are run-time / geometry choices
STRUCTURAL = ("num_layers", "hidden_size", "num_heads", "head_dim", "in_channels", "caption_channels",
              "softmax_every_n", "mlp_ratio", "t_kernel_size", "conv_kernel_size", "plucker_channels",
              "plucker_post_attn_blocks")
# caption_length is structural only where the checkpoint has the null-caption buffer (not in diffusers folders)
CAPTION_LENGTH_KEY = "y_embedder.y_embedding"
# diffusers SanaWMTransformer3DModel kwarg -> GeneratorConfig field
DIFFUSERS_FIELDS = {"in_channels": "in_channels", "num_layers": "num_layers", "hidden_size": "hidden_size",
                    "num_attention_heads": "num_heads", "linear_head_dim": "head_dim",
                    "softmax_every_n": "softmax_every_n", "caption_channels": "caption_channels",
                    "mlp_ratio": "mlp_ratio", "t_kernel_size": "t_kernel_size", "conv_kernel_size": "conv_kernel_size",
                    "chunk_plucker_channels": "plucker_channels",
                    "chunk_plucker_post_attn_blocks": "plucker_post_attn_blocks"}
# diffusers options sanawm implements only at these values
DIFFUSERS_FIXED = {"patch_size": [1, 1, 1], "ffn_type": "GLUMBConvTemp", "pos_embed_type": "wan_rope",
                   "k_conv_only": True, "qk_norm": True, "cross_norm": True, "y_norm": True, "cam_attn_compress": 1,
                   "use_chunk_plucker_post_attn": True, "learn_sigma": False, "pred_sigma": False}
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def dims_from_weights(sd: Mapping[str, torch.Tensor]) -> dict:
    """The structural :class:`GeneratorConfig` fields readable from an (official-key) state dict."""
    need = ("x_embedder.proj.weight", "blocks.0.attn.beta_proj.weight", "y_embedder.y_proj.fc1.weight",
            "blocks.0.mlp.inverted_conv.conv.weight", "blocks.0.mlp.t_conv.weight", "plucker_embedder.proj.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"cannot read a SANA-WM generator config from these weights: key(s) {missing} are "
                              "missing; is this a stage-1 generator checkpoint (not a refiner, VAE or text encoder)?")
    blocks: dict[int, set] = {}
    for k in sd:
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(k[m.end():])
    n = max(blocks) + 1
    if sorted(blocks) != list(range(n)):
        raise CheckpointError(f"checkpoint block indices {sorted(blocks)} are not 0..{n - 1}: blocks are missing")
    hidden, cin = (int(s) for s in sd["x_embedder.proj.weight"].shape[:2])
    heads = int(sd["blocks.0.attn.beta_proj.weight"].shape[0])
    ffn = int(sd["blocks.0.mlp.inverted_conv.conv.weight"].shape[0]) // 2  # GLU: value and gate halves
    softmax = [i for i in range(n) if "attn.conv_k.weight" not in blocks[i]]
    gdn = [i for i in range(n) if i not in softmax]
    # the period is the first softmax index + 1 (block i is softmax when (i + 1) % n == 0); no softmax block at
    # all means a period longer than the depth
    every = softmax[0] + 1 if softmax else n + 1
    if softmax != [i for i in range(n) if (i + 1) % every == 0]:
        raise CheckpointError(f"softmax blocks {softmax} are not every {every}th block; sanawm implements the "
                              "periodic layout only")
    plucker = [i for i in range(n) if "plucker_proj.weight" in blocks[i]]
    if plucker != list(range(len(plucker))):
        raise CheckpointError(f"plucker_proj in blocks {plucker}: sanawm expects it in the first blocks only")
    dims = {
        "num_layers": n, "hidden_size": hidden, "in_channels": cin, "num_heads": heads,
        "head_dim": hidden // heads if heads else 0,
        "caption_channels": int(sd["y_embedder.y_proj.fc1.weight"].shape[1]),
        "softmax_every_n": every, "mlp_ratio": ffn / hidden,
        "t_kernel_size": int(sd["blocks.0.mlp.t_conv.weight"].shape[2]),
        "plucker_channels": int(sd["plucker_embedder.proj.weight"].shape[1]),
        "plucker_post_attn_blocks": len(plucker),
    }
    if gdn:
        dims["conv_kernel_size"] = int(sd[f"blocks.{gdn[0]}.attn.conv_k.weight"].shape[-1])
    if CAPTION_LENGTH_KEY in sd:
        dims["caption_length"] = int(sd[CAPTION_LENGTH_KEY].shape[0])
    return dims


def dims_from_diffusers_config(conf: Mapping, where: str = "config.json") -> dict:
    """The structural fields named by a diffusers ``SanaWMTransformer3DModel`` config (unsupported options refused)."""
    cls = conf.get("_class_name")
    if cls is not None and cls != "SanaWMTransformer3DModel":
        raise CheckpointError(f"{where} describes a {cls}, not a SanaWMTransformer3DModel (the stage-1 generator); "
                              "point --checkpoint at the generator's transformer/ folder")
    bad = [f"{k}={conf[k]!r} (sanawm implements {v!r})" for k, v in DIFFUSERS_FIXED.items()
           if k in conf and (list(conf[k]) if isinstance(conf[k], (list, tuple)) else conf[k]) != v]
    if bad:
        raise CheckpointError(f"{where}: unsupported SanaWMTransformer3DModel option(s): {', '.join(bad)}")
    return {ours: conf[theirs] for theirs, ours in DIFFUSERS_FIELDS.items() if theirs in conf}


def _same(a, b) -> bool:
    return abs(a - b) < 1e-9 if isinstance(a, float) or isinstance(b, float) else a == b


def _diff(dims: Mapping, cfg: GeneratorConfig) -> dict:
    return {k: (v, getattr(cfg, k)) for k, v in dims.items() if not _same(v, getattr(cfg, k))}


def named_matches(dims: Mapping) -> list[str]:
    """Names of the built-in configs whose structural fields equal ``dims``."""
    return [name for name, make in CONFIGS.items() if not _diff(dims, make())]


def _fmt(d: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def resolve_config(dims: Mapping, config: str | GeneratorConfig | None = None,
                   where: str = "the checkpoint") -> tuple[GeneratorConfig, str | None]:
    """``(config, its built-in name or None)`` for detected ``dims``.

    ``config`` (a name or a GeneratorConfig) is checked against ``dims``: a mismatch raises naming both. Without
    it, the one built-in config with this structure is returned, or, when none has it, ``full()`` with the
    detected fields (name None). Several built-in matches (they differ only in latent size) need ``config``.
    """
    if config is not None:
        name = config if isinstance(config, str) else None
        if isinstance(config, str):
            if config not in CONFIGS:
                raise CheckpointError(f"unknown config {config!r}; choose one of {sorted(CONFIGS)} or pass a GeneratorConfig")
            config = CONFIGS[config]()
        d = _diff(dims, config)
        if d:
            found = named_matches(dims)
            hint = f"the checkpoint fits config {found[0]!r}" if len(found) == 1 else (
                f"the checkpoint fits configs {found}" if found else "no built-in config fits it")
            raise CheckpointError(
                f"{where} does not match config {name or 'given'}: "
                + ", ".join(f"{k} is {a} in the checkpoint but {b} in the config" for k, (a, b) in d.items())
                + f"; {hint} -- drop --config to use the detected one")
        return config, name
    found = named_matches(dims)
    if len(found) == 1:
        return CONFIGS[found[0]](), found[0]
    if len(found) > 1:
        raise CheckpointError(
            f"{where} fits the built-in configs {found}, which differ only in latent size (not stored in the "
            f"weights); name one: --config {found[0]} (or from_pretrained(path, config={found[0]!r}))")
    cfg = dataclasses.replace(full(), **dims)
    try:
        return cfg.validate(), None
    except ValueError as e:
        raise CheckpointError(f"{where} has sizes {_fmt(dims)} that make no valid generator config: {e}") from None


def read_diffusers_config(folder: Path) -> dict | None:
    """The generator ``config.json`` of a diffusers folder (model folder or pipeline root), or None."""
    for p in (folder / "config.json", folder / "transformer" / "config.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{p} is not valid JSON ({e}); re-download it") from None
    return None


def detect_dims(sd: Mapping[str, torch.Tensor], conf: Mapping | None = None, where: str = "checkpoint") -> dict:
    """Structural fields from the weights, cross-checked against a diffusers ``config.json`` when there is one."""
    dims = dims_from_weights(sd)
    if conf is not None:
        declared = dims_from_diffusers_config(conf, f"{where}/config.json")
        clash = {k: (v, dims[k]) for k, v in declared.items() if k in dims and not _same(v, dims[k])}
        if clash:
            raise CheckpointError(
                f"{where}: config.json and the weights disagree: "
                + ", ".join(f"{k} is {a} in config.json but {b} in the weights" for k, (a, b) in clash.items())
                + "; the folder mixes two models, re-download it")
        dims = {**declared, **dims}
    return dims


def _header_shapes(files: list[Path]) -> dict[str, torch.Tensor]:
    """Meta tensors with the shapes in safetensors headers: detection without reading (GBs of) weights."""
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                out[k] = torch.empty(h.get_slice(k).get_shape(), device="meta")
    return out


def checkpoint_shapes(path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """``(official-key tensors, kind)``: meta tensors from the headers for safetensors, memory-mapped tensors for a .pt
    (their shapes are read, their bytes are not)."""
    from .loading import (_clean_official, _diffusers_dir, convert_diffusers_keys, detect_kind, read_state_dict,
                          training_tensors)

    p = Path(path)
    kind = kind or (detect_kind(p) if p.exists() else None)
    try:
        if kind == "official":
            return _clean_official(_header_shapes([p])), kind
        if kind == "diffusers":
            d = _diffusers_dir(p)
            files = sorted(d.glob("diffusion_pytorch_model*.safetensors"))
            if files and (d / "config.json").exists():
                return convert_diffusers_keys(_header_shapes(files)), kind
    except Exception:  # noqa: BLE001 - unreadable header: the full reader below says what is wrong
        pass
    if kind == "training":
        return _clean_official(training_tensors(p, mmap=True)), kind
    return read_state_dict(path, kind)


def detect_checkpoint_config(path, config: str | GeneratorConfig | None = None, kind: str | None = None,
                             shapes_only: bool = False):
    """``(config, built-in name or None, official-key state dict, kind)`` of the checkpoint at ``path``;
    ``shapes_only``: the state dict may hold meta tensors (shapes from the file headers, nothing loaded)."""
    from .loading import _diffusers_dir, read_state_dict

    sd, kind = checkpoint_shapes(path, kind) if shapes_only else read_state_dict(path, kind)
    conf = read_diffusers_config(_diffusers_dir(Path(path))) if kind == "diffusers" else None
    dims = detect_dims(sd, conf, where=str(path))
    cfg, name = resolve_config(dims, config, where=str(path))
    return cfg, name, sd, kind


def from_pretrained(path, config: str | GeneratorConfig | None = None, kind: str | None = None,
                    dtype: torch.dtype = torch.float32):
    """A :class:`SanaWMGenerator` with the checkpoint's config and weights (eval mode); ``model.config_name`` is
    the matching built-in config's name or None."""
    from .loading import check_state_dict
    from .transformer import SanaWMGenerator

    cfg, name, sd, kind = detect_checkpoint_config(path, config, kind)
    model = SanaWMGenerator(cfg)
    check_state_dict(model, sd, kind)
    model.load_state_dict(sd, strict=False)
    model.config_name = name
    return model.to(dtype).eval()
