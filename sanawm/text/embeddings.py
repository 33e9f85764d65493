"""The one prompt-embeddings type: what ``sanawm encode-prompt`` files hold and what the runtime feeds (numpy only).

``sanawm.text.store`` reads and writes it (any batch size B); ``sanawm.runtime.prompt`` checks it against a
bundle (``coerce_prompt``, ``load_prompt``: B = 1). Masks are float32, 1 = token, 0 = padding, as the engines'
``text_mask`` input takes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PromptEmbeddings:
    text: np.ndarray  # [B, L, Ct] float32: stage-1 prompt features (file key stage1.features)
    text_mask: np.ndarray  # [B, L] float32
    refiner_features: np.ndarray | None = None  # [B, T, D] float32, for the refiner stage (optional)
    refiner_mask: np.ndarray | None = None  # [B, T] float32
    negative_text: np.ndarray | None = None  # [B, L, Ct] CFG negative prompt, when the file has one
    negative_mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the prompt file's meta (prompt, encoders, ...)

    @classmethod
    def zeros(cls, cfg) -> "PromptEmbeddings":
        """All-zero features with every token masked in, for ``cfg`` (a ``GeneratorConfig``). This is a constant,
        out-of-distribution condition, not "no prompt": the output does not ignore it."""
        L, Ct = cfg.caption_length, cfg.caption_channels
        return cls(np.zeros((1, L, Ct), np.float32), np.ones((1, L), np.float32))
