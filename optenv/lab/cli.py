"""The ``optenv`` command line: one entry point, one sub-command per job.

A user error (a bad argument) prints one line naming it on stderr and exits with status 2, with
no traceback: sub-commands raise ValueError for those, and argparse's own errors are folded into
the same single line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from optenv.lab import bench, compare, demo, study, train

__all__ = ["main"]

#: Sub-command modules; each has add_parser(subparsers) and sets func=run(args) -> int.
SUBCOMMANDS: tuple[ModuleType, ...] = (compare, study, train, demo, bench)


class UserError(Exception):
    """A command-line mistake; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optenv", description="Optimisation as reinforcement learning.")
    from optenv import __version__

    parser.add_argument("--version", action="version", version=f"optenv {__version__}")
    subparsers = parser.add_subparsers(dest="command", parser_class=_Parser)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def _clear_progress_bars() -> None:
    """Erase every progress bar still open (a sub-command's, interrupted by the error), so that
    the error line starts at the beginning of a line rather than after the bar's text."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except (UserError, ValueError) as err:
        _clear_progress_bars()
        print(f"optenv: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _clear_progress_bars()
        resumable = getattr(args, "command", None) in ("train", "study")
        print("optenv: interrupted" + ("; the same command with --resume continues from the "
                                       "last checkpoint" if resumable else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
