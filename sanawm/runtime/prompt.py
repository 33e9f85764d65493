"""Stage-1 prompt embeddings: read from .npz / .safetensors (no pickle, no torch) or zeros.

A prompt file holds ``text`` [1, L, Ct] (or [L, Ct] / [1, 1, L, Ct]) float and optionally ``text_mask``
[1, L] (1 = token, 0 = padding). Accepted key spellings: stage1.features | text | prompt_embeds | embeddings and
stage1.mask | text_mask | mask | prompt_attention_mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import GeneratorConfig

# "stage1.*" is the layout `sanawm encode-prompt` writes (sanawm.text.store)
TEXT_KEYS = ("stage1.features", "text", "prompt_embeds", "embeddings")
MASK_KEYS = ("stage1.mask", "text_mask", "mask", "prompt_attention_mask")
ENCODE_HINT = "encode a prompt with `sanawm encode-prompt --prompt \"...\" --stage1-encoder DIR --out prompt.safetensors`"


@dataclass
class PromptEmbeddings:
    text: np.ndarray  # [1, L, Ct] float32
    text_mask: np.ndarray  # [1, L] float32

    @classmethod
    def zeros(cls, cfg: GeneratorConfig) -> "PromptEmbeddings":
        """An empty prompt (all-zero features, every token masked in): output ignores the text."""
        L, Ct = cfg.caption_length, cfg.caption_channels
        return cls(np.zeros((1, L, Ct), np.float32), np.ones((1, L), np.float32))

    @classmethod
    def coerce(cls, value, cfg: GeneratorConfig) -> "PromptEmbeddings":
        """From a PromptEmbeddings, a (text, mask) pair, a text array, a dict or a file path; checks shapes."""
        if isinstance(value, PromptEmbeddings):
            text, mask = value.text, value.text_mask
        elif isinstance(value, (str, Path)):
            return load_prompt(value, cfg)
        elif isinstance(value, dict):
            text, mask = _pick(value, TEXT_KEYS, "text"), _pick(value, MASK_KEYS, None)
        elif isinstance(value, tuple) and len(value) == 2:
            text, mask = value
        else:
            text, mask = value, None
        text = np.asarray(text, dtype=np.float32)
        while text.ndim > 3 and text.shape[0] == 1:  # [1, 1, L, Ct] (the release's layout) -> [1, L, Ct]
            text = text[0]
        if text.ndim == 2:
            text = text[None]
        L, Ct = cfg.caption_length, cfg.caption_channels
        if text.shape != (1, L, Ct):
            raise ValueError(
                f"prompt embeddings have shape {text.shape}; this bundle takes [1, {L}, {Ct}] "
                f"({L} tokens of the stage-1 text encoder's {Ct} features); re-encode the prompt for this model"
            )
        mask = np.ones((1, L), np.float32) if mask is None else np.asarray(mask, dtype=np.float32).reshape(1, -1)
        if mask.shape != (1, L):
            raise ValueError(f"prompt mask has {mask.shape[1]} tokens; the embeddings have {L}")
        return cls(np.ascontiguousarray(text), np.ascontiguousarray(mask))


def _pick(d: dict, keys, what):
    for k in keys:
        if k in d:
            return d[k]
    if what is None:
        return None
    raise ValueError(f"prompt file has no {what} tensor: expected one of {list(keys)}, found {sorted(d)}")


def load_prompt(path, cfg: GeneratorConfig) -> PromptEmbeddings:
    """Read prompt embeddings from ``.npz`` (allow_pickle=False) or ``.safetensors`` (numpy API)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompt embeddings file {p} does not exist; {ENCODE_HINT}")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    elif p.suffix == ".safetensors":
        from safetensors.numpy import load_file  # numpy-only reader, no torch

        d = load_file(str(p))
    else:
        raise ValueError(f"prompt embeddings must be .safetensors or .npz; got {p.name}")
    return PromptEmbeddings.coerce(d, cfg)
