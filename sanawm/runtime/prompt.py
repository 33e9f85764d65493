"""Stage-1 prompt embeddings for the torch-free runtime: checked against the bundle, or zeros.

Zeros (``PromptEmbeddings.zeros``) are not "no prompt": the model was trained on encoder features, so all-zero
features are a constant, out-of-distribution condition that steers the output its own way (the output does not
ignore it). The CLI uses them only when asked (``--no-prompt``).

One reader: prompt files written by ``sanawm encode-prompt`` (``.safetensors`` with the ``sanawm.prompt`` header)
are read and checked by ``sanawm.text.store.load_prompt_embeddings`` against what the bundle expects -- caption
length and channels from its generator config, the stage-1 encoder identity from the manifest's
``text.stage1_encoder`` or, when the bundle records none, derived from the config
(``sanawm.text.spec.expected_stage1_encoder``). A mismatch raises ``ValueError`` (``PromptFileError``) naming what
the bundle expects and the exact ``sanawm encode-prompt`` command that re-encodes the prompt.

Plain tensor files (no ``sanawm.prompt`` header; for apps that compute embeddings themselves) are still accepted
and shape-checked, but carry no encoder identity: ``.npz`` (``allow_pickle=False``) or ``.safetensors`` holding
``text`` [1, L, Ct] (or [L, Ct] / [1, 1, L, Ct]) and optionally ``text_mask`` [1, L] (1 = token, 0 = padding).
Accepted key spellings: stage1.features | text | prompt_embeds | embeddings and
stage1.mask | text_mask | mask | prompt_attention_mask; optional ``refiner.features`` / ``refiner.mask``.

The refiner's text (``refiner_features`` / ``refiner_mask``), when the file has it, rides along on
``PromptEmbeddings`` for the refiner stage; it is never required here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..config import GeneratorConfig
from ..text.spec import encode_command, expected_refiner_channels, expected_stage1_encoder
from ..text.embeddings import PromptEmbeddings
from ..text.store import FORMAT_KEY, META_KEY, load_prompt_embeddings

# "stage1.*" is the layout `sanawm encode-prompt` writes (sanawm.text.store)
TEXT_KEYS = ("stage1.features", "text", "prompt_embeds", "embeddings")
MASK_KEYS = ("stage1.mask", "text_mask", "mask", "prompt_attention_mask")
ENCODE_HINT = "encode a prompt with `sanawm encode-prompt --prompt \"...\" --stage1-encoder DIR --out prompt.safetensors`"

_FROM_CONFIG = object()  # load_prompt(expect_encoder=...) default: the bundle's / config's expectation


def coerce_prompt(value, cfg: GeneratorConfig) -> PromptEmbeddings:
    """From a ``PromptEmbeddings``, a (text, mask) pair, a text array, a dict or a file path; checks shapes."""
    extra: dict[str, Any] = {}
    if isinstance(value, PromptEmbeddings):
        text, mask = value.text, value.text_mask
        extra = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name not in ("text", "text_mask")}
    elif isinstance(value, (str, Path)):
        return load_prompt(value, cfg)
    elif isinstance(value, Mapping):
        text, mask = _pick(value, TEXT_KEYS, "text"), _pick(value, MASK_KEYS, None)
        extra = dict(refiner_features=value.get("refiner.features"), refiner_mask=value.get("refiner.mask"),
                     negative_text=value.get("stage1_negative.features"),
                     negative_mask=value.get("stage1_negative.mask"))
    elif isinstance(value, tuple) and len(value) == 2:
        text, mask = value
    else:
        text, mask = value, None
    text, mask = _check_text(text, mask, cfg, "prompt embeddings")
    if extra.get("negative_text") is not None:
        extra["negative_text"], extra["negative_mask"] = _check_text(
            extra["negative_text"], extra.get("negative_mask"), cfg, "negative prompt embeddings")
    if extra.get("refiner_features") is not None:
        rf = np.asarray(extra["refiner_features"], np.float32)
        rf = rf[None] if rf.ndim == 2 else rf
        rm = extra.get("refiner_mask")
        rm = np.ones(rf.shape[:2], np.float32) if rm is None else np.asarray(rm, np.float32).reshape(rf.shape[0], -1)
        if rf.ndim != 3 or rf.shape[0] != 1 or rm.shape != rf.shape[:2]:
            raise ValueError(f"refiner text features {rf.shape} / mask {rm.shape} must be [1, T, D] / [1, T]")
        extra["refiner_features"], extra["refiner_mask"] = np.ascontiguousarray(rf), np.ascontiguousarray(rm)
    else:
        extra["refiner_features"] = extra["refiner_mask"] = None
    return PromptEmbeddings(text, mask, **extra)


def _check_text(text, mask, cfg: GeneratorConfig, what: str) -> tuple[np.ndarray, np.ndarray]:
    text = np.asarray(text, dtype=np.float32)
    while text.ndim > 3 and text.shape[0] == 1:  # [1, 1, L, Ct] (the release's layout) -> [1, L, Ct]
        text = text[0]
    if text.ndim == 2:
        text = text[None]
    L, Ct = cfg.caption_length, cfg.caption_channels
    if text.shape != (1, L, Ct):
        raise ValueError(
            f"{what} have shape {text.shape}; this bundle takes [1, {L}, {Ct}] "
            f"({L} tokens of the stage-1 text encoder's {Ct} features); re-encode the prompt for this model: "
            f"{encode_command(cfg)}"
        )
    mask = np.ones((1, L), np.float32) if mask is None else np.asarray(mask, dtype=np.float32).reshape(1, -1)
    if mask.shape != (1, L):
        raise ValueError(f"{what}: the mask has {mask.shape[1]} tokens; the embeddings have {L}")
    return np.ascontiguousarray(text), np.ascontiguousarray(mask)


def _pick(d, keys, what):
    for k in keys:
        if k in d:
            return d[k]
    if what is None:
        return None
    raise ValueError(f"prompt file has no {what} tensor: expected one of {list(keys)}, found {sorted(d)}")


def _has_prompt_header(p: Path) -> bool:
    """True for a ``sanawm encode-prompt`` file, and for unreadable ones (the store reader explains those)."""
    from safetensors import safe_open  # numpy reader, no torch

    try:
        with safe_open(str(p), framework="numpy") as f:
            header = f.metadata() or {}
    except Exception:  # noqa: BLE001 - corrupt header: let load_prompt_embeddings report it
        return True
    return FORMAT_KEY in header or META_KEY in header


def load_prompt(
    path,
    cfg: GeneratorConfig,
    manifest: Mapping[str, Any] | None = None,
    *,
    expect_encoder=_FROM_CONFIG,
    require_refiner: bool = False,
) -> PromptEmbeddings:
    """Read a prompt file and check it against the bundle (``cfg`` = its generator config, ``manifest`` = its
    manifest, for ``text.stage1_encoder`` / ``text.refiner_channels``).

    ``expect_encoder``: override the expected stage-1 encoder identity (None: do not check it).
    Raises ``ValueError`` (``sanawm.text.store.PromptFileError`` for prompt files) saying what the bundle expects
    and the ``sanawm encode-prompt`` command that re-encodes the prompt.
    """
    p = Path(path)
    cmd = encode_command(cfg, manifest, out=p if p.suffix == ".safetensors" else p.with_suffix(".safetensors"))
    if not p.is_file():
        raise ValueError(f"prompt embeddings file {p} does not exist; encode the prompt with: {cmd}")
    if p.suffix == ".safetensors" and _has_prompt_header(p):
        enc = expected_stage1_encoder(cfg, manifest) if expect_encoder is _FROM_CONFIG else expect_encoder
        e = load_prompt_embeddings(
            p, cfg.caption_length, cfg.caption_channels, expect_encoder=enc,
            expect_refiner_channels=expected_refiner_channels(manifest), require_refiner=require_refiner,
            reencode_command=cmd,
        )
        if e.text.shape[0] != 1:
            raise ValueError(f"{p} holds {e.text.shape[0]} prompts; the runtime takes one per clip")
        return coerce_prompt(e, cfg)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    elif p.suffix == ".safetensors":  # plain tensors without the sanawm.prompt header (no encoder identity)
        from safetensors.numpy import load_file  # numpy-only reader, no torch

        d = load_file(str(p))
    else:
        raise ValueError(f"prompt embeddings must be .safetensors or .npz; got {p.name}")
    out = coerce_prompt(d, cfg)
    if require_refiner and out.refiner_features is None:
        raise ValueError(f"{p} has no refiner.features but the refiner stage needs them; encode the prompt with: {cmd}")
    return out
