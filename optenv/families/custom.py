"""Plugging in a user's own objective: a batched torch function of (x, data)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from optenv.families.base import ObjectiveFamily, ProblemData
from optenv.families.groups import CoordinateGroup, check_groups
from optenv.rng import KeyedRNG
from optenv.validation import check_int, check_number

__all__ = ["FunctionFamily"]


class FunctionFamily(ObjectiveFamily):
    """An objective family made from plain functions, for objectives optenv does not ship.

    Args:
        objective: ``f(x, data) -> [B]`` for x [B, d] and ``data`` a dict of [B, ...] tensors;
            written with torch ops, so gradients and Hessians come from ``torch.func``.
        d: the number of variables.
        sampler: ``sampler(rng) -> dict`` drawing instance data with the
            :class:`~optenv.rng.KeyedRNG` it is given (``rng.normal(...)``, ``rng.uniform(...)``;
            each returns [B, ...]). ``None``: a single fixed objective with no data.
        initial_point: ``initial_point(rng) -> [B, d]``; default standard normal.
        value_and_grad: optional closed form ``(x, data) -> (f, grad)``, used instead of autograd.
        name: the family's name (used in ids and reports).
        max_step: the default per-coordinate step an action of ±1 maps to.
        groups: the coordinate groups (:mod:`optenv.families.groups`) a coordinatewise
            optimiser shares its parameters within: a dict ``name -> indices`` or
            ``name -> (indices, kind)`` (kind ``"weight"``, ``"bias"`` or ``"other"``), or a
            sequence of :class:`~optenv.families.groups.CoordinateGroup`; they must partition
            ``range(d)``. Default: one group ``"x"`` of all coordinates.

    Example::

        def rosenbrock(x, data):
            return ((data["a"] - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2)

        fam = FunctionFamily(rosenbrock, d=2, sampler=lambda rng: {"a": 1 + rng.uniform()})
        env = optenv.OptimizationEnv(fam)
    """

    def __init__(
        self,
        objective: Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor],
        d: int,
        sampler: Callable[[KeyedRNG], ProblemData] | None = None,
        *,
        initial_point: Callable[[KeyedRNG], torch.Tensor] | None = None,
        value_and_grad: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        name: str = "Custom",
        max_step: float = 1.0,
        groups: Any = None,
    ) -> None:
        if not callable(objective):
            raise TypeError(f"objective: got {type(objective).__name__}, allowed: a callable")
        for arg, fn in (("sampler", sampler), ("initial_point", initial_point),
                        ("value_and_grad", value_and_grad)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{arg}: got {type(fn).__name__}, allowed: a callable or None")
        check_int("d", d, 1)
        check_number("max_step", max_step)
        self._objective = objective
        self._d = int(d)
        self._sampler = sampler
        self._initial_point = initial_point
        self._value_and_grad = value_and_grad
        self.name = name
        self.default_max_step = float(max_step)
        self._groups = None if groups is None else check_groups(groups, self._d)

    @property
    def d(self) -> int:
        return self._d

    def generate(self, rng: KeyedRNG) -> ProblemData:
        if self._sampler is None:
            return {}
        data = self._sampler(rng)
        if not isinstance(data, Mapping) or not all(
            isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == rng.batch_size
            for v in data.values()
        ):
            raise TypeError("sampler: must return a dict of tensors with leading dim "
                            f"{rng.batch_size} (the batch)")
        return dict(data)

    def initial_point(self, rng: KeyedRNG) -> torch.Tensor:
        if self._initial_point is None:
            return super().initial_point(rng)
        x0 = self._initial_point(rng)
        if tuple(x0.shape) != (rng.batch_size, self._d):
            raise TypeError(f"initial_point: returned shape {tuple(x0.shape)}, "
                            f"expected {(rng.batch_size, self._d)}")
        return x0

    def objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._objective(x, data)

    def coordinate_groups(self) -> tuple[CoordinateGroup, ...]:
        return super().coordinate_groups() if self._groups is None else self._groups

    def value_and_grad(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._value_and_grad is not None:
            return self._value_and_grad(x, data)
        return super().value_and_grad(x, data)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "d": self._d, "max_step": self.default_max_step}
