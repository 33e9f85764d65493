"""``sanawm serve``: live sessions in the browser (``sanawm.serve``), reached through the click group.

The serve package owns its flags (``sanawm.serve.cli.add_arguments``, argparse); this command hands them over
untouched so that package can change them without touching the group. Its refusals are ``UserError``s (one
line, exit 2) through the group's error boundary; ``sanawm serve --help`` prints its flags.
"""

from __future__ import annotations

import argparse

import click


@click.command("serve", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               short_help="steer live sessions from a browser: HTTP + WebSocket server (loopback by default)")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args) -> int:
    """Serve live sessions (see `sanawm serve --help`)."""
    from ..serve.cli import add_arguments, serve as run_serve  # aiohttp loads only when serving

    p = argparse.ArgumentParser(prog="sanawm serve", description="steer live sessions from a browser: HTTP + "
                                "WebSocket server (loopback by default)")
    add_arguments(p)
    try:
        opts = p.parse_args(list(args))
    except SystemExit as e:  # -h (exit 0) or argparse's own usage error (printed, exit 2)
        return int(e.code or 0)
    return int(run_serve(opts) or 0)
