"""Stage-1 prompt encoding: Gemma-2 last hidden state with the SANA chi-prompt preamble.

Token handling (sana-wm-reference.md section 3.2; oracle: diffusers 0.42.1 ``SanaWMPipeline.encode_prompt``):

* positive prompt: text = ``"\\n".join(chi_prompt) + prompt``; tokenised (``<bos>`` added) to
  ``len(tokenizer.encode(preamble)) + caption_length - 2`` tokens, truncated on the right and right-padded to
  exactly that length; the encoder sees the whole sequence; kept positions = index 0 (``<bos>``) plus the last
  ``caption_length - 1`` positions, for features and mask alike.
* negative prompt (``negative=True``): no preamble, tokenised and padded to ``caption_length``, all kept.

Features are the encoder's last hidden state (``output_hidden_states=True``, ``hidden_states[-1]``, i.e. after the
final norm, same as ``Gemma2Model.last_hidden_state``), returned as float32.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

# The release preamble (Sana ``chi_prompt``) lives in the torch-free sanawm.text.spec; re-exported here.
from .spec import DEFAULT_CHI_PROMPT  # noqa: F401


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than fit; the tail was dropped."""


@dataclass
class Stage1Tokens:
    input_ids: torch.Tensor  # (B, T) what the encoder sees (T = caption_length + L_chi - 2, or caption_length)
    attention_mask: torch.Tensor  # (B, T)
    keep: list[int]  # positions kept after encoding (len == caption_length)
    dropped: list[int]  # tokens dropped by truncation, per prompt

    @property
    def kept_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.keep]

    @property
    def kept_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.keep]


def preamble_text(chi_prompt: Sequence[str] | None) -> str:
    return "\n".join(chi_prompt) if chi_prompt else ""


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    out = list(prompts)
    if not out:
        raise ValueError("encode_stage1: got an empty list of prompts; pass at least one string (it may be '').")
    for p in out:
        if not isinstance(p, str):
            raise TypeError(f"encode_stage1: prompts must be strings, got {type(p).__name__}")
    return out


def tokenize_stage1(
    prompts: str | Sequence[str],
    tokenizer,
    caption_length: int = 300,
    chi_prompt: Sequence[str] | None = DEFAULT_CHI_PROMPT,
    negative: bool = False,
) -> Stage1Tokens:
    """Tokenise exactly as the reference does and say which positions are kept; warns on truncation."""
    if caption_length < 2:
        raise ValueError(f"caption_length must be >= 2 (got {caption_length})")
    texts = _as_list(prompts)
    chi = "" if negative else preamble_text(chi_prompt)
    if chi:
        texts = [chi + t for t in texts]
        length = len(tokenizer.encode(chi)) + caption_length - 2
        keep = [0] + list(range(length - caption_length + 1, length))
    else:
        length = caption_length
        keep = list(range(caption_length))

    full_lengths = [len(ids) for ids in tokenizer(texts, padding=False, truncation=False)["input_ids"]]
    dropped = [max(0, n - length) for n in full_lengths]
    for i, d in enumerate(dropped):
        if d:
            which = "negative prompt" if negative else "prompt"
            warnings.warn(
                f"{which} {i} is too long: {full_lengths[i]} tokens ({'preamble and ' if chi else ''}<bos> included) but the encoder "
                f"takes {length}; the last {d} token(s) of the prompt were dropped. Shorten the prompt to keep all "
                f"of it.",
                PromptTruncatedWarning,
                stacklevel=3,
            )

    tok = tokenizer(
        texts,
        max_length=length,
        padding="max_length",
        padding_side="right",  # SANA trained right-padded; Gemma's tokenizer defaults to left
        truncation=True,
        return_tensors="pt",
    )
    return Stage1Tokens(tok["input_ids"], tok["attention_mask"], keep, dropped)


def encode_stage1(
    prompts: str | Sequence[str],
    tokenizer,
    text_encoder,
    caption_length: int = 300,
    chi_prompt: Sequence[str] | None = DEFAULT_CHI_PROMPT,
    negative: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts for the stage-1 DiT -> ``(features (B, L, C) float32, mask (B, L) int64)``, L = caption_length.

    ``text_encoder`` is a Gemma-2 ``Gemma2Model`` or ``Gemma2ForCausalLM`` (anything returning ``hidden_states``).
    ``negative=True`` encodes without the preamble (the CFG negative prompt).
    """
    toks = tokenize_stage1(prompts, tokenizer, caption_length, chi_prompt, negative)
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        out = text_encoder(
            input_ids=toks.input_ids.to(device),
            attention_mask=toks.attention_mask.to(device),
            output_hidden_states=True,
            return_dict=True,
        )
    hidden = out.hidden_states[-1]
    features = hidden[:, toks.keep].float().cpu()
    mask = toks.kept_mask.cpu()
    return features, mask
