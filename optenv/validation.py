"""Argument checks shared by families, envs and the CLI: one wording for every error.

Each check raises ValueError naming the argument, what was given and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_int",
    "check_number",
    "check_seed",
    "parse_device",
    "parse_dtype",
    "problem_from_user",
    "x0_from_user",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'float64' (or the torch dtypes) → torch dtype; ValueError otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype: got {dtype!r}, allowed: 'float32', 'float64'")


def parse_device(device: str | torch.device, name: str = "device") -> torch.device:
    """A torch device that exists here (a tensor can be made on it); ValueError naming ``name``
    (``"--device"`` for a flag) otherwise."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise ValueError(f"{name}: got {device!r}, allowed: an available torch device such as "
                         "'cpu' or 'cuda'") from err
    return dev


def check_number(name: str, value: Any, *, low: float = 0.0, strict: bool = True) -> float:
    """A finite real > low (or >= low); ValueError naming the argument otherwise."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    ok = ok and bool(np.isfinite(value)) and (value > low if strict else value >= low)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name}: got {value!r}, allowed: a finite number {rel} {low:g}")
    return float(value)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An int in [low, high]; ValueError naming the argument otherwise."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name}: got {value!r}, allowed: {allowed}")
    return int(value)


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
    """A user-given starting point as [batch, d]; accepts [d] when batch == 1."""
    x0 = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(
        value, torch.Tensor) else value, dtype=dtype, device=device)
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
    """A user-given problem instance (dict of arrays) as batched tensors, checked field by field.

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
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
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
