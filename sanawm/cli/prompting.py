"""The clip's prompt for ``generate`` / ``demo``: encoded from text in a subprocess, read from a file, or -- only
when asked for -- zeros.

Honest defaults: a zero prompt is NOT "no prompt". The model was trained on encoder features, so all-zero
features are a constant, out-of-distribution condition that steers the output in its own way; the output
does not ignore it. ``generate`` therefore refuses to run without a prompt unless ``--no-prompt`` says so,
and refuses to run a bundle's refiner without refiner text unless ``--no-refiner`` turns the refiner off or
``--zero-refiner-prompt`` asks for the zero condition explicitly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ..constants import REFINER_ENGINES
from .base import UserError, say, user_input
from .inputs import manifest_config

# The refiner stage's warning when it gets no text; silenced when the user asked for zeros (--zero-refiner-prompt).
REFINER_ZERO_WARNING = "the prompt embeddings have no refiner text"


def encode_prompt_text(prompt: str, out: Path, *, tiny: bool = False, stage1_encoder=None, refiner_encoder=None,
                       refiner_max_length=None, caption_length=None, cache_dir=None, device=None) -> dict:
    """Encode ``prompt`` into ``out`` by running `sanawm encode-prompt` in a SUBPROCESS (this process never imports
    torch; the encoder's memory goes with the subprocess). Returns its status: cache_hit, key, stage1_encoder, ..."""
    from ..text.spec import default_cache_dir

    if tiny == (stage1_encoder is not None):
        raise UserError("--prompt needs exactly one text encoder: --stage1-encoder DIR (the local gemma-2-2b-it "
                        "folder, or the SANA-WM pipeline folder) or --tiny-encoder (tiny random bundles)")
    args = ["--prompt", prompt, "--out", str(out), "--status-json",
            "--cache-dir", str(Path(cache_dir) if cache_dir else default_cache_dir())]
    args += ["--tiny", "--device", device or "cpu"] if tiny else ["--stage1-encoder", str(stage1_encoder)]
    if device and not tiny:
        args += ["--device", device]
    if caption_length is not None:
        args += ["--caption-length", str(int(caption_length))]
    if refiner_encoder is not None:
        args += ["--refiner-encoder", str(refiner_encoder)]
    if refiner_max_length is not None:
        args += ["--refiner-max-length", str(int(refiner_max_length))]
    cmd = [sys.executable, "-m", "sanawm.text.cli", *args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (encoder logs, errors) goes to the user
    status = None
    for line in reversed((r.stdout or "").splitlines()):
        try:
            status = json.loads(line)
            break
        except ValueError:
            continue
    if r.returncode != 0 or not isinstance(status, dict) or not Path(out).is_file():
        shown = " ".join(a if " " not in a else repr(a) for a in args)
        raise UserError(f"encoding the prompt failed (exit {r.returncode}; its message is above): "
                        f"sanawm encode-prompt {shown}")
    return status


def encode_for_run(opts, manifest: dict, tmp: Path, what: str) -> Path:
    """Run the prompt encoder (subprocess, cached) for ``opts.prompt``; prints one line: from cache or encoded."""
    from ..text.spec import default_cache_dir

    cfg = manifest_config(manifest)
    out = tmp / "prompt.safetensors"
    t0 = time.perf_counter()
    status = encode_prompt_text(
        opts.prompt, out, tiny=opts.tiny_encoder, stage1_encoder=opts.stage1_encoder,
        refiner_encoder=getattr(opts, "refiner_encoder", None),
        refiner_max_length=getattr(opts, "refiner_max_length", None),
        caption_length=None if cfg is None else cfg.caption_length, cache_dir=opts.cache_dir,
        device=getattr(opts, "encoder_device", None),
    )
    cache = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    short = opts.prompt if len(opts.prompt) <= 40 else opts.prompt[:37] + "..."
    if status.get("cache_hit"):
        say(f"{what}: prompt {short!r} from cache ({cache}, key {str(status.get('key'))[:12]})")
    else:
        say(f"{what}: prompt {short!r} encoded with {status.get('stage1_encoder')} in {time.perf_counter() - t0:.1f} s "
            f"(not in cache; stored in {cache})")
    return out


def prompt_inputs(runtime, opts, manifest: dict | None = None, encoded: Path | None = None):
    """The clip's prompt: a text --prompt (already encoded to ``encoded``), --prompt-embeddings, or -- with
    ``--no-prompt`` only -- ``PromptEmbeddings.zeros`` (a constant, out-of-distribution condition)."""
    from ..runtime.prompt import PromptEmbeddings, load_prompt
    from ..text.spec import encode_command

    path = encoded if encoded is not None else getattr(opts, "prompt_embeddings", None)
    if path is None:
        if not getattr(opts, "no_prompt", False):
            raise UserError(f"no prompt: give --prompt \"...\" (with --stage1-encoder DIR), --prompt-embeddings FILE "
                            f"(from `{encode_command(runtime.cfg, manifest)}`), or --no-prompt to run on the all-zero "
                            "condition (not 'no text': a constant, out-of-distribution condition)")
        say("note: --no-prompt: the generator runs on all-zero prompt features (a constant condition, not 'no text')")
        return PromptEmbeddings.zeros(runtime.cfg)
    with user_input(f"prompt file {path}"):
        return load_prompt(path, runtime.cfg, manifest)


def uses_refiner(runtime) -> bool:
    """Whether ``runtime`` runs a refiner stage (the bundle has the refiner engines and it is not turned off)."""
    return bool(runtime.refiner) and all(n in runtime.executors for n in REFINER_ENGINES)


def check_refiner_prompt(runtime, prompt, opts) -> None:
    """Refuse a refiner run without refiner text unless zeros are asked for (``--zero-refiner-prompt``)."""
    if not uses_refiner(runtime) or getattr(prompt, "refiner_features", None) is not None:
        return
    if getattr(opts, "zero_refiner_prompt", False):
        say("note: --zero-refiner-prompt: the refiner runs on all-zero text features (a constant condition, not "
            "'no text')")
        return
    raise UserError("the bundle has a refiner but the prompt has no refiner text: encode it with "
                    "`sanawm encode-prompt ... --refiner-encoder <refiner folder>` (or --refiner-encoder with --prompt), "
                    "or pass --no-refiner (skip the refiner) or --zero-refiner-prompt (refine on all-zero text)")
