"""``optenv train ALGO ...``: one sub-command per trainer, each declared by its own package.

Every trainer module (``gps.train``, ``baselines.bptt_train``, ``baselines.sb3_train``) adds its
sub-commands with ``add_train_parser(subparsers)``; this module only gathers them, so adding a
trainer is one line in :data:`TRAINERS`. Run folders are :class:`optenv.runs.RunDir`'s.
"""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

from baselines import bptt_train, sb3_train
from gps import train as gps_train

__all__ = ["TRAINERS", "add_parser"]

#: ``optenv train NAME`` → the module that declares its sub-command(s).
TRAINERS: dict[str, ModuleType] = {"gps": gps_train, "bptt": bptt_train, "sb3": sb3_train}


def add_parser(subparsers: Any) -> None:
    """``optenv train ALGO ...``: each trainer module adds its own sub-commands."""
    p = subparsers.add_parser("train", help="train a learned optimiser (gps, bptt, SB3 agents)")
    algos = p.add_subparsers(dest="algorithm", parser_class=type(p))
    for module in TRAINERS.values():
        module.add_train_parser(algos)
    p.set_defaults(func=lambda args: _missing_algorithm(p, args))


def _missing_algorithm(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help()
    return 0
