"""The ``fieldflow`` command line: generate, train, sample, infer, denoise, evaluate, benchmark,
and ``quickstart`` (the whole small pipeline on CPU).

Every subcommand writes its outputs and a ``summary.json`` into an output directory.
A user mistake (a missing file, a bad option value) ends with one ``fieldflow: error:``
line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

from fieldflow.commands import NAMES, command_module
from fieldflow.commands import build_parser as _build

__all__ = ["main", "build_parser"]

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (``fieldflow.commands.NAMES``), examples as epilog."""
    examples = [line for name in NAMES for line in command_module(name).EXAMPLES]
    return _build(
        NAMES,
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  " + "\n  ".join(examples),
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``fieldflow ARGV``; 0 on success, 2 (one ``fieldflow: error:`` line) on a user
    mistake."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        command_module(args.command).run(args)
    except USER_ERRORS as err:
        print("fieldflow: error: " + " ".join(str(err).splitlines()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
