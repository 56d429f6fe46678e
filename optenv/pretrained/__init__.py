"""Pretrained learned optimisers, shipped inside the package: usable offline, in one line.

Each one is two files in this folder: ``NAME.pt``, a coordinatewise policy as
:func:`optenv.policy.save_coordinatewise_policy` writes it (a few KB), and ``NAME.json``, its
provenance: the exact command that trained it, the optenv and torch versions, the training
env, and the held-out figures it reached (``optenv compare`` on the test split, with the
command). :mod:`optenv.pretrained.make` writes both from a run folder and a comparison, so the
shipped optimisers are the package's own commands' output, reproducible from their JSON.

::

    import optenv
    optenv.pretrained.names()                     # ['gps-logreg-psi', ...]
    opt = optenv.LearnedOptimizer(model.parameters(), "gps-logreg-psi")
    optenv.pretrained.info("gps-logreg-psi")["heldout"]

``optenv compare --methods gd,pretrained:NAME`` evaluates one like any other method
(:func:`load_for_compare`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optenv.learned import LearnedPolicy, learned_from_file

__all__ = ["FOLDER", "info", "load", "load_for_compare", "names"]

#: Where the shipped optimisers live (package data).
FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped optimisers' names, sorted (those with both their ``.pt`` and ``.json``)."""
    return sorted(p.stem for p in FOLDER.glob("*.json") if p.with_suffix(".pt").is_file())


def _check_name(name: Any) -> str:
    available = names()
    if not isinstance(name, str) or name not in available:
        raise ValueError(f"name: got {name!r}, allowed: one of the pretrained optimisers "
                         f"{', '.join(available) or '(none installed)'}")
    return name


def info(name: str) -> dict[str, Any]:
    """The provenance of optimiser ``name`` (its JSON: command, versions, training env,
    feature set, held-out figures); ValueError for an unknown name."""
    text = (FOLDER / f"{_check_name(name)}.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def load(name: str) -> LearnedPolicy:
    """Optimiser ``name`` as a :class:`~optenv.learned.LearnedPolicy` (its policy, the
    training env's max_step and history, the kinds it was trained on, and :func:`info` in
    its metadata); ValueError for an unknown name."""
    meta = info(name)
    return learned_from_file(FOLDER / f"{name}.pt", f"pretrained {name!r}", meta)


def load_for_compare(name: str, context: dict[str, Any]) -> Any:
    """``optenv compare --methods pretrained:NAME``: the optimiser acting in the compared env
    (bound to its family's coordinate groups; ValueError when the env cannot give the policy's
    rows)."""
    try:
        learned = load(name)
    except ValueError as err:
        raise ValueError(f"--methods: pretrained:{name}: {err}") from err
    return learned.env_policy(context["family"], context, f"pretrained:{name}")
