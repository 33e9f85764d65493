"""The ``sanawm`` command group: one module per command, registered here (later commands add one line)."""

from __future__ import annotations

import click

from .base import BoundaryGroup, common_options, run, version_option
from .demo import demo
from .encode_prompt import encode_prompt
from .generate import generate
from .serve import serve

PROG = "sanawm"


@click.group(PROG, cls=BoundaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option(PROG)
@common_options
def cli() -> None:
    """SANA-WM world-model runtime: generate clips from engine bundles (torch-free), run the CPU demo, serve live
    sessions to a browser, encode prompts. User errors exit 2 with one line; --debug shows tracebacks."""


for command in (generate, demo, serve, encode_prompt):
    cli.add_command(command)


def main(argv=None) -> int:
    """Entry point of the ``sanawm`` console script; returns the exit status (0, 1: a bug, 2: user error)."""
    return run(cli, argv, PROG)
