"""Argument checks shared by families, envs and the CLI: one wording for every error.

Each check raises ValueError naming the argument, what was given and what is allowed.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "UnknownArgumentError",
    "check_choice",
    "check_int",
    "check_number",
    "check_seed",
    "check_tuple",
    "parse_device",
    "parse_dtype",
    "problem_from_user",
    "unknown_arguments_error",
    "x0_from_user",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UnknownArgumentError(TypeError, ValueError):
    """A keyword argument a constructor does not take.

    A TypeError worded as Python's own ("got an unexpected keyword argument 'x'"), because
    clients probe constructors with keywords and drop the ones refused that way (TorchRL's
    ``GymEnv`` passes ``frameskip``); also a ValueError, the package's error for a bad argument.
    """


def unknown_arguments_error(owner: str, unknown: Iterable[str],
                            allowed: Iterable[str]) -> UnknownArgumentError:
    """The error for keywords ``unknown`` given to ``owner``, which takes ``allowed``."""
    names = sorted(unknown)
    more = f" (and {', '.join(map(repr, names[1:]))})" if len(names) > 1 else ""
    return UnknownArgumentError(
        f"{owner} got an unexpected keyword argument {names[0]!r}{more}; allowed: "
        f"{', '.join(allowed) or 'none'}")


def parse_dtype(dtype: str | torch.dtype, name: str = "dtype") -> torch.dtype:
    """'float32' / 'float64' (or the torch dtypes) → torch dtype; ValueError naming ``name``
    otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"{name}: got {dtype!r}, allowed: 'float32', 'float64'")


def parse_device(device: str | torch.device, name: str = "device") -> torch.device:
    """A torch device that exists here (a tensor can be made on it); ValueError naming ``name``
    (``"--device"`` for a flag) otherwise."""
    allowed = "an available torch device such as 'cpu' or 'cuda'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{name}: got {device!r}, allowed: {allowed}") from err
    why = ""
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = (f", but this torch ({torch.__version__}) has no CUDA device"
               + ("" if torch.version.cuda else ": it is a CPU-only build"))
        allowed = "'cpu'"
    elif dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        why = f", but this machine has {torch.cuda.device_count()} CUDA device(s)"
    if why:
        raise ValueError(f"{name}: got {device!r}{why}; allowed: {allowed}")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise ValueError(f"{name}: got {device!r}, allowed: {allowed}") from err
    if dev.type == "meta":  # tensors without data: nothing could be computed on it
        raise ValueError(f"{name}: got {device!r}, a device without data; allowed: {allowed}")
    return dev


def check_number(name: str, value: Any, *, low: float = 0.0, strict: bool = True) -> float:
    """A finite real > low (or >= low); ValueError naming the argument otherwise."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    ok = ok and bool(np.isfinite(value)) and (value > low if strict else value >= low)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name}: got {value!r}, allowed: a finite number {rel} {low:g}")
    return float(value)


@typing.overload
def check_int(name: str, value: Any, low: int, high: int | None = None, *,
              optional: typing.Literal[False] = False) -> int: ...
@typing.overload
def check_int(name: str, value: Any, low: int, high: int | None = None, *,
              optional: bool) -> int | None: ...
def check_int(name: str, value: Any, low: int, high: int | None = None, *,
              optional: bool = False) -> int | None:
    """An int in [low, high] (or None when ``optional``: a setting left to a default worked out
    later, such as a thread count or a step count from the hyper-parameters); ValueError naming
    the argument otherwise."""
    if optional and value is None:
        return None
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name}: got {value!r}, allowed: {'None or ' if optional else ''}"
                         f"{allowed}")
    return int(value)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed`` (a closed set of names: an algorithm, a mode);
    ValueError naming the argument and listing the choices otherwise."""
    choices = tuple(allowed)
    try:
        ok = isinstance(value, Hashable) and value in choices
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: got {value!r}, allowed: {', '.join(map(str, choices))}")
    return value


def check_tuple(name: str, value: Any, kind: type, ok: Callable[[Any], bool], allowed: str,
                *, allow_empty: bool = False) -> tuple[Any, ...]:
    """``value`` (any sequence but a string) as a tuple of ``kind`` whose every entry passes
    ``ok``; ValueError naming the argument otherwise. Entries of an int tuple must be whole
    numbers (``2.0`` passes, ``2.5`` does not), so a list typed in a config file or parsed from
    a comma list ends up the same."""
    try:
        if isinstance(value, str | bytes):
            raise TypeError
        items = tuple(value)
        if kind is int and any(isinstance(v, bool) or int(v) != v for v in items):
            raise ValueError
        out = tuple(kind(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: got {value!r}, allowed: {allowed}") from None
    if (not out and not allow_empty) or not all(ok(v) for v in out):
        raise ValueError(f"{name}: got {value!r}, allowed: {allowed}")
    return out


def check_seed(seed: Any) -> None:
    """None, or an int in [0, 2**63) (seeds key the problem instances)."""
    if seed is None:
        return
    ok = isinstance(seed, int | np.integer) and not isinstance(seed, bool)
    if not ok or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed: got {seed!r}, allowed: None or an int in [0, 2**63)")


def x0_from_user(
    value: Any, batch: int, d: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A user-given starting point as [batch, d] (detached: an env's buffers never join the
    caller's autograd graph); accepts [d] when batch == 1."""
    x0 = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(
        value, torch.Tensor) else value.detach(), dtype=dtype, device=device)
    if batch == 1 and x0.shape == (d,):
        x0 = x0.unsqueeze(0)
    if tuple(x0.shape) != (batch, d):
        want = f"({d},)" if batch == 1 else f"({batch}, {d})"
        raise ValueError(f"options['x0']: got shape {tuple(x0.shape)}, allowed: {want}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("options['x0']: got non-finite values, allowed: finite numbers")
    return x0


def problem_from_user(
    value: Any,
    family: Any,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """A user-given problem instance (dict of arrays) as batched tensors, checked field by field
    (detached, like :func:`x0_from_user`).

    For ``batch == 1`` the fields may come without the batch dimension (as ``env.problem``
    gives them); otherwise each needs a leading dimension of ``batch``.
    """
    shapes = family.problem_shapes()
    if not isinstance(value, Mapping) or set(value) != set(shapes):
        got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
        raise ValueError(f"options['problem']: got {got}, allowed: a dict with exactly the "
                         f"fields {sorted(shapes)} of family {family.name}")
    out = {}
    for key, shape in shapes.items():
        v = value[key]
        t = v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        t = t.to(dtype=dtype, device=device)
        if batch == 1 and tuple(t.shape) == shape:
            t = t.unsqueeze(0)
        if tuple(t.shape) != (batch, *shape):
            raise ValueError(f"options['problem']['{key}']: got shape {tuple(t.shape)}, "
                             f"allowed: {shape if batch == 1 else (batch, *shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"options['problem']['{key}']: got non-finite values, "
                             "allowed: finite numbers")
        out[key] = t
    return out
