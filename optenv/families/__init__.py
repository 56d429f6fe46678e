"""Objective families and the registry that maps names to them.

``make_family("LogisticRegression", dim=2)`` builds a family by name; ``register_family`` adds a
user's own, so that ``OptimizationEnv(family="MyFamily")`` and ``gym.make`` ids built on it work
(also in sub-processes, as long as the module that registers it is imported there).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from optenv.families.base import ObjectiveFamily, ProblemData, index_problem, problem_to_numpy
from optenv.families.custom import FunctionFamily
from optenv.families.groups import CoordinateGroup
from optenv.families.logistic_regression import LogisticRegression
from optenv.families.mlp_classifier import MLPClassifier
from optenv.families.neural_net import NeuralNet
from optenv.families.quadratic import Quadratic
from optenv.families.robust_regression import RobustRegression
from optenv.validation import unknown_arguments_error

__all__ = [
    "FAMILIES",
    "CoordinateGroup",
    "FunctionFamily",
    "LogisticRegression",
    "MLPClassifier",
    "NeuralNet",
    "ObjectiveFamily",
    "ProblemData",
    "Quadratic",
    "RobustRegression",
    "index_problem",
    "make_family",
    "problem_to_numpy",
    "register_family",
]

FAMILIES: dict[str, Callable[..., ObjectiveFamily]] = {
    cls.name: cls for cls in (Quadratic, LogisticRegression, RobustRegression, NeuralNet,
                              MLPClassifier)
}


def register_family(
    name: str, factory: Callable[..., ObjectiveFamily], *, overwrite: bool = False
) -> None:
    """Make ``factory(**kwargs)`` available as family ``name`` (idempotent for the same factory)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: got {name!r}, allowed: a non-empty string")
    if not callable(factory):
        raise TypeError(f"factory: got {type(factory).__name__}, allowed: a callable")
    if name in FAMILIES and FAMILIES[name] is not factory and not overwrite:
        raise ValueError(f"name: family {name!r} is already registered; "
                         "pass overwrite=True to replace it")
    FAMILIES[name] = factory


def make_family(family: str | ObjectiveFamily, **kwargs: Any) -> ObjectiveFamily:
    """A family instance from a registered name and its arguments, or a ready instance.

    Raises ValueError naming an unknown family, and UnknownArgumentError (a TypeError and a
    ValueError, in Python's words) naming an unknown argument; both list the allowed ones.
    """
    if isinstance(family, ObjectiveFamily):
        if kwargs:
            raise unknown_arguments_error(f"a ready {type(family).__name__} instance", kwargs,
                                          ())
        return family
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"family: got {family!r}, allowed: {', '.join(sorted(FAMILIES))} "
                         "or an ObjectiveFamily instance")
    factory = FAMILIES[family]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise unknown_arguments_error(f"family {family}", unknown, params)
    made = factory(**kwargs)
    if not isinstance(made, ObjectiveFamily):
        raise TypeError(f"family {family!r}: factory returned {type(made).__name__}, "
                        "expected an ObjectiveFamily")
    return made
