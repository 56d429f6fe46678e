"""Rollout primitives: run a batch of objectives through the core with any step rule.

The one loop that every evaluation shares: :func:`rollout` steps B problem instances through an
:class:`~optenv.core.OptimizationCore` for T iterations with either a hand-designed optimiser (a
:class:`DirectOptimizer`: ``propose(x, f, g, oracle)``) or a step function on the full state, and
counts f/∇f evaluations per row, so line-search methods can be compared at equal evaluation
budgets. It sits below its users — :mod:`optenv.evaluate` (held-out evaluation),
:mod:`optenv.tuning` (grid searches) and ``baselines.optimizers`` (the hand-designed
optimisers) — so none of them imports another for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from optenv.core import OptimizationCore

__all__ = ["DirectOptimizer", "Oracle", "Rollout", "StepFn", "rollout"]

Oracle = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
StepFn = Callable[[torch.Tensor, torch.Tensor, Oracle], torch.Tensor]


@runtime_checkable
class DirectOptimizer(Protocol):
    """A hand-designed optimiser run directly on a batch (see ``baselines.optimizers``)."""

    def reset(self) -> None: ...

    def propose(
        self, x: torch.Tensor, f: torch.Tensor, g: torch.Tensor, oracle: Oracle | None = None
    ) -> torch.Tensor: ...


@dataclass
class Rollout:
    """A batch of runs: ``f`` [B, T+1] (f(x0) first; +inf from divergence on), ``nonfinite`` [B],
    final iterate ``x`` [B, d], ``evals`` [B, T+1] (f/∇f evaluations made by the end of each
    iteration, f(x0)'s not counted: t plus the line searches' extra ones), and ``f_full``
    [B, T+1] like ``f`` for a family whose f is a minibatch estimate (its
    ``full_objective``, the full training loss; None otherwise)."""

    f: torch.Tensor
    nonfinite: torch.Tensor
    x: torch.Tensor
    evals: torch.Tensor
    f_full: torch.Tensor | None = None

    @property
    def extra_evals(self) -> torch.Tensor:
        """[B] f/∇f evaluations beyond one per iteration (the line searches')."""
        return self.evals[:, -1] - (self.evals.shape[1] - 1)


def rollout(
    core: OptimizationCore,
    data: Mapping[str, torch.Tensor],
    x0: torch.Tensor,
    horizon: int,
    step: DirectOptimizer | StepFn,
    *,
    progress: bool = False,
    desc: str | None = None,
) -> Rollout:
    """Run ``horizon`` iterations of a batch through ``core``.

    ``step`` is a :class:`DirectOptimizer` (its ``propose`` gets x, f, ∇f from the state) or a
    function ``(state [B, dX], f [B], oracle) -> Δx [B, d]``. ``oracle(x, active)`` evaluates
    f and ∇f on the batch and counts one evaluation per ``active`` row; an iteration that makes
    k ≥ 1 oracle calls for a row costs k − 1 extra evaluations (the core's own evaluation at the
    accepted point is one the line search already made), one with none costs nothing extra.
    """
    family = core.family
    lay = core.layout.state_slices
    b = x0.shape[0]
    counts = torch.zeros(b, dtype=torch.int64, device=x0.device)

    def oracle(x: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal counts
        counts = counts + active.to(torch.int64)
        return family.value_and_grad(x, data)

    if isinstance(step, DirectOptimizer):
        opt = step

        def step_fn(state: torch.Tensor, f: torch.Tensor, orc: Oracle) -> torch.Tensor:
            return opt.propose(state[:, lay["CUR_LOC"]], f, state[:, lay["CUR_GRAD"]], orc)
    else:
        step_fn = step

    def full(state: torch.Tensor, alive: torch.Tensor) -> torch.Tensor | None:
        value = family.full_objective(state[:, lay["CUR_LOC"]], data)
        return None if value is None else torch.where(alive, value, inf)

    with torch.no_grad():
        start = core.start(data, x0)
        state, f = start.state, start.f
        alive = ~start.diverged
        inf = torch.full_like(f, math.inf)
        fs = [torch.where(alive, f, inf)]
        fulls = [full(state, alive)]
        used = [torch.zeros_like(counts)]  # cumulative evaluations after each iteration
        iterator: Any = range(horizon)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=desc, leave=False)
        for _ in iterator:
            before = counts
            delta = step_fn(state, f, oracle)
            used.append(used[-1] + (counts - before).clamp_min(1))
            delta = torch.where(alive.unsqueeze(-1), delta.to(state.dtype),
                                torch.zeros_like(delta, dtype=state.dtype))
            res = core.step(data, state, f, delta)
            alive = alive & ~res.diverged
            state, f = res.state, res.f
            fs.append(torch.where(alive, f, inf))
            fulls.append(full(state, alive))
    return Rollout(torch.stack(fs, dim=1), ~alive, state[:, lay["CUR_LOC"]],
                   torch.stack(used, dim=1),
                   None if fulls[0] is None else torch.stack(fulls, dim=1))
