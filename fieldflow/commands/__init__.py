"""The subcommands of the ``fieldflow`` command line, one module each.

Every module ``fieldflow.commands.<name>`` has the same shape:

* ``HELP``: one line, shown by ``fieldflow --help``;
* ``EXAMPLES``: full command lines starting with ``fieldflow <name>`` (the tests run them);
* ``add_parser(subparsers) -> argparse.ArgumentParser``: its options;
* ``run(args) -> dict``: does the work and returns the summary it wrote to
  ``<out>/summary.json``. User mistakes raise ValueError (or FileNotFoundError) with a
  one-line message; jax and the models are imported inside ``run``.

:func:`run_command` runs one of them from an argument list, as ``fieldflow.cli.main`` does.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

__all__ = ["NAMES", "command_module", "add_subparser", "build_parser", "run_command", "subparser"]

NAMES = (
    "generate",
    "train",
    "calibrate",
    "sample",
    "infer",
    "denoise",
    "evaluate",
    "benchmark",
    "quickstart",
)


def command_module(name: str) -> ModuleType:
    """The module of subcommand ``name`` (ValueError for an unknown name)."""
    if name not in NAMES:
        raise ValueError(f"unknown command {name!r}; expected one of {', '.join(NAMES)}")
    return importlib.import_module(f"fieldflow.commands.{name}")


def add_subparser(subparsers, name: str) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (its module's parser, plus ``--no-progress``) to ``subparsers``."""
    parser = command_module(name).add_parser(subparsers)
    try:
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    except argparse.ArgumentError:  # the module has its own
        pass
    return parser


def build_parser(names=NAMES, **kwargs) -> argparse.ArgumentParser:
    """One parser with the subcommands ``names``; ``kwargs`` go to ``ArgumentParser``."""
    parser = argparse.ArgumentParser(**{"prog": "fieldflow", **kwargs})
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in names:
        add_subparser(subparsers, name)
    return parser


def run_command(name: str, argv) -> dict:
    """Parse ``argv`` (the arguments after ``fieldflow <name>``) and run the subcommand."""
    args = build_parser([name]).parse_args([name, *map(str, argv)])
    return command_module(name).run(args)


def subparser(subparsers, name: str, help: str, examples, doc: str | None = None):
    """A subcommand's parser: its one-line ``help``, as description ``help`` and ``doc`` (a
    module docstring, less a first paragraph naming the command), ``examples`` as epilog."""
    text = (doc or "").strip().replace("``", "")
    if text.startswith("fieldflow"):
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return subparsers.add_parser(
        name,
        help=help,
        description=f"{help}\n\n{text}" if text else help,
        epilog="examples:\n  " + "\n  ".join(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
