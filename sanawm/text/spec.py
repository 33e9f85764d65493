"""What a bundle expects of its prompt embeddings, and the torch-free constants of prompt encoding.

Torch-free (the runtime imports this): encoder identities, the chi preamble, the stage-1 encoder a generator
config expects, the canonical name of a local encoder folder, and the exact ``sanawm encode-prompt`` command that
re-encodes a prompt for a bundle.

Expected stage-1 encoder of a bundle (``expected_stage1_encoder``): the manifest's ``text.stage1_encoder`` when
the bundle writer recorded one, else derived from the generator config -- the tiny config (32 channels x 8 tokens)
takes the tiny random Gemma-2 (``TINY_STAGE1_ID``), the full config (2304 x 300) takes ``gemma-2-2b-it`` (matched on
the name part of ``"<name>@<fingerprint>"``), anything else is not checked (None).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Mapping

# Identities of the tiny random encoders (sanawm.text.tiny builds them; seeded, so the same in every process).
TINY_STAGE1_ID = "tiny-gemma2-random@seed0"
TINY_REFINER_ID = "tiny-gemma3-random@seed0"
TINY_HIDDEN = 32  # hidden size of the tiny stage-1 encoder = GeneratorConfig.tiny().caption_channels
TINY_CAPTION_LENGTH = 8  # = GeneratorConfig.tiny().caption_length = encode-prompt --tiny's default

# The release's stage-1 text encoder: google/gemma-2-2b-it (hidden 2304), 300 kept tokens.
GEMMA2_2B_IT = "gemma-2-2b-it"
FULL_CAPTION_CHANNELS = 2304
DEFAULT_CAPTION_LENGTH = 300

# The release preamble (Sana ``chi_prompt``); lines are joined with "\n" and the user prompt follows directly.
DEFAULT_CHI_PROMPT: tuple[str, ...] = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for '
    "image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
)


def text_section(manifest: Mapping[str, Any] | None) -> dict:
    """The manifest's ``text`` section ({} when the bundle has none or it is not a mapping)."""
    t = (manifest or {}).get("text") if isinstance(manifest, Mapping) else None
    return dict(t) if isinstance(t, Mapping) else {}


def is_tiny_text(cfg) -> bool:
    return (cfg.caption_channels, cfg.caption_length) == (TINY_HIDDEN, TINY_CAPTION_LENGTH)


def expected_stage1_encoder(cfg, manifest: Mapping[str, Any] | None = None) -> str | None:
    """The stage-1 encoder identity a bundle takes (see the module docstring); None = do not check."""
    given = text_section(manifest).get("stage1_encoder")
    if isinstance(given, str) and given:
        return given
    if is_tiny_text(cfg):
        return TINY_STAGE1_ID
    if (cfg.caption_channels, cfg.caption_length) == (FULL_CAPTION_CHANNELS, DEFAULT_CAPTION_LENGTH):
        return GEMMA2_2B_IT
    return None


def expected_refiner_channels(manifest: Mapping[str, Any] | None) -> int | None:
    v = text_section(manifest).get("refiner_channels")
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


_HF_CACHE_DIR = re.compile(r"^models--[^-].*?--(.+)$")


def encoder_name(folder: str | os.PathLike, model_dir: str | os.PathLike | None = None) -> str:
    """The name part of a local encoder folder's identity.

    * a Hugging Face cache snapshot (``.../models--google--gemma-2-2b-it/snapshots/<hash>``): the repo name;
    * a pipeline folder whose model sits in a subfolder (``text_encoder/``): the model config's ``_name_or_path``
      (last path component) when it has one;
    * otherwise the folder's own name.
    """
    root = Path(folder).resolve()
    for part in reversed(root.parts):
        m = _HF_CACHE_DIR.match(part)
        if m:
            return m.group(1)
    if model_dir is not None and Path(model_dir).resolve() != root:
        try:
            name = json.loads((Path(model_dir) / "config.json").read_text()).get("_name_or_path") or ""
        except (OSError, ValueError, AttributeError):
            name = ""
        name = str(name).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        if name:
            return name
    return root.name


def encode_command(cfg, manifest: Mapping[str, Any] | None = None, out: str | os.PathLike = "prompt.safetensors",
                   prompt: str = "...") -> str:
    """The exact ``sanawm encode-prompt`` command line that writes a prompt file this bundle accepts."""
    expected = expected_stage1_encoder(cfg, manifest)
    tiny = expected == TINY_STAGE1_ID
    cmd = ["sanawm", "encode-prompt", "--prompt", prompt]
    if tiny:
        cmd.append("--tiny")
        default_len = TINY_CAPTION_LENGTH
    else:
        cmd += ["--stage1-encoder", f"<{expected.split('@', 1)[0] if expected else 'Gemma-2 text-encoder'} folder>"]
        default_len = DEFAULT_CAPTION_LENGTH
    if cfg.caption_length != default_len:
        cmd += ["--caption-length", str(cfg.caption_length)]
    if isinstance(manifest, Mapping) and manifest.get("refiner"):
        cmd += ["--refiner-encoder", "tiny" if tiny else "<refiner folder>"]
    cmd += ["--out", str(out)]
    return " ".join(c if c.startswith("<") else shlex.quote(c) for c in cmd)


def default_cache_dir() -> Path:
    """Where encoded prompts are cached: ``$SANAWM_CACHE/prompts``, else ``~/.cache/sanawm/prompts``."""
    root = os.environ.get("SANAWM_CACHE")
    return Path(root) / "prompts" if root else Path.home() / ".cache" / "sanawm" / "prompts"
