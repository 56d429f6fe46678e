"""Reference optima f* of a comparison's objectives, so that figures can show f − f* on a log axis.

Why: on a linear axis the methods' mean-f curves merge after a few iterations (on
LogisticRegression they differ by 0.002–0.02 on a scale of 1.3); optimisation papers plot the
suboptimality f − f* on a log axis, which needs f* for every test objective.

How f* is obtained (recorded in results.json under ``"reference"``):

* **closed form** where the family gives its minimiser (``family.optimum(data)``, e.g.
  Quadratic): f* = f(x*);
* otherwise **numerically**: L-BFGS with a strong-Wolfe line search (``baselines.optimizers.LBFGS``,
  batched over the objectives, each row with its own line search) run through the package's one
  rollout loop. Convex families (:data:`CONVEX_FAMILIES`) start from each objective's own x(0)
  only; every other family — the non-convex built-ins and any user family, whose convexity
  nothing tells — also from ``starts − 1`` further points drawn from the family's own
  initial-point distribution. All starts run ``explore_iterations``; then only the best start
  of each objective is polished, in chunks of ``chunk`` iterations, each chunk on the rows that
  still improved by more than ``rtol·max(1, |f|)`` in the previous one, up to
  ``max_iterations`` in all. The cost is bounded by those numbers, not by a tolerance that a
  non-smooth objective (the ReLU net) might never meet; ``max_grad`` records, per objective,
  how far from stationary the reference point is.

A method may still end below a numerical reference (another basin, or a reference that stopped
early): the results document then takes f* = min(reference, best f any method reached) and
records on how many objectives that happened (:func:`optenv.lab.results.make_results`), so
f − f* is never negative and nothing is hidden.

Caching: the reference is stored in results.json with the settings and objectives it was
computed for (:func:`cache_key`); a later comparison writing to the same folder reuses it when
family, configuration, split, seeds, settings and every f(x0) agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from baselines.optimizers import LBFGS
from optenv.core import OptimizationCore
from optenv.distributed import World, all_gather_objects, shard, unshard
from optenv.families import LogisticRegression, ObjectiveFamily, Quadratic, index_problem
from optenv.rollout import rollout
from optenv.validation import check_int, check_number

__all__ = ["CONVEX_FAMILIES", "ReferenceSettings", "cache_key", "cached_reference",
           "reference_optimum"]

#: Families known to be convex: one start suffices (every local minimum is global).
CONVEX_FAMILIES: tuple[type[ObjectiveFamily], ...] = (Quadratic, LogisticRegression)
#: Episode index of the extra starting points (apart from the objectives' own x(0), episode 0).
_START_EPISODE = 1_000_000


@dataclass(frozen=True)
class ReferenceSettings:
    """How hard the numerical reference works (see the module docstring); the defaults keep its
    cost a small share of a default comparison (measured in docs/compare.md)."""

    starts: int = 4
    explore_iterations: int = 30
    max_iterations: int = 300
    chunk: int = 30
    rtol: float = 1e-13
    max_evals: int = 10  # per line search: a kinked (ReLU) objective would spend all of them

    def __post_init__(self) -> None:
        check_int("starts", self.starts, 1)
        check_int("explore_iterations", self.explore_iterations, 1)
        check_int("max_iterations", self.max_iterations, self.explore_iterations)
        check_int("chunk", self.chunk, 1)
        check_number("rtol", self.rtol, strict=False)
        check_int("max_evals", self.max_evals, 1)


def cache_key(family: ObjectiveFamily, *, n_test: int, seed: int, split: str,
              settings: ReferenceSettings) -> dict[str, Any]:
    """What a stored reference must match to be reused (plus every f(x0), checked apart)."""
    key = {"family": getattr(family, "name", type(family).__name__),
           "config": family.config(), "split": split, "seed": int(seed), "n_test": int(n_test),
           "settings": dataclasses.asdict(settings)}
    return json.loads(json.dumps(key))  # as it reads back from JSON (tuples → lists)


def cached_reference(previous: Any, key: Mapping[str, Any],
                     f_x0: np.ndarray) -> dict[str, Any] | None:
    """The reference stored in a previous results document if it was computed for ``key`` and
    the same objectives (every f(x0) equal to 1e-12 relative), else None. ``previous`` is
    whatever the old results.json held (anything that does not fit is simply not reused)."""
    ref = previous.get("reference") if isinstance(previous, Mapping) else None
    if not isinstance(ref, Mapping) or ref.get("key") != key:
        return None
    try:
        old_f0 = np.array(ref["f_x0"], dtype=np.float64)
        f_ref = np.array([math.nan if v is None else v for v in ref["f_reference"]],
                         dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if old_f0.shape != f_x0.shape or f_ref.shape != f_x0.shape or \
            not np.allclose(old_f0, f_x0, rtol=1e-12, atol=0.0):
        return None
    return {**ref, "cached": True, "wall_s": 0.0}


def reference_optimum(
    family: ObjectiveFamily,
    *,
    n_test: int,
    seed: int = 0,
    split: str = "test",
    device: str | torch.device = "cpu",
    settings: ReferenceSettings | None = None,
    previous: Any = None,
    world: World | None = None,
) -> dict[str, Any]:
    """The reference optimum of objectives ``seed .. seed + n_test − 1`` of ``split`` (the
    objectives ``optenv.evaluate`` runs on), as the results document's ``"reference"``:
    ``f_reference`` [N], ``f_x0`` [N], ``max_grad`` [N] (max |∇f| at the reference point),
    ``source`` ("closed form" or "numerical"), ``how`` (one sentence), ``starts``,
    ``convex``, ``iterations`` [N], ``key``, ``cached``, ``wall_s``.

    ``previous``: an earlier results document (or None) whose reference is reused when it
    matches (:func:`cached_reference`). ``world`` (:mod:`optenv.distributed`): the ranks share
    the numerical L-BFGS runs (rank r: objectives r, r + size, ...; each row's arithmetic is
    its own, so the numbers are one process's) and every rank returns the whole record."""
    settings = settings or ReferenceSettings()
    t0 = time.perf_counter()
    family = family.full_batch()  # a minibatch family is evaluated (and so referenced) on its
    # full loss
    seeds = torch.arange(seed, seed + n_test, dtype=torch.int64)
    data, x0 = family.sample(seeds, split=split, dtype=torch.float64, device=device)
    with torch.no_grad():
        f_x0 = family.value_and_grad(x0, data)[0].cpu().numpy()
    key = cache_key(family, n_test=n_test, seed=seed, split=split, settings=settings)
    hit = cached_reference(previous, key, f_x0)
    if hit is not None:
        return hit
    x_star = family.optimum(data)
    convex = isinstance(family, CONVEX_FAMILIES)
    if x_star is not None:
        iterations = np.zeros(n_test, dtype=np.int64)
        starts, source = 0, "closed form"
        how = "closed form: f(x*) with x* = family.optimum(data)"
    else:
        starts = 1 if convex else settings.starts
        x_star, iterations = _numerical_shared(family, data, x0, seeds, split, starts,
                                               settings, world or World())
        source = "numerical"
        how = (f"L-BFGS with strong-Wolfe line searches, at most {settings.max_iterations} "
               "iterations, from " + ("x(0) (convex family)" if starts == 1 else
                                      f"{starts} starts per objective, the best one polished"))
    with torch.no_grad():
        f_ref, grad = family.value_and_grad(x_star, data)
    return {
        "source": source, "how": how, "convex": convex, "starts": starts,
        "f_reference": f_ref.cpu().numpy(), "f_x0": f_x0,
        "max_grad": grad.abs().amax(-1).cpu().numpy(),
        "iterations": iterations, "key": key, "cached": False,
        "wall_s": time.perf_counter() - t0,
    }


def _lbfgs(family: ObjectiveFamily, data: Mapping[str, torch.Tensor], x: torch.Tensor,
           iterations: int, max_evals: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final x, final f) of a fresh L-BFGS run of ``iterations`` on every row, through the
    package's rollout loop (history 1: the optimiser reads no observation)."""
    res = rollout(OptimizationCore(family, 1), data, x, iterations,
                  LBFGS(max_evals=float(max_evals)))
    return res.x, res.f[:, -1]


def _numerical_shared(
    family: ObjectiveFamily, data: Mapping[str, torch.Tensor], x0: torch.Tensor,
    seeds: torch.Tensor, split: str, starts: int, s: ReferenceSettings, world: World,
) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`_numerical` on this rank's share of the objectives, the rows of every rank
    gathered back in order (on the host, then onto ``x0``'s device)."""
    if not world.distributed:
        return _numerical(family, data, x0, seeds, split, starts, s)
    rows = torch.tensor(shard(range(len(seeds)), world), dtype=torch.int64, device=x0.device)
    mine: tuple[np.ndarray, np.ndarray] = (np.zeros((0, x0.shape[1])), np.zeros(0, np.int64))
    if rows.numel():
        x, it = _numerical(family, index_problem(data, rows), x0[rows], seeds[rows.cpu()],
                           split, starts, s)
        mine = (x.cpu().numpy(), it)
    pieces = all_gather_objects(mine, world)
    x_all = np.stack(unshard([p[0] for p in pieces]))
    iterations = np.stack(unshard([p[1] for p in pieces]))
    return torch.as_tensor(x_all, dtype=x0.dtype, device=x0.device), iterations


def _numerical(
    family: ObjectiveFamily, data: Mapping[str, torch.Tensor], x0: torch.Tensor,
    seeds: torch.Tensor, split: str, starts: int, s: ReferenceSettings,
) -> tuple[torch.Tensor, np.ndarray]:
    """(reference points [N, d], iterations [N]): explore from ``starts`` points per objective,
    keep the best, polish the rows that still improve (module docstring)."""
    n = x0.shape[0]
    xs = [x0] + [family.sample(seeds, split=split, episodes=_START_EPISODE + j,
                               dtype=x0.dtype, device=x0.device)[1] for j in range(1, starts)]
    tiled = index_problem(data, torch.arange(n, device=x0.device).repeat(starts))
    x_all, f_all = _lbfgs(family, tiled, torch.cat(xs), s.explore_iterations,
                         s.max_evals)
    f_all = torch.nan_to_num(f_all, nan=math.inf).view(starts, n)
    best = f_all.argmin(0)
    ar = torch.arange(n, device=x0.device)
    x = x_all.view(starts, n, -1)[best, ar]
    f = f_all[best, ar]
    iterations = np.full(n, s.explore_iterations, dtype=np.int64)
    rows = ar[torch.isfinite(f)]
    done = s.explore_iterations
    while rows.numel() and done < s.max_iterations:
        steps = min(s.chunk, s.max_iterations - done)
        x_new, f_new = _lbfgs(family, index_problem(data, rows), x[rows], steps, s.max_evals)
        gain = f[rows] - f_new
        better = torch.isfinite(f_new) & (gain >= 0)  # L-BFGS only descends; guard anyway
        x[rows] = torch.where(better.unsqueeze(-1), x_new, x[rows])
        f[rows] = torch.where(better, f_new, f[rows])
        iterations[rows.cpu().numpy()] += steps
        rows = rows[better & (gain > s.rtol * f_new.abs().clamp_min(1.0))]
        done += steps
    return x, iterations
