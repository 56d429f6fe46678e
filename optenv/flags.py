"""Configuration dataclasses as command-line flags: each setting is declared once.

A trainer's settings are one dataclass whose fields carry, beside their default, their help
text and their ``--quick`` value (:func:`option`). The ``optenv train`` flags are generated from
those fields (:func:`add_flags`: the name, the type — ``tuple[int, ...]`` as a comma-separated
list, ``bool`` as a switch —, the choices, and a help line that shows the default and the
``--quick`` value), and a command line becomes a config with :func:`config_from_flags`: the
defaults, the ``--quick`` preset if asked, then every flag given. So a new setting is one field,
and its flag, its help and its preset cannot drift apart from it.

Every generated flag defaults to None ("not given"), so an explicit flag always overrides the
preset, and the config's own checks (``__post_init__``) judge every value; their errors name the
field (``kl_step: got ...``), which :func:`config_from_flags` rewords to the flag
(``--kl-step: got ...``).

This lives below ``gps`` and ``baselines`` (both declare trainers) and imports neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = [
    "add_flags",
    "build_config",
    "comma_list",
    "config_from_flags",
    "flag_fields",
    "flag_name",
    "option",
    "quick_preset",
    "reword",
    "show",
]

T = TypeVar("T")

#: Field metadata keys read here.
HELP, QUICK, CHOICES, SHOWN = "help", "quick", "choices", "shown"


def option(default: Any = dataclasses.MISSING, *, help: str,
           quick: Any = dataclasses.MISSING, choices: Iterable[Any] | None = None,
           shown: str | None = None,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a flag: its default, help text and ``--quick`` value.

    Args:
        default: the value when neither the flag nor the preset sets it.
        help: what the setting does (the help line adds the default and the quick value).
        quick: its value under ``--quick`` (omit: the preset leaves it at the default).
        choices: the allowed values, if a closed set (the flag then refuses others).
        shown: how the help line states the default, when the default is worked out later
            (e.g. ``"the env's"`` for a None that means "the env's history").
        default_factory: as :func:`dataclasses.field`'s, for mutable or computed defaults.
    """
    metadata: dict[str, Any] = {HELP: help}
    if quick is not dataclasses.MISSING:
        metadata[QUICK] = quick
    if choices is not None:
        metadata[CHOICES] = tuple(choices)
    if shown is not None:
        metadata[SHOWN] = shown
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata=metadata)


def flag_name(name: str) -> str:
    """The flag of field ``name``: ``kl_step`` → ``--kl-step``."""
    return "--" + name.replace("_", "-")


def flag_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of dataclass ``cls`` declared with :func:`option` (the others are not flags:
    settings a trainer fills in itself, such as the env's history)."""
    return [f for f in dataclasses.fields(cls) if HELP in f.metadata]


def quick_preset(cls: type) -> dict[str, Any]:
    """The ``--quick`` preset of ``cls``: field name → quick value, for the fields that have
    one."""
    return {f.name: f.metadata[QUICK] for f in dataclasses.fields(cls) if QUICK in f.metadata}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def show(value: Any) -> str:
    """A value as the flag takes it (tuples comma-separated, floats in full up to 12 digits)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(show(v) for v in value)
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def comma_list(kind: type) -> Callable[[str], tuple[Any, ...]]:
    """argparse type of a comma-separated list of ``kind`` (empty text: the empty tuple)."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"got {text!r}, allowed: comma-separated {kind.__name__}s") from None
    parse.__name__ = f"comma-separated {kind.__name__}s"  # argparse's "invalid ... value"
    return parse


def _flag_kind(cls: type, f: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    """argparse keywords for a field of type ``hint``: ``X | None`` as X, ``tuple[X, ...]`` as
    a comma list, ``bool`` as a switch, int / float / str as themselves."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            hint = args[0]
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return {"type": comma_list(args[0])}
    if hint is bool:  # a switch: given = True, absent = None (the default or the preset)
        return {"action": "store_const", "const": True}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"{cls.__name__}.{f.name}: no flag for a field of type {hint!r}; allowed: "
                    "int, float, str, bool, tuple[int | float | str, ...], or X | None of those")


def _help(f: dataclasses.Field[Any], hint: Any) -> str:
    meta = f.metadata
    parts = []
    if SHOWN in meta:
        parts.append(f"default {meta[SHOWN]}")
    elif hint is not bool:  # a switch is off unless given: nothing to say
        parts.append(f"default {show(_default(f))}")
    if QUICK in meta:
        parts.append(f"--quick {show(meta[QUICK])}")
    text = meta[HELP] + (f" ({'; '.join(parts)})" if parts else "")
    return text.replace("%", "%%")  # argparse %-formats help strings


def add_flags(parser: argparse.ArgumentParser, cls: type, *,
              only: Iterable[str] | None = None) -> None:
    """Add a flag to ``parser`` for every :func:`option` field of ``cls`` (or the ``only``
    ones, in the order given), each defaulting to None = not given."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in flag_fields(cls)}
    names = list(by_name) if only is None else list(only)
    for name in names:
        f = by_name[name]  # KeyError: not an option() field of cls
        kind = _flag_kind(cls, f, hints[name])
        if CHOICES in f.metadata:
            kind["choices"] = f.metadata[CHOICES]
        parser.add_argument(flag_name(name), dest=name, default=None, help=_help(f, hints[name]),
                            **kind)


def build_config(cls: type[T], quick: bool = False, **overrides: Any) -> T:
    """``cls``'s defaults, its ``--quick`` preset if ``quick``, then the ``overrides`` that are
    not None (None = not given)."""
    values = quick_preset(cls) if quick else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def reword(err: ValueError, names: Iterable[str]) -> ValueError:
    """``err`` with every field name in ``names`` written as its flag (``kl_step: got`` →
    ``--kl-step: got``), so a command-line user reads the flag they typed."""
    names = sorted(names, key=len, reverse=True)
    if not names:
        return err
    pattern = re.compile(r"(?<![-\w])(" + "|".join(map(re.escape, names)) + r")\b")
    return ValueError(pattern.sub(lambda m: flag_name(m.group(1)), str(err)))


def config_from_flags(cls: type[T], args: argparse.Namespace | Mapping[str, Any], *,
                      quick: bool = False, **fixed: Any) -> T:
    """The config a command line asks for: :func:`build_config` with every flag of ``cls``
    found in ``args`` (plus ``fixed`` values the trainer worked out itself, such as a horizon
    taken from the env); a ValueError names the flag."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = [f.name for f in flag_fields(cls)]
    overrides = {name: given.get(name) for name in names}
    overrides.update(fixed)
    try:
        return build_config(cls, quick, **overrides)
    except ValueError as err:
        raise reword(err, names) from err
