"""The `smpq-deploy` command line.

Subcommands are the other modules of this package, ``deploy/cli/<name>.py`` (``foo_bar`` → ``foo-bar``;
a trailing ``_`` is dropped: ``import_`` → ``import``), found with pkgutil. Each one exposes ``HELP: str`` (a string literal: the command list reads it without
importing the module), ``add_arguments(parser)`` and ``run(args) -> int``. Only the command being
run is imported, so one command's heavy imports (torch …) do not slow down or break the others. main.py adds the
common options to every subcommand; a command builds its configuration with
:func:`deploy.pipeline.config.config_from_args`.

Without a subcommand, ``smpq-deploy [options]`` is ``smpq-deploy run [options]``: the whole pipeline.
User errors (:func:`deploy.errors.user_message`: USER_ERRORS and OSErrors on a file) print ``error: <message>`` on one line and exit 2;
Ctrl-C exits 130. ``SMPQ_TRACEBACK=1`` re-raises them with the traceback, for debugging.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import os
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Mapping

from deploy.errors import USER_ERRORS, DeployError, user_message

PROG = "smpq-deploy"
DEFAULT_COMMAND = "run"
TRACEBACK_ENV = "SMPQ_TRACEBACK"
#: Common options that take a value (used to find the subcommand among the arguments); `run`'s --from/--to
#: take a stage name, which may also be a command's name (--from search).
VALUE_OPTIONS = ("--config", "--device", "--model", "--dataset", "--data-dir", "--seed", "--output", "--run", "--set",
                 "--from", "--to")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other user error of the CLI, and no
    abbreviated options (so that finding the subcommand among the arguments is unambiguous)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


@dataclass(frozen=True)
class Command:
    """A subcommand found on disk; its module is imported only when the command runs."""

    name: str
    module_name: str
    help: str

    def load(self) -> ModuleType:
        """Import the command's module and check that it has the command interface."""
        module = importlib.import_module(self.module_name)
        missing = [a for a in ("HELP", "add_arguments", "run") if not hasattr(module, a)]
        if missing:
            raise TypeError(f"{self.module_name} must define {', '.join(missing)} to be a {PROG} command")
        return module


def _help_text(origin: str | None) -> str | None:
    """The literal `HELP = "..."` of a module's source, read without importing it (imports pull in torch)."""
    if not origin or not origin.endswith(".py"):
        return None
    tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id == "HELP" and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            return node.value.value
    return None


def discover_commands() -> dict[str, Command]:
    """Command name → Command for every module of this package but main, sorted by name."""
    commands: dict[str, Command] = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).resolve().parent)]), key=lambda i: i.name):
        if info.name in ("main", "__main__"):
            continue
        module_name = f"{__package__}.{info.name}"
        spec = importlib.util.find_spec(module_name)
        text = _help_text(spec.origin if spec else None)
        if text is None:  # HELP is not a literal: import to read it
            text = str(getattr(importlib.import_module(module_name), "HELP", ""))
        name = info.name.rstrip("_").replace("_", "-")
        commands[name] = Command(name, module_name, text)
    return commands


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every subcommand accepts; they override pipeline.yaml (see deploy.pipeline.config.FLAG_KEYS)."""
    group = parser.add_argument_group("common options (override the config file)")
    group.add_argument("--config", metavar="YAML", default=None,
                       help="pipeline file (default: the repository's pipeline.yaml)")
    group.add_argument("--device", default=None, help="target device profile (`smpq-deploy devices` lists them)")
    group.add_argument("--model", default=None, help="zoo model: mbv2, resnet8, resnet20")
    group.add_argument("--dataset", default=None, help="dataset: cifar10, imagefolder, mnist5k, digits")
    group.add_argument("--data-dir", default=None, metavar="DIR", help="folder that holds the dataset")
    group.add_argument("--seed", type=int, default=None, help="random seed of every stage")
    group.add_argument("--output", "--run", dest="output", default=None, metavar="DIR",
                       help="run folder for the artifacts (e.g. runs/mbv2-h7)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, repeatable: --set search.method=edmips --set budgets.flash_bytes=1MB")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("smpq-deploy")
    except Exception:  # not installed (running from a checkout)
        return "unknown (not installed)"


def build_parser(commands: dict[str, Command], chosen: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser, one subparser per command; only the `chosen` command's module is imported."""
    parser = _Parser(prog=PROG, description="Shapley-based mixed-precision quantization search, integer deployment "
                                            "and microcontroller firmware. Without a command: run the whole pipeline.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in commands.items():
        if name != chosen:
            sub.add_parser(name, help=command.help)
            continue
        module = command.load()
        doc = (module.__doc__ or command.help).strip().splitlines()[0]
        cmd = sub.add_parser(name, help=command.help, description=doc)
        add_common_arguments(cmd)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return parser


def route(argv: list[str], commands: Mapping[str, object]) -> list[str]:
    """Put the subcommand first (common options may precede it); none given → the default command."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            break
        if token in commands:
            return [token] + argv[:i] + argv[i + 1:]
        if token.startswith("-"):
            i += 2 if token in VALUE_OPTIONS else 1
            continue
        if i and argv[i - 1].startswith("-"):  # the value of an option of the default command (--subset 512)
            i += 1
            continue
        raise DeployError(_unknown_command(token, commands))  # the default command takes no positionals
    if all(t in ("-h", "--help", "--version") for t in argv) and argv:
        return argv
    return [DEFAULT_COMMAND] + argv


def _unknown_command(token: str, commands: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(token, list(commands), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown command '{token}'; {hint}commands: {', '.join(commands)} (see '{PROG} --help')"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `smpq-deploy` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        commands = discover_commands()
        routed = route(argv, commands)
        parser = build_parser(commands, routed[0] if routed and routed[0] in commands else None)
        try:
            args = parser.parse_args(routed)
        except SystemExit as exc:  # --help, --version, usage errors
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        args.argv = routed  # the command line as parsed (`search --nproc N` relaunches it N times)
        return int(args.handler(args) or 0)
    except (*USER_ERRORS, OSError) as exc:
        message = user_message(exc)
        if message is None or os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
