"""Grid search of an optimiser's hyper-parameters on the TRAIN split: the harness.

Li & Malik (2016) compare their learned optimiser to hand-designed ones whose hyper-parameters
were tuned by grid search on the training objectives, and initialise GPS from the best momentum
method found that way; this is the harness both use (``baselines.tuning`` names the
hand-designed methods, ``gps`` tunes its momentum initialisation). It never looks at the TEST
objectives that evaluation uses (the splits are disjoint streams, see :mod:`optenv.rng`).

Why one batch per grid: a batchable optimiser takes per-row tensor hyper-parameters, so a grid of
G points over N training objectives runs as one batch of G·N rows (chunked to ``max_rows``) — T
iterations of a few tensor ops instead of G Python-level runs.

Score of a grid point (``criterion``): ``"mean"`` — the mean over objectives of the mean of f over
iterations 1..T (the papers' cost, the area under the objective curve, per iteration) — or
``"final"`` — the mean final f. A grid point on which any training run goes non-finite ranks
below every point without one (fewest non-finite runs first, then the score over the finite
runs), so the tuned method is one that does not blow up on the training objectives.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from optenv.core import OptimizationCore
from optenv.distributed import World, all_gather_objects, shard, unshard
from optenv.families import ObjectiveFamily
from optenv.rollout import DirectOptimizer, rollout
from optenv.validation import check_choice, check_int, parse_dtype

__all__ = ["CRITERIA", "TuningResult", "search_grid"]

#: Most state entries one grid rollout holds (its chunk of grid points is cut to fit): 2**26,
#: 512 MiB of float64 state, 90 objectives of a d = 2842 net at 17 grid points per rollout.
ROW_ELEMENTS = 2**26
#: A grid point's hyper-parameters: numbers, or [rows] tensors for a batch of grid points.
Hyper = dict[str, Any]

CRITERIA = ("mean", "final")


@dataclass
class TuningResult:
    """The outcome of :func:`search_grid`; ``to_dict()`` is what results JSON stores."""

    method: str
    best: dict[str, float]
    score: float
    criterion: str
    grid: dict[str, list[float]]
    table: list[dict[str, Any]]
    n_train: int
    seed: int
    horizon: int
    split: str = "train"
    fixed: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite scores become None)."""
        out = asdict(self)
        out["score"] = _finite_or_none(self.score)
        out["table"] = [{**row, "score": _finite_or_none(row["score"])} for row in self.table]
        return out


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _scores(f: torch.Tensor, criterion: str) -> tuple[np.ndarray, np.ndarray]:
    """Per grid point: (score over the finite runs, number of non-finite runs); f [G, N, T+1]."""
    per_run = f[..., 1:].mean(-1) if criterion == "mean" else f[..., -1]
    finite = torch.isfinite(per_run)
    n_bad = (~finite).sum(-1)
    total = torch.where(finite, per_run, torch.zeros_like(per_run)).sum(-1)
    score = total / finite.sum(-1).clamp_min(1)
    score = torch.where(finite.any(-1), score, torch.full_like(score, math.inf))
    return score.cpu().numpy(), n_bad.cpu().numpy()


