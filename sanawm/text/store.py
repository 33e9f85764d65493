"""Prompt-embedding files: written once by ``sanawm encode-prompt``, read by the torch-free runtime.

Format: one ``.safetensors`` file (no pickle anywhere), numpy only -- this module must never import torch.

Tensors (float32; masks are float32 1 = token, 0 = padding, as the engine input ``text_mask`` takes them):

* ``stage1.features`` (B, L, C), ``stage1.mask`` (B, L)                -- prompt, chi preamble applied
* ``stage1_negative.features`` / ``stage1_negative.mask`` (optional)   -- CFG negative prompt, no preamble
* ``refiner.features`` (B, T, D), ``refiner.mask`` (B, T) (optional)   -- LTX-2 refiner text (after connectors)

Metadata (safetensors string header): ``sanawm.prompt.format`` = ``FORMAT_VERSION`` and ``sanawm.prompt.meta`` = a
JSON object with at least ``caption_length``, ``caption_channels`` and ``stage1_encoder`` (plus whatever the writer
adds: prompt, negative_prompt, refiner_encoder, versions, ...).

Encoder identities are strings ``"<name>@<fingerprint>"`` (see ``sanawm.text.cache.encoder_identity``); an
expected identity without ``@`` matches on the name alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .embeddings import PromptEmbeddings

FORMAT_KEY = "sanawm.prompt.format"
META_KEY = "sanawm.prompt.meta"
FORMAT_VERSION = "1"

REQUIRED_META = ("caption_length", "caption_channels", "stage1_encoder")

_REENCODE_HINT = (
    "Re-encode the prompt for this bundle: sanawm encode-prompt --prompt \"...\" "
    "--stage1-encoder <the bundle's Gemma-2 text-encoder folder> [--refiner-encoder <refiner folder>] --out {path}"
)


class PromptFileError(ValueError):
    """A prompt-embedding file is missing, malformed, or does not match what the bundle expects."""


def _to_np(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; converted without importing torch here
        x = x.detach().cpu().float().numpy() if dtype == np.float32 else x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


def _pair(name: str, pair) -> dict[str, np.ndarray]:
    if pair is None:
        return {}
    try:
        feats, mask = pair
    except (TypeError, ValueError):
        raise PromptFileError(f"{name} must be a (features, mask) pair, got {type(pair).__name__}") from None
    f = _to_np(feats, np.float32)
    m = _to_np(mask, np.float32)
    if f.ndim != 3:
        raise PromptFileError(f"{name} features must be (batch, tokens, channels), got shape {f.shape}")
    if m.shape != f.shape[:2]:
        raise PromptFileError(f"{name} mask shape {m.shape} does not match features {f.shape} (expected {f.shape[:2]})")
    if not np.all(np.isfinite(f)):
        raise PromptFileError(f"{name} features contain NaN/inf; the text encoder output is broken, do not save it")
    if not np.all((m == 0) | (m == 1)):
        raise PromptFileError(f"{name} mask must hold only 0/1 values")
    return {f"{name}.features": f, f"{name}.mask": m}


def save_prompt_embeddings(
    path: str | os.PathLike,
    stage1,
    refiner=None,
    meta: dict[str, Any] | None = None,
    stage1_negative=None,
) -> Path:
    """Write a prompt file atomically. ``stage1`` / ``stage1_negative`` / ``refiner``: ``(features, mask)`` pairs."""
    meta = dict(meta or {})
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise PromptFileError(f"save_prompt_embeddings: meta is missing {missing}; the runtime checks these on load")
    tensors = _pair("stage1", stage1)
    tensors.update(_pair("stage1_negative", stage1_negative))
    tensors.update(_pair("refiner", refiner))
    _, length, channels = tensors["stage1.features"].shape
    if (length, channels) != (int(meta["caption_length"]), int(meta["caption_channels"])):
        raise PromptFileError(
            f"stage1 features are {length} tokens x {channels} channels but meta says caption_length="
            f"{meta['caption_length']}, caption_channels={meta['caption_channels']}"
        )
    if "stage1_negative.features" in tensors and tensors["stage1_negative.features"].shape[1:] != (length, channels):
        raise PromptFileError(
            f"stage1_negative features {tensors['stage1_negative.features'].shape} do not match stage1 ({length}, {channels})"
        )
    from safetensors.numpy import save_file

    header = {FORMAT_KEY: FORMAT_VERSION, META_KEY: json.dumps(meta, ensure_ascii=False, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def encoder_matches(stored: str | None, expected: str) -> bool:
    if stored is None:
        return False
    if "@" in expected:
        return stored == expected
    return stored.split("@", 1)[0] == expected


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON meta of a prompt file (raises ``PromptFileError`` if it is not one)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist. " + _REENCODE_HINT.format(path=path))
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise PromptFileError(f"{path} is not a readable safetensors file ({e}). " + _REENCODE_HINT.format(path=path)) from e
    if header.get(FORMAT_KEY) != FORMAT_VERSION or META_KEY not in header:
        raise PromptFileError(
            f"{path} is not a sanawm prompt file of format {FORMAT_VERSION} (header {FORMAT_KEY}="
            f"{header.get(FORMAT_KEY)!r}). " + _REENCODE_HINT.format(path=path)
        )
    return json.loads(header[META_KEY])


def load_prompt_embeddings(
    path: str | os.PathLike,
    expect_caption_length: int,
    expect_caption_channels: int,
    expect_encoder: str | None = None,
    expect_refiner_channels: int | None = None,
    require_refiner: bool = False,
    reencode_command: str | None = None,
) -> PromptEmbeddings:
    """Load and check a prompt file against what a bundle expects; raises ``PromptFileError`` naming the fix.

    ``reencode_command``: the exact ``sanawm encode-prompt ...`` line for this bundle (see
    ``sanawm.text.spec.encode_command``), quoted in every error instead of the generic hint."""
    from safetensors.numpy import load_file

    path = Path(path)
    hint = _REENCODE_HINT.format(path=path) if reencode_command is None else (
        f"Re-encode the prompt for this bundle: {reencode_command}")
    try:
        meta = read_meta(path)
    except PromptFileError as e:
        if reencode_command is None:
            raise
        raise PromptFileError(str(e).replace(_REENCODE_HINT.format(path=path), hint)) from None
    t = load_file(str(path))
    if "stage1.features" not in t or "stage1.mask" not in t:
        raise PromptFileError(f"{path} has no stage-1 prompt features (tensors: {sorted(t)}). {hint}")

    stored_enc = meta.get("stage1_encoder")
    if expect_encoder is not None and not encoder_matches(stored_enc, expect_encoder):
        raise PromptFileError(
            f"{path} was encoded with stage-1 text encoder {stored_enc!r} but this bundle expects "
            f"{expect_encoder!r}; features from another encoder are meaningless to the model. {hint}"
        )

    for name in ("stage1", "stage1_negative"):
        if f"{name}.features" not in t:
            continue
        f, m = t[f"{name}.features"], t[f"{name}.mask"]
        if f.ndim != 3 or f.shape[1:] != (expect_caption_length, expect_caption_channels):
            raise PromptFileError(
                f"{path}: {name} features have shape {tuple(f.shape)} (caption_length x caption_channels = "
                f"{tuple(f.shape[1:])}, encoder {stored_enc!r}) but this bundle expects (batch, "
                f"{expect_caption_length}, {expect_caption_channels}). {hint}"
                + ("" if reencode_command is not None else f" (with --caption-length {expect_caption_length})")
            )
        if m.shape != f.shape[:2]:
            raise PromptFileError(f"{path}: {name} mask shape {m.shape} does not match features {f.shape}. {hint}")

    rf, rm = t.get("refiner.features"), t.get("refiner.mask")
    if require_refiner and rf is None:
        raise PromptFileError(
            f"{path} has no refiner text features but the refiner stage is enabled; re-encode with "
            f"--refiner-encoder <refiner folder>. {hint}"
        )
    if rf is not None:
        if rm is None or rm.shape != rf.shape[:2]:
            raise PromptFileError(f"{path}: refiner mask missing or mis-shaped. {hint}")
        if expect_refiner_channels is not None and rf.shape[-1] != expect_refiner_channels:
            raise PromptFileError(
                f"{path}: refiner features have {rf.shape[-1]} channels (encoder {meta.get('refiner_encoder')!r}) "
                f"but this bundle's refiner expects {expect_refiner_channels}. {hint}"
            )

    return PromptEmbeddings(
        text=t["stage1.features"],
        text_mask=t["stage1.mask"],
        negative_text=t.get("stage1_negative.features"),
        negative_mask=t.get("stage1_negative.mask"),
        refiner_features=rf,
        refiner_mask=rm,
        meta=meta,
    )
