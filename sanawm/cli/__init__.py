"""``sanawm``: the run-side command line (click), one module per command.

    sanawm generate --bundle DIR (--image start.png | --latent first.npy) (--camera c2w.npy | --action "w-80,..."
                    | --preset orbit) (--prompt-embeddings prompt.safetensors | --prompt "text" --stage1-encoder DIR
                    | --no-prompt) [--seconds 60] [--backend ...] [--out clip.mp4] [--save-session FILE]
    sanawm generate --bundle DIR --resume FILE [--out part2.mp4]
    sanawm demo [--out demo.mp4] [--bundle-dir DIR] [--seconds N] [--prompt "text"]
    sanawm serve [--bundle DIR] [--host 127.0.0.1 --port 8000] [--token T]   (live sessions in the browser)
    sanawm encode-prompt ...            (build side: Gemma text encoder; see `sanawm encode-prompt --help`)

Modules: ``base`` (help sections, common flags, the user-error / bug boundary), ``inputs`` (first frame, camera,
manifest), ``prompting`` (prompt encoding and the honest zero-prompt rules), ``render`` (the session loop and
the end-of-run summary), ``generate``, ``demo``, ``serve``, ``encode_prompt`` (the commands), ``main`` (the group).
A new command is a module with a click command, added to the group in ``main``.
"""

from .base import CLIError, UserError
from .inputs import default_intrinsics
from .main import cli, main

__all__ = ["CLIError", "UserError", "cli", "default_intrinsics", "main"]