def search_grid(
    make: Callable[[Hyper], DirectOptimizer],
    grid: Mapping[str, Sequence[float]],
    family: ObjectiveFamily,
    *,
    method: str,
    defaults: Mapping[str, float],
    fixed: Mapping[str, float] | None = None,
    batchable: bool = True,
    n_train: int = 90,
    horizon: int = 40,
    seed: int = 0,
    history: int = 25,
    criterion: str = "mean",
    dtype: str | torch.dtype = "float64",
    device: str | torch.device = "cpu",
    max_rows: int = 8192,
    world: World | None = None,
) -> TuningResult:
    """Score every point of ``grid`` on training objectives ``seed .. seed + n_train − 1``.

    ``make(hyper)`` builds the optimiser for a grid point — or, when ``batchable``, for a chunk of
    grid points at once, each hyper-parameter then a tensor with one entry per row (the points
    repeated over the ``n_train`` objectives; at most ``max_rows`` rows, fewer where the state
    is large, see :data:`ROW_ELEMENTS`). ``history`` is checked but does not change the
    scores (the optimisers read x, f, ∇f). ``defaults`` and ``fixed`` complete the best
    point's hyper-parameters in the result; ``method`` names it. Returns the best point, its
    score and the whole table of scores.

    ``world`` (:mod:`optenv.distributed`): the ranks share the grid points (rank r scores
    points r, r + size, ...) and every rank gets the whole table; a point's score is the same
    number whichever rank and chunk scored it (each row's arithmetic is its own), so the
    result is the one-process result. Every rank must call it with the same arguments.
    """
    check_choice("criterion", criterion, CRITERIA)
    check_int("n_train", n_train, 1)
    check_int("horizon", horizon, 1)
    check_int("max_rows", max_rows, 1)
    grid = {k: [float(v) for v in vals] for k, vals in grid.items()}
    fixed = {k: float(v) for k, v in (fixed or {}).items()}
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    dt = parse_dtype(dtype)
    seeds = torch.arange(seed, seed + n_train, dtype=torch.int64)
    data, x0 = family.sample(seeds, split="train", dtype=dt, device=device)
    # The optimisers read x, f and ∇f only, never the histories: the core keeps one step of
    # them (the scores are the same for any ``history``; a row costs 4d + 1 numbers, not
    # (2 + 2H)·d + H), and a rollout holds at most ROW_ELEMENTS state entries.
    check_int("history", history, 1)
    core = OptimizationCore(family, 1)
    rows = min(max_rows, max(n_train, ROW_ELEMENTS // core.layout.state_dim))
    per_chunk = max(1, rows // n_train) if batchable else 1
    world = world or World()
    mine = _score_points(make, shard(points, world), core, data, x0, horizon=horizon,
                         dtype=dt, criterion=criterion, per_chunk=per_chunk,
                         batchable=batchable)
    pieces = all_gather_objects(mine, world)
    scores = unshard([p[0] for p in pieces])
    n_bad = unshard([p[1] for p in pieces])

    order = sorted(range(len(points)), key=lambda i: (n_bad[i], scores[i]))
    best = order[0]
    table = [{"hyperparameters": points[i], "score": scores[i], "n_nonfinite": n_bad[i]}
             for i in range(len(points))]
    best_hyper = {**{k: float(v) for k, v in defaults.items()}, **fixed, **points[best]}
    return TuningResult(method=method, best=best_hyper, score=scores[best], criterion=criterion,
                        grid=grid, table=table, n_train=n_train, seed=seed, horizon=horizon,
                        fixed=fixed)


def _score_points(
    make: Callable[[Hyper], DirectOptimizer],
    points: list[dict[str, float]],
    core: OptimizationCore,
    data: Mapping[str, torch.Tensor],
    x0: torch.Tensor,
    *,
    horizon: int,
    dtype: torch.dtype,
    criterion: str,
    per_chunk: int,
    batchable: bool,
) -> tuple[list[float], list[int]]:
    """(score, non-finite runs) of every grid point, ``per_chunk`` points per rollout."""
    scores: list[float] = []
    n_bad: list[int] = []
    n_train = x0.shape[0]
    for start in range(0, len(points), per_chunk):
        chunk = points[start:start + per_chunk]
        hyper, d_rep, x_rep = _chunk_batch(chunk, data, x0, dtype=dtype, batchable=batchable)
        opt = make(hyper)
        opt.reset()
        res = rollout(core, d_rep, x_rep, horizon, opt)
        s, b = _scores(res.f.reshape(len(chunk), n_train, -1), criterion)
        scores.extend(float(v) for v in s)
        n_bad.extend(int(v) for v in b)
    return scores, n_bad


def _chunk_batch(
    chunk: list[dict[str, float]],
    data: Mapping[str, torch.Tensor],
    x0: torch.Tensor,
    *,
    dtype: torch.dtype,
    batchable: bool,
) -> tuple[Hyper, Mapping[str, torch.Tensor], torch.Tensor]:
    """(hyper-parameters, problem data, starting points) for one chunk of grid points.

    A batchable chunk of G > 1 points becomes one batch of G·N rows — the N training objectives
    repeated G times, each hyper-parameter a [G·N] tensor of ``dtype`` (point-major) — so one
    rollout scores the whole chunk; a single point runs on the N objectives with plain float
    hyper-parameters.
    """
    g = len(chunk)
    if not (batchable and g > 1):
        return dict(chunk[0]), data, x0
    n_train = x0.shape[0]
    hyper: Hyper = {
        k: torch.tensor([p[k] for p in chunk], dtype=dtype,
                        device=x0.device).repeat_interleave(n_train)
        for k in chunk[0]}
    d_rep = {k: v.repeat(g, *([1] * (v.dim() - 1))) for k, v in data.items()}
    return hyper, d_rep, x0.repeat(g, 1)
