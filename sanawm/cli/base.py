"""What every sanawm command line shares: option sections in ``--help``, common flags, and the error boundary.

The boundary (``run``) sorts failures in two: user errors -- bad input, missing files, a bad bundle, a missing
backend library, a bad prompt file, bad export input -- print ONE line ``error: <problem and fix>`` and exit 2;
anything else is a bug and is not disguised: the traceback, a line saying so and where to report it, exit 1.
Only the types in ``USER_ERRORS`` count as user errors (plain ``ValueError`` does not: a numpy broadcast error
from deep inside is a bug); code that reads a user's input converts that input's errors with ``user_input``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback

import click

from .. import __version__

EXIT_USER = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130
REPORT = ("this is a bug in sanawm, not a problem with your input: please report it to the sanawm maintainers with "
          "the command line and the traceback above")

# Set by the --debug / -v / -q callbacks while the command line is parsed (read by `run` and `say`).
STATE = {"debug": False, "verbosity": 0}


class UserError(click.ClickException):
    """Bad input from the user: printed as one line ``error: ...`` (say the problem and the fix), exit 2."""

    exit_code = EXIT_USER


CLIError = UserError  # the name the argparse CLI used


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that are the user's to fix (imported lazily: the run side stays light)."""
    from ..bundle import BundleError
    from ..engines.base import MissingBackendError
    from ..text.store import PromptFileError

    # MemoryError: Runtime.load's 'the engines do not fit on this GPU' (with the fix), or too long a clip for RAM
    types = [UserError, BundleError, MissingBackendError, PromptFileError, FileNotFoundError, MemoryError]
    try:  # the build side is optional on a run-side install
        from ..export.job import ExportInputError

        types.append(ExportInputError)
    except ImportError:
        pass
    return tuple(types)


@contextlib.contextmanager
def user_input(what: str):
    """Errors raised while reading the user's ``what`` (a file, a flag value) are the user's: ``ValueError`` /
    ``OSError`` from that reading become ``UserError`` naming ``what`` when the message does not already."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as e:
        msg = str(e) or type(e).__name__
        raise UserError(msg if what in msg else f"{what}: {msg}") from e


# ------------------------------------------------------------------------------------------ help sections
class SectionOption(click.Option):
    """An option that belongs to a named section of the help (inputs, camera, prompt, backend, output)."""

    def __init__(self, *args, section: str = "general", **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options under section headings, in the order they first appear."""

    def format_options(self, ctx, formatter):
        sections: dict[str, list] = {}
        for p in self.get_params(ctx):
            rec = p.get_help_record(ctx)
            if rec is not None:
                sections.setdefault(getattr(p, "section", "general"), []).append(rec)
        for name, rows in sections.items():
            with formatter.section(f"{name.capitalize()} options"):
                formatter.write_dl(rows)


# What a value is, for the help's left column (click says TEXT for every string).
METAVARS = {
    "--bundle": "DIR", "--bundle-dir": "DIR", "--image": "FILE", "--latent": "FILE", "--resume": "FILE",
    "--camera": "FILE", "--intrinsics": "FILE", "--action": "ACTIONS", "--prompt-embeddings": "FILE",
    "--prompt": "TEXT", "--stage1-encoder": "DIR", "--refiner-encoder": "DIR", "--cache-dir": "DIR", "--out": "PATH",
    "--png-dir": "DIR", "--save-latents": "FILE", "--save-session": "FILE", "--weight-streaming-budget": "SIZE",
    "--checkpoint": "PATH", "--vae": "DIR", "--refiner": "DIR", "--engines": "LIST", "--backends": "LIST",
    "--timing-cache": "FILE", "--rtx-targets": "LIST",
}


def option(section: str, *decls, **kwargs):
    """``click.option`` in a help section."""
    name = next((d for d in decls if d.startswith("--")), None)
    if name in METAVARS and "metavar" not in kwargs and not kwargs.get("is_flag"):
        kwargs["metavar"] = METAVARS[name]
    return click.option(*decls, cls=SectionOption, section=section, **kwargs)


