"""Method names and ``PREFIX:DIR`` specs, resolved to the optimiser objects that
:func:`optenv.evaluate.evaluate` runs.

``--methods`` (of ``optenv compare`` and the study) is a comma-separated list of the
hand-designed optimisers of :mod:`baselines.optimizers` (gd, momentum, nesterov, adam, adagrad,
rmsprop, cg, lbfgs) and ``PREFIX:PATH`` specs for saved learned optimisers: the run folders of
``optenv train`` (``gps:DIR``, ``bptt:DIR``, ``ppo:DIR``, ``sac:DIR``, ``td3:DIR``,
``recurrent-ppo:DIR``). Each prefix has a loader, ``loader(path, context) -> optimiser``, with
``context`` holding ``env_id``, ``family``, ``history``, ``max_step``, ``device``,
``observation`` and ``features`` (what the env emits, so a loader can refuse a policy trained on
other observations); a package of your own adds its format with
:func:`register_method_loader`.

This is the application layer's job: the env library's ``evaluate`` takes objects, never names,
so that it imports no optimiser package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from baselines import bptt_train, sb3_policy
from baselines.optimizers import OPTIMIZERS, HandOptimizer
from gps import train as gps_train
from optenv import pretrained

__all__ = ["HAND_OPTIMIZERS", "METHOD_LOADERS", "Loader", "method_choices", "parse_methods",
           "register_method_loader"]

#: A saved optimiser's loader: (path, context) -> anything ``evaluate`` accepts.
Loader = Callable[[str, dict[str, Any]], Any]

#: The hand-designed optimisers by name (class with ``defaults`` and ``default_grid``).
HAND_OPTIMIZERS: dict[str, type[HandOptimizer]] = OPTIMIZERS

#: What follows the colon of a prefix, where it is not a run folder (error messages).
_ARGUMENT = {"pretrained": "NAME"}
#: prefix → loader of ``PREFIX:DIR`` specs.
METHOD_LOADERS: dict[str, Loader] = {
    "gps": gps_train.load_for_compare,
    "bptt": bptt_train.load_for_compare,
    "ppo": sb3_policy.load_ppo,
    "sac": sb3_policy.load_sac,
    "td3": sb3_policy.load_td3,
    "recurrent-ppo": sb3_policy.load_recurrent_ppo,
    "pretrained": pretrained.load_for_compare,  # pretrained:NAME, a shipped optimiser
}


def register_method_loader(prefix: str, loader: Loader) -> None:
    """Make ``--methods PREFIX:PATH`` load a saved optimiser with ``loader(PATH, context)``."""
    if not isinstance(prefix, str) or not prefix.replace("-", "_").isidentifier():
        raise ValueError(f"prefix: got {prefix!r}, allowed: a name such as 'gps' or "
                         "'recurrent-ppo'")
    if not callable(loader):
        raise TypeError(f"loader: got {type(loader).__name__}, allowed: a callable "
                        "(path, context) -> optimiser")
    METHOD_LOADERS[prefix] = loader


def method_choices() -> list[str]:
    """What ``--methods`` accepts, from the registries (the hand-designed optimisers, then one
    ``PREFIX:DIR`` per loader): for help texts and error messages."""
    return list(HAND_OPTIMIZERS) + [f"{p}:{_ARGUMENT.get(p, 'DIR')}" for p in METHOD_LOADERS]


def parse_methods(spec: str) -> list[tuple[str, str | None]]:
    """``"gd,adam,gps:runs/gps"`` → [("gd", None), ("adam", None), ("gps", "runs/gps")].

    Raises ValueError for empty or duplicate entries, unknown names and unknown prefixes.
    """
    allowed = ", ".join(method_choices())
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--methods: got {spec!r}, allowed: a comma-separated list of {allowed}")
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"--methods: got an empty entry in {spec!r}, allowed: "
                             f"a comma-separated list of {allowed}")
        if item in seen:
            raise ValueError(f"--methods: got {item!r} twice, allowed: each method once")
        seen.add(item)
        prefix, sep, path = item.partition(":")
        if sep:
            if prefix not in METHOD_LOADERS:
                raise ValueError(f"--methods: got {item!r}, unknown prefix {prefix!r}; "
                                 f"allowed: {allowed}")
            if not path:
                raise ValueError(f"--methods: got {item!r}, allowed: {prefix}:DIR with a path")
            out.append((prefix, path))
        elif item in HAND_OPTIMIZERS:
            out.append((item, None))
        else:
            raise ValueError(f"--methods: got unknown method {item!r}, allowed: {allowed}")
    return out


def load_method(prefix: str, path: str, context: dict[str, Any]) -> Any:
    """The saved optimiser of a ``PREFIX:PATH`` spec (see the module docstring). A loader's
    ValueError that does not already name ``--methods`` (e.g. ``path: got ...`` for a folder
    without the trainer's files: missing, or another trainer's) is named after it and the
    spec given, as the other ``--methods`` errors are."""
    try:
        return METHOD_LOADERS[prefix](path, context)
    except ValueError as err:
        if str(err).startswith("--methods"):
            raise
        raise ValueError(f"--methods: {prefix}:{path}: {err}") from err
