"""Grid search of a hand-designed optimiser's hyper-parameters on the TRAIN split, by name.

The methods are :data:`baselines.optimizers.OPTIMIZERS`; the harness (batched grid points,
scores, ranking, :class:`~optenv.tuning.TuningResult`) is :func:`optenv.tuning.search_grid`, which
GPS's momentum initialisation uses too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from baselines.optimizers import OPTIMIZERS, HandOptimizer
from optenv.distributed import World
from optenv.families import ObjectiveFamily
from optenv.tuning import CRITERIA, TuningResult, search_grid
from optenv.validation import check_choice

__all__ = ["CRITERIA", "TuningResult", "grid_search"]


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
    world: World | None = None,
) -> TuningResult:
    """Tune ``method`` on training objectives ``seed .. seed + n_train − 1`` (split "train").

    ``grid`` maps hyper-parameter → candidate values (default: the method's ``default_grid``;
    Li & Malik used 90 training objectives, the default ``n_train``); ``fixed`` sets others.
    A method without a grid (CG, L-BFGS: their line searches choose the step) is scored at
    its defaults. Returns the best point, its score and the whole table of scores.
    ``world``: share the grid points across the ranks of a process group
    (:func:`optenv.tuning.search_grid`).
    """
    check_choice("method", method, OPTIMIZERS)
    check_choice("criterion", criterion, CRITERIA)
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
    return search_grid(lambda hyper: cls(**{**fixed, **hyper}), grid, family, method=method,
                       defaults=cls.defaults, fixed=fixed, batchable=cls.batchable,
                       n_train=n_train, horizon=horizon, seed=seed, history=history,
                       criterion=criterion, dtype=dtype, device=device, max_rows=max_rows,
                       world=world)