def _set_debug(ctx, param, value):
    if value:
        STATE["debug"] = True
    return value


def _add_verbosity(delta):
    def cb(ctx, param, value):
        if value:
            STATE["verbosity"] += delta * value
            logging.getLogger("sanawm").setLevel(logging.DEBUG if STATE["verbosity"] > 0 else
                                                 logging.WARNING if STATE["verbosity"] < 0 else logging.INFO)
        return value
    return cb


def common_options(f):
    """``--debug``, ``-v`` / ``-q`` (accepted before or after the command name; eager, so a parse error after
    them already knows them)."""
    f = option("general", "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
               help="show the full traceback of any error (user errors included)")(f)
    f = option("general", "-q", "--quiet", count=True, expose_value=False, callback=_add_verbosity(-1),
               help="less output: no progress lines or notes (warnings and errors stay)")(f)
    f = option("general", "-v", "--verbose", count=True, expose_value=False, callback=_add_verbosity(1),
               help="more output (-vv: debug logging)")(f)
    return f


def version_option(prog: str):
    return click.version_option(__version__, "--version", prog_name=prog, message="%(prog)s %(version)s")


def say(msg: str) -> None:
    """A note for the user on stderr (progress, what is being done); silenced by -q."""
    if STATE["verbosity"] >= 0:
        print(msg, file=sys.stderr)


# ------------------------------------------------------------------------------------------- the boundary
def _exit_status(call) -> int:
    """Run ``call`` (a click ``main`` in non-standalone mode) and sort what it raises; returns the exit status."""
    STATE.update(debug=False, verbosity=0)
    try:
        rv = call()
        return int(rv) if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:  # --help, --version
        return e.exit_code
    except click.Abort:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted; the video written so far is playable", file=sys.stderr)
        return EXIT_INTERRUPTED
    except click.UsageError as e:  # unknown flag, bad choice, missing value: one line, pointing at --help
        if STATE["debug"]:
            traceback.print_exc()
        where = e.ctx.command_path if e.ctx is not None else "the command"
        print(f"error: {' '.join(e.format_message().split())} (see `{where} --help`)", file=sys.stderr)
        return EXIT_USER
    except SystemExit as e:  # a command that exits itself (encode-prompt's `error: ...` exits)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USER)
    except Exception as e:  # noqa: BLE001 - sorted here: the user's, or a bug shown with its traceback
        if isinstance(e, user_error_types()):
            if STATE["debug"]:
                traceback.print_exc()
            msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
            print(f"error: {' '.join(msg.split())}", file=sys.stderr)  # one line, always
            return EXIT_USER
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}\n{REPORT}", file=sys.stderr)
        return EXIT_BUG


class Boundary:
    """Mixin for a top-level click command: ``main`` sorts errors (user error: one line, exit 2; bug: traceback,
    exit 1). Standalone (the console scripts, ``CliRunner.invoke``) it exits with the status, else returns it."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        code = _exit_status(lambda: super(Boundary, self).main(args=args, prog_name=prog_name,
                                                                standalone_mode=False, **extra))
        if standalone_mode:
            sys.exit(code)
        return code


class BoundaryGroup(Boundary, click.Group):
    """The ``sanawm`` group."""


class BoundaryCommand(Boundary, SectionedCommand):
    """A single top-level command with help sections (``sanawm-export``)."""


def run(command: click.Command, argv, prog: str) -> int:
    """Run top-level ``command`` on ``argv`` (None: sys.argv[1:]); returns its exit status (never raises)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if isinstance(command, Boundary):
        return command.main(args=args, prog_name=prog, standalone_mode=False)
    return _exit_status(lambda: command.main(args=args, prog_name=prog, standalone_mode=False))
