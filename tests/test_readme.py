"""The README's commands keep working: every `sanawm ...` / `sanawm-export ...` line in its fenced shell blocks
parses with the real command-line parsers (strictly: unknown flags, bad choices and missing required options
fail), and every `--flag` the README's prose names exists on some command. Nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from sanawm.cli import cli
from sanawm.export.cli import export_command
from sanawm.serve.cli import add_arguments as add_serve_arguments
from sanawm.text.cli import build_parser as encode_prompt_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def shell_commands(text: str) -> list[list[str]]:
    """argv lists of the sanawm / sanawm-export commands in the README's ```bash blocks."""
    cmds = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            for part in re.split(r"&&|;|\|\|", line):
                argv = shlex.split(part)
                if argv and argv[0] in ("sanawm", "sanawm-export"):
                    cmds.append(argv)
    return cmds


def serve_parser():
    import argparse

    p = argparse.ArgumentParser(prog="sanawm serve")
    add_serve_arguments(p)
    return p


# subcommands whose flags their own package owns (argparse), handed over untouched by the click group
ARGPARSE_COMMANDS = {"encode-prompt": encode_prompt_parser, "serve": serve_parser}


def parse(argv: list[str]) -> None:
    """Parse ``argv`` with the command's own parser; raises on any problem."""
    if argv[0] == "sanawm-export":
        export_command.make_context("sanawm-export", argv[1:])
        return
    if argv[1] in ARGPARSE_COMMANDS:
        try:
            ARGPARSE_COMMANDS[argv[1]]().parse_args(argv[2:])
        except SystemExit as e:
            raise AssertionError(f"`{' '.join(argv)}` does not parse (argparse exit {e.code})") from None
        return
    ctx = cli.make_context("sanawm", argv[1:2], resilient_parsing=True)
    sub = cli.get_command(ctx, argv[1])
    assert sub is not None, f"`sanawm {argv[1]}` is not a command"
    sub.make_context(f"sanawm {argv[1]}", argv[2:], parent=ctx)


COMMANDS = shell_commands(README.read_text())


def test_the_readme_has_commands():
    names = {(c[0], c[1] if c[0] == "sanawm" else "") for c in COMMANDS}
    assert {("sanawm", "demo"), ("sanawm", "generate"), ("sanawm", "encode-prompt"), ("sanawm", "serve"),
            ("sanawm-export", "")} <= names


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_parses(argv):
    try:
        parse(argv)
    except click.ClickException as e:
        raise AssertionError(f"README command `{' '.join(argv)}` no longer parses: {e.format_message()}") from None


def _all_flags() -> set[str]:
    flags = set()
    for command in [export_command] + [cli.commands[n] for n in cli.commands]:
        for p in command.params:
            flags.update(o for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []) if o.startswith("--"))
    for p in cli.params:
        flags.update(o for o in p.opts if o.startswith("--"))
    from sanawm.worlds.train import build_parser as train_parser  # `python -m sanawm.worlds.train`

    for make in list(ARGPARSE_COMMANDS.values()) + [train_parser]:
        for action in make()._actions:
            flags.update(o for o in action.option_strings if o.startswith("--"))
    return flags


FOREIGN_FLAGS = {"--head"}  # other tools' flags the README shows: `ray start --head` (fleet section)


def test_every_flag_the_readme_names_exists():
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", README.read_text()))
    missing = sorted(named - _all_flags() - FOREIGN_FLAGS)
    assert not missing, f"the README names flags no command has: {missing}"


def test_the_check_can_fail():
    """A renamed flag or a bad choice in a README line is caught (the parser is strict)."""
    with pytest.raises(click.ClickException):
        parse(["sanawm", "generate", "--bundle", "b", "--imag", "x.png"])
    with pytest.raises(click.ClickException):
        parse(["sanawm", "generate", "--bundle", "b", "--backend", "cuda"])
    with pytest.raises(click.ClickException):
        parse(["sanawm-export", "--random", "--out", "b", "--precision", "int4"])
    with pytest.raises(AssertionError):
        parse(["sanawm", "encode-prompt", "--promt", "x"])
