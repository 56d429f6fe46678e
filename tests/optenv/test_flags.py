"""Tests of optenv.flags (config dataclasses as flags) and of the shared optenv.validation
checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import pytest

from optenv.flags import add_flags, build_config, config_from_flags, option, quick_preset, reword
from optenv.validation import check_choice, check_int, check_tuple


@dataclass
class Demo:
    """A config with one field of every supported kind, and one that is not a flag."""

    steps: int = option(10, quick=2, help="how many steps")
    rate: float = option(0.5, help="a rate")
    mode: str = option("a", choices=("a", "b"), help="a mode")
    sizes: tuple[int, ...] = option((4, 4), quick=(2,), help="sizes")
    width: int | None = option(None, shown="the env's", help="a width")
    fast: bool = option(False, help="go fast")
    internal: int = 3  # not an option(): no flag

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_choice("mode", self.mode, ("a", "b"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="demo")
    add_flags(p, Demo)
    return p


def test_flags_are_generated_from_the_option_fields_with_their_types() -> None:
    p = _parser()
    args = p.parse_args(["--steps", "3", "--rate", "0.25", "--mode", "b", "--sizes", "8,6",
                         "--width", "7", "--fast"])
    assert vars(args) == {"steps": 3, "rate": 0.25, "mode": "b", "sizes": (8, 6), "width": 7,
                          "fast": True}
    assert vars(p.parse_args([])) == dict.fromkeys(vars(args))  # None = not given
    assert p.parse_args(["--sizes", ""]).sizes == ()  # an empty list
    with pytest.raises(ValueError, match="--internal"):
        p.parse_args(["--internal", "1"])
    with pytest.raises(ValueError, match="invalid choice"):
        p.parse_args(["--mode", "c"])
    with pytest.raises(ValueError, match="--sizes: got '8,x', allowed: comma-separated ints"):
        p.parse_args(["--sizes", "8,x"])


def test_the_help_line_shows_the_default_and_the_quick_value() -> None:
    text = " ".join(_parser().format_help().split())
    assert "how many steps (default 10; --quick 2)" in text
    assert "a rate (default 0.5)" in text
    assert "sizes (default 4,4; --quick 2)" in text
    assert "a width (default the env's)" in text
    assert "go fast --" not in text and "go fast" in text  # a switch: no default to state


def test_presets_and_overrides() -> None:
    assert quick_preset(Demo) == {"steps": 2, "sizes": (2,)}
    assert build_config(Demo) == Demo()
    assert build_config(Demo, quick=True, rate=None) == Demo(steps=2, sizes=(2,))
    assert build_config(Demo, quick=True, steps=5) == Demo(steps=5, sizes=(2,))
    args = _parser().parse_args(["--rate", "0.1"])
    assert config_from_flags(Demo, args, quick=True) == Demo(steps=2, rate=0.1, sizes=(2,))
    assert config_from_flags(Demo, args, width=9).width == 9  # a value the trainer worked out


def test_a_bad_value_names_the_flag_the_user_typed() -> None:
    args = _parser().parse_args(["--steps", "0"])
    with pytest.raises(ValueError, match=r"^--steps: got 0, allowed: an int >= 1$"):
        config_from_flags(Demo, args)
    err = reword(ValueError("min_steps: got 2 > steps 1 (steps)"), ["steps", "min_steps"])
    assert str(err) == "--min-steps: got 2 > --steps 1 (--steps)"


def test_a_field_type_without_a_flag_form_is_refused_when_declared() -> None:
    @dataclass
    class Bad:
        # option() returns a dataclasses.Field, as field() does (RUF009 does not know it)
        table: dict[str, int] = option(default_factory=dict, help="none")  # noqa: RUF009

    with pytest.raises(TypeError, match=r"Bad\.table: no flag"):
        add_flags(argparse.ArgumentParser(), Bad)


def test_plain_fields_stay_out_of_the_flags() -> None:
    @dataclass
    class Mixed:
        a: int = option(1, help="a")
        b: list[int] = field(default_factory=list)

    p = argparse.ArgumentParser()
    add_flags(p, Mixed)
    assert {a.dest for a in p._actions} == {"help", "a"}


def test_shared_checks_name_the_argument_what_was_given_and_what_is_allowed() -> None:
    assert check_int("n", np.int64(3), 1) == 3
    assert check_int("n", None, 1, optional=True) is None
    with pytest.raises(ValueError, match=r"^n: got None, allowed: an int >= 1$"):
        check_int("n", None, 1)
    with pytest.raises(ValueError, match=r"^--threads: got 0, allowed: None or an int >= 1$"):
        check_int("--threads", 0, 1, optional=True)
    with pytest.raises(ValueError, match=r"^n: got True, allowed: an int in \[0, 5\]$"):
        check_int("n", True, 0, 5)
    assert check_choice("--vec", "dummy", ("batched", "dummy")) == "dummy"
    with pytest.raises(ValueError, match=r"^--vec: got 'x', allowed: batched, dummy$"):
        check_choice("--vec", "x", ("batched", "dummy"))
    with pytest.raises(ValueError, match=r"^--vec: got \['x'\], allowed: batched$"):
        check_choice("--vec", ["x"], ("batched",))  # unhashable: refused, not a TypeError
    assert check_tuple("h", [2.0, 3], int, lambda v: v > 0, "ints > 0") == (2, 3)
    assert check_tuple("h", (), int, lambda v: v > 0, "ints", allow_empty=True) == ()
    for bad in ("23", [2.5], [True], [], [0]):
        with pytest.raises(ValueError, match=r"^h: got .*, allowed: ints > 0$"):
            check_tuple("h", bad, int, lambda v: v > 0, "ints > 0")
