"""Refiner (stage-2, LTX-2) prompt encoding: Gemma-3 hidden states -> packed -> ``LTX2TextConnectors``.

Oracle: diffusers 0.42.1 ``SanaWMLTX2Refiner._encode_prompt`` + ``_pack_text_embeds`` (sana-wm-reference.md
section 10). Steps:

1. tokenise ``prompt.strip()`` with ``<bos>``, left padding to exactly ``max_length`` (1024), truncation on;
2. run the Gemma-3 encoder with ``output_hidden_states=True`` and stack *all* hidden states (embeddings + every
   layer) on a new last axis -> ``(B, T, D, n_layers + 1)``;
3. pack: per prompt, over the valid (non-pad) positions and all layers, subtract the masked mean and divide by
   the masked (max - min) + 1e-6, times 8; flatten to ``(B, T, D * (n_layers + 1))`` (D-major, layer-minor);
   pad positions are zero; the result keeps the encoder's dtype and is then cast to the connectors' dtype;
4. ``connectors(packed, attention_mask)`` -> video text embedding ``(B, T, D)`` and its binary mask.

No chi preamble on this path.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from .stage1 import PromptTruncatedWarning

DEFAULT_REFINER_MAX_LENGTH = 1024


def pack_text_embeds(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    padding_side: str = "left",
    scale: float = 8.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Masked mean / range normalisation over (tokens, channels) per layer, then flatten channels x layers.

    ``hidden_states``: (B, T, D, K) stacked encoder states; ``attention_mask``: (B, T) 1 = token.
    ``padding_side`` must describe how the mask was produced: only the count of ones per row is used, and the valid
    block is assumed contiguous on the other side (as the reference does).
    """
    if hidden_states.ndim != 4:
        raise ValueError(f"pack_text_embeds: expected (B, T, D, K) stacked hidden states, got {tuple(hidden_states.shape)}")
    b, t, d, _ = hidden_states.shape
    dtype = hidden_states.dtype
    n_valid = attention_mask.sum(dim=-1)  # (B,)
    pos = torch.arange(t, device=hidden_states.device)[None, :]
    if padding_side == "left":
        valid = pos >= (t - n_valid)[:, None]
    elif padding_side == "right":
        valid = pos < n_valid[:, None]
    else:
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    valid4 = valid[:, :, None, None]

    count = (n_valid * d).view(b, 1, 1, 1)
    mean = hidden_states.masked_fill(~valid4, 0.0).sum(dim=(1, 2), keepdim=True) / (count + eps)
    lo = hidden_states.masked_fill(~valid4, float("inf")).amin(dim=(1, 2), keepdim=True)
    hi = hidden_states.masked_fill(~valid4, float("-inf")).amax(dim=(1, 2), keepdim=True)
    normed = (hidden_states - mean) / (hi - lo + eps) * scale
    flat = normed.flatten(2)
    flat = flat.masked_fill(~valid[:, :, None], 0.0)
    return flat.to(dtype)


def encode_refiner(
    prompts: str | Sequence[str],
    tokenizer,
    text_encoder,
    connectors,
    max_length: int = DEFAULT_REFINER_MAX_LENGTH,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts for the LTX-2 refiner -> ``(features (B, T, D) float32, mask (B, T) int64)``, T = max_length.

    ``text_encoder``: Gemma-3 (``Gemma3ForConditionalGeneration`` in the release; any model returning all
    ``hidden_states``). ``connectors``: diffusers ``LTX2TextConnectors``. ``dtype``: what the packed states are
    cast to before the connectors (the reference uses the refiner transformer's dtype); default: the connectors'.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise ValueError("encode_refiner: got an empty list of prompts; pass at least one string (it may be '').")
    texts = [t.strip() for t in texts]

    full = [len(ids) for ids in tokenizer(texts, padding=False, truncation=False)["input_ids"]]
    for i, n in enumerate(full):
        if n > max_length:
            warnings.warn(
                f"refiner prompt {i} is too long: {n} tokens (<bos> included) but the refiner text encoder takes "
                f"{max_length}; the last {n - max_length} token(s) were dropped. Shorten the prompt to keep all of it.",
                PromptTruncatedWarning,
                stacklevel=2,
            )

    tok = tokenizer(
        texts,
        padding="max_length",
        padding_side="left",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return _run_refiner(tok, text_encoder, connectors, dtype)


def _run_refiner(tok, text_encoder, connectors, dtype):
    device = next(text_encoder.parameters()).device
    ids = tok["input_ids"].to(device)
    mask = tok["attention_mask"].to(device)
    out = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    stacked = torch.stack(tuple(out.hidden_states), dim=-1)
    packed = pack_text_embeds(stacked, mask, padding_side="left")

    conn_param = next(connectors.parameters())
    packed = packed.to(device=conn_param.device, dtype=dtype or conn_param.dtype)
    video_emb, _audio, video_mask = connectors(packed, mask.to(conn_param.device))
    return video_emb.float().cpu(), video_mask.to(torch.int64).cpu()
