"""Grid search of a hand-designed optimiser's hyper-parameters on the TRAIN split.

Li & Malik (2016) compare their learned optimiser to hand-designed ones whose hyper-parameters
were tuned by grid search on the training objectives; we do the same, never looking at the TEST
objectives that evaluation uses (the splits are disjoint streams, see :mod:`optenv.rng`).

Why one batch per grid: hyper-parameters of the first-order rules may be per-row tensors, so a
grid of G points over N training objectives runs as one batch of G·N rows (chunked to
``max_rows``) — 40 iterations of a few tensor ops instead of G Python-level runs.

Score of a grid point (``criterion``): ``"mean"`` — the mean over objectives of the mean of f over
iterations 1..T (the papers' cost, the area under the objective curve, per iteration) — or
``"final"`` — the mean final f. A grid point on which any training run goes non-finite ranks
below every point without one (fewest non-finite runs first, then the score over the finite
runs), so the tuned method is one that does not blow up on the training objectives.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from baselines.optimizers import OPTIMIZERS, HandOptimizer, run_optimizer
from optenv.families import ObjectiveFamily
from optenv.validation import check_int, parse_dtype

__all__ = ["CRITERIA", "TuningResult", "grid_search"]

CRITERIA = ("mean", "final")


@dataclass
class TuningResult:
    """The outcome of :func:`grid_search`; ``to_dict()`` is what results JSON stores."""

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


def grid_search(
    method: str,
    family: ObjectiveFamily,
    *,
    grid: Mapping[str, Sequence[float]] | None = None,
    fixed: Mapping[str, float] | None = None,
    n_train: int = 90,
    horizon: int = 40,
    seed: int = 0,
    history: int = 25,
    criterion: str = "mean",
    dtype: str | torch.dtype = "float64",
    device: str | torch.device = "cpu",
    max_rows: int = 8192,
) -> TuningResult:
    """Tune ``method`` on training objectives ``seed .. seed + n_train − 1`` (split "train").

    ``grid`` maps hyper-parameter → candidate values (default: the method's ``default_grid``;
    Li & Malik used 90 training objectives, the default ``n_train``); ``fixed`` sets others.
    A method without a grid (CG, L-BFGS: their line searches choose the step) is scored at
    its defaults. Returns the best point, its score and the whole table of scores.
    """
    if method not in OPTIMIZERS:
        raise ValueError(f"method: got {method!r}, allowed: {', '.join(OPTIMIZERS)}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: got {criterion!r}, allowed: {', '.join(CRITERIA)}")
    check_int("n_train", n_train, 1)
    check_int("horizon", horizon, 1)
    check_int("max_rows", max_rows, 1)
    cls: type[HandOptimizer] = OPTIMIZERS[method]
    grid = {k: [float(v) for v in vals] for k, vals in
            (cls.default_grid if grid is None else grid).items()}
    fixed = {k: float(v) for k, v in (fixed or {}).items()}
    for key, vals in grid.items():
        if key not in cls.defaults:
            raise ValueError(f"grid: unknown hyper-parameter {key!r} for {method}, allowed: "
                             f"{sorted(cls.defaults)}")
        if not vals:
            raise ValueError(f"grid[{key!r}]: got no values, allowed: a non-empty list")
        for v in vals:
            cls(**{key: v})  # checks each value's range before any work
    keys = list(grid)
    points = [dict(zip(keys, combo, strict=True)) for combo in
              itertools.product(*(grid[k] for k in keys))]
    dt = parse_dtype(dtype)
    seeds = torch.arange(seed, seed + n_train, dtype=torch.int64)
    data, x0 = family.sample(seeds, split="train", dtype=dt, device=device)

    scores: list[float] = []
    n_bad: list[int] = []
    per_chunk = max(1, max_rows // n_train) if cls.batchable else 1
    for start in range(0, len(points), per_chunk):
        chunk = points[start:start + per_chunk]
        g = len(chunk)
        if cls.batchable and g > 1:
            hyper: dict[str, Any] = {
                k: torch.tensor([p[k] for p in chunk], dtype=dt,
                                device=x0.device).repeat_interleave(n_train)
                for k in keys}
            d_rep = {k: v.repeat(g, *([1] * (v.dim() - 1))) for k, v in data.items()}
            x_rep = x0.repeat(g, 1)
        else:
            hyper = dict(chunk[0])
            d_rep, x_rep = data, x0
        opt = cls(**{**fixed, **hyper})
        res = run_optimizer(opt, family, d_rep, x_rep, horizon, history=history)
        s, b = _scores(res.f.reshape(g, n_train, -1), criterion)
        scores.extend(float(v) for v in s)
        n_bad.extend(int(v) for v in b)

    order = sorted(range(len(points)), key=lambda i: (n_bad[i], scores[i]))
    best = order[0]
    table = [{"hyperparameters": points[i], "score": scores[i], "n_nonfinite": n_bad[i]}
             for i in range(len(points))]
    best_hyper = {**{k: float(v) for k, v in cls.defaults.items()}, **fixed, **points[best]}
    return TuningResult(method=method, best=best_hyper, score=scores[best], criterion=criterion,
                        grid=grid, table=table, n_train=n_train, seed=seed, horizon=horizon,
                        fixed=fixed)
