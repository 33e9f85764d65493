"""``sanawm encode-prompt``: the build-side prompt encoder (``sanawm.text.cli``), reached through the click group.

Its arguments go to ``sanawm.text.cli`` untouched (it owns them; ``sanawm encode-prompt --help`` prints them),
and its own ``error: ...`` exits (status 2) pass through the same error boundary as the other commands.
"""

from __future__ import annotations

import click


@click.command("encode-prompt", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               short_help="encode a prompt into a file the runtime reads (build side; see its --help)")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def encode_prompt(args) -> int:
    """Encode a prompt with the stage-1 (and refiner) text encoders into a .safetensors file."""
    from ..text.cli import main

    return int(main(list(args)) or 0)
