"""Summaries of evaluation curves: Li & Malik's mean margin of victory and plain statistics.

Inputs are per-objective, per-iteration objective values ``f`` [N, T+1] (column 0 at x(0)) as
:func:`optenv.evaluate.evaluate` returns them; non-finite entries mark diverged runs.

Conventions for non-finite values (a run that blew up has no meaningful f afterwards):

* means, their intervals and margins of victory are taken over the finite entries of each
  iteration, and ``n_finite`` says how many there were — the fraction diverged is reported
  next to them, so a method cannot hide divergence;
* medians treat non-finite entries as +inf (the worst value), which order statistics handle.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "Summary",
    "f_at_evaluation_budget",
    "first_upturn",
    "fraction_diverged",
    "fraction_late_divergence",
    "margin_of_victory",
    "margin_of_victory_per_objective",
    "mean_ci",
    "median_ci",
    "pairwise_win_fraction",
    "suboptimality",
    "summarize",
]


def _same_shape_curves(curves: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each method's curves as float arrays; ValueError unless all have one shape."""
    arrs = {k: _as_curves(v) for k, v in curves.items()}
    shape = next(iter(arrs.values())).shape if arrs else None
    for k, a in arrs.items():
        if a.shape != shape:
            raise ValueError(f"curves[{k!r}]: got shape {a.shape}, allowed: {shape} (the same "
                             "objectives and horizon for every method)")
    return arrs


def _as_curves(f: np.ndarray) -> np.ndarray:
    a = np.asarray(f, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"f: got shape {a.shape}, allowed: [n_objectives >= 1, iterations >= 1]")
    return a


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """Mean over axis 0 of the finite entries with a Student-t interval: (mean, low, high, n).

    One finite value gives a zero-width interval; none gives NaN.
    """
    a = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(a)
    n = finite.sum(0)
    z = np.where(finite, a, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = z.sum(0) / n
        dev = np.where(finite, a - mean, 0.0)
        var = (dev * dev).sum(0) / np.maximum(n - 1, 1)
        half = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * np.sqrt(var / n)
    half = np.where(n > 1, half, 0.0)
    mean = np.where(n > 0, mean, np.nan)
    return mean, mean - half, mean + half, n


def median_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """Median over axis 0 with a distribution-free interval from order statistics.

    Why order statistics: objective values are skewed (a few hard instances), so a normal
    interval around the median would be wrong; the ranks j < k with
    P(j ≤ Binomial(n, ½) < k) ≥ ``confidence`` bound the median without assumptions. Non-finite
    entries count as +inf. Returns (median, low, high); with too few values for the requested
    confidence the bounds are the sample minimum and maximum.
    """
    a = np.asarray(values, dtype=np.float64)
    a = np.where(np.isnan(a), np.inf, a)
    s = np.sort(a, axis=0)
    n = s.shape[0]
    median = np.median(s, axis=0)
    cdf = stats.binom.cdf(np.arange(n + 1), n, 0.5)
    j = int((cdf <= (1 - confidence) / 2).sum())  # 1-based rank of the lower bound
    lo_rank, hi_rank = (0, n - 1) if j == 0 else (j - 1, n - j)
    return median, s[lo_rank], s[hi_rank]


def fraction_diverged(f: np.ndarray) -> float:
    """Share of runs that end non-finite or above where they started (final f > f(x0))."""
    a = _as_curves(f)
    return float(np.mean(~(a[:, -1] <= a[:, 0]) | ~np.isfinite(a[:, -1])))


def fraction_late_divergence(f: np.ndarray, rise: float = 0.1) -> float:
    """Share of runs that climb back after their best point: f rises, after the iteration of
    its minimum, by more than ``rise`` × (f(x0) − min f) — or turns non-finite after it.

    Why beside :func:`fraction_diverged`: the supervised learned optimisers Li & Malik (2017)
    study first descend well and then drift up late; a run that ends below f(x0) but far above
    its own minimum is not "diverged" yet is exactly that failure. A run whose minimum is f(x0)
    (no progress) does not count, nor one that is non-finite from the start."""
    if not (isinstance(rise, int | float) and math.isfinite(rise) and rise >= 0):
        raise ValueError(f"rise: got {rise!r}, allowed: a finite number >= 0")
    a = _as_curves(f)
    finite = np.isfinite(a)
    best = np.where(finite, a, np.inf).min(axis=1)
    at = np.where(finite, a, np.inf).argmin(axis=1)
    t = a.shape[1]
    after = np.arange(t)[None, :] > at[:, None]
    drop = a[:, 0] - best
    worse = np.where(after & finite, a - best[:, None], -np.inf).max(axis=1)
    blew_up = (after & ~finite).any(axis=1)
    late = (worse > rise * drop) | blew_up
    counts = np.isfinite(a[:, 0]) & np.isfinite(best) & (drop > 0)
    return float(np.mean(late & counts))


def first_upturn(curve: np.ndarray, tolerance: float = 0.01) -> int | None:
    """The first iteration at which a (mean) curve turns upward: curve[t] exceeds the lowest
    value before it by more than ``tolerance`` × the decrease achieved so far, or is
    non-finite; None if it never does. ``tolerance`` keeps rounding-level wiggles of a
    converged curve from counting."""
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: got {tolerance!r}, allowed: a finite number >= 0")
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] < 1:
        raise ValueError(f"curve: got shape {c.shape}, allowed: [iterations >= 1]")
    if not np.isfinite(c[0]):
        return None
    low = c[0]
    for t in range(1, c.shape[0]):
        if not np.isfinite(c[t]) or c[t] > low + tolerance * (c[0] - low):
            return t
        low = min(low, c[t])
    return None


def margin_of_victory_per_objective(
    curves: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Per method, per objective and iteration: min over the OTHER methods of f minus its own f.

    Positive = the method beats every other one on that objective at that iteration (Li &
    Malik's margin of victory). NaN where the method's f is non-finite or no other method has a
    finite f there. Needs at least two methods with curves of the same shape.
    """
    names = list(curves)
    if len(names) < 2:
        raise ValueError(f"curves: got {len(names)} method(s), allowed: at least 2 "
                         "(the margin of victory compares each method with the others)")
    arrs = list(_same_shape_curves(curves).values())
    stack = np.stack([np.where(np.isfinite(a), a, np.nan) for a in arrs])  # [M, N, T+1]
    out = {}
    for i, name in enumerate(names):
        others = np.delete(stack, i, axis=0)
        with warnings.catch_warnings():  # all-NaN slices are expected (everyone diverged)
            warnings.simplefilter("ignore", RuntimeWarning)
            best_other = np.nanmin(others, axis=0)
        out[name] = best_other - stack[i]
    return out


def margin_of_victory(curves: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean margin of victory per iteration [T+1] for each method (mean over objectives of the
    finite per-objective margins; see :func:`margin_of_victory_per_objective`)."""
    return {k: mean_ci(v)[0] for k, v in margin_of_victory_per_objective(curves).items()}


def f_at_evaluation_budget(f: np.ndarray, evals: np.ndarray | None) -> np.ndarray:
    """Curves re-indexed by f/∇f evaluations: ``out[:, b]`` is f after the last iteration whose
    cumulative evaluation count is <= b (b = 0..T; column 0 is f(x0)).

    A method with one evaluation per iteration is unchanged; a line-search method that spent 3
    evaluations per iteration shows at budget b its f after b // 3 iterations — the comparison
    at equal cost that per-iteration curves hide. ``evals`` [N, T+1] as
    :class:`optenv.evaluate.Evaluation` records them (None = one per iteration).
    """
    a = _as_curves(f)
    if evals is None:
        return a.copy()
    e = np.asarray(evals)
    if e.shape != a.shape:
        raise ValueError(f"evals: got shape {e.shape}, allowed: f's shape {a.shape}")
    budgets = np.arange(a.shape[1])
    # last iteration t with evals[t] <= b (evals is non-decreasing, evals[:, 0] = 0)
    idx = (e[:, :, None] <= budgets).sum(1) - 1
    return np.take_along_axis(a, idx, axis=1)


def pairwise_win_fraction(curves: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``out[a][b]``: the share of iterations 1..T at which a's mean margin over b is positive.

    The margin at an iteration is the mean over objectives of f_b − f_a, taken over the
    objectives where both are finite (an iteration where no objective qualifies counts as a
    loss). This is the per-opponent form of Li & Malik's figure ("the learned optimiser's mean
    margin of victory is positive at 90% of iterations against GD"); :func:`margin_of_victory`
    is the against-all form. Needs curves of one shape with at least one iteration after x(0).
    """
    arrs = {k: a[:, 1:] for k, a in _same_shape_curves(curves).items()}
    if arrs and next(iter(arrs.values())).shape[1] < 1:
        raise ValueError("curves: got 1 iteration, allowed: at least 2 (x(0) and one step)")
    names = list(arrs)
    out: dict[str, dict[str, float]] = {k: {} for k in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:  # b's margin over a is minus a's over b
            both = np.isfinite(arrs[a]) & np.isfinite(arrs[b])
            with warnings.catch_warnings():  # an iteration with no shared finite objective
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.where(both, arrs[b] - arrs[a], np.nan), axis=0)
            out[a][b] = float(np.mean(mean > 0))  # NaN compares False: a loss for both
            out[b][a] = float(np.mean(mean < 0))
    return out


@dataclass
class Summary:
    """Per-iteration statistics of one method's curves ``f`` [N, T+1] (arrays of length T+1),
    plus final-iterate figures."""

    mean: np.ndarray
    mean_low: np.ndarray
    mean_high: np.ndarray
    n_finite: np.ndarray
    median: np.ndarray
    median_low: np.ndarray
    median_high: np.ndarray
    final_f: np.ndarray  # [N], f at the last iteration of each objective
    final_mean: float
    final_median: float
    fraction_diverged: float
    fraction_nonfinite: float


def summarize(f: np.ndarray, confidence: float = 0.95) -> Summary:
    """Mean (Student-t interval) and median (order-statistic interval) of f at each iteration,
    the final f of each objective, and the fractions diverged / non-finite."""
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ValueError(f"confidence: got {confidence!r}, allowed: a float in (0, 1)")
    a = _as_curves(f)
    mean, lo, hi, n = mean_ci(a, confidence)
    med, mlo, mhi = median_ci(a, confidence)
    final = a[:, -1]
    return Summary(
        mean=mean, mean_low=lo, mean_high=hi, n_finite=n,
        median=med, median_low=mlo, median_high=mhi,
        final_f=final,
        final_mean=float(mean[-1]) if n[-1] > 0 else math.nan,
        final_median=float(med[-1]),
        fraction_diverged=fraction_diverged(a),
        fraction_nonfinite=float(np.mean(~np.isfinite(final))),
    )


def suboptimality(f: np.ndarray, f_star: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """f − f* per objective and iteration [N, T+1], clipped below at ``floor``·max(1, |f*|);
    NaN where f (or f*) is non-finite.

    Why the floor: a run that reaches f* (f − f* = 0, or a rounding-level negative value) has
    no logarithm; below ``floor`` relative to f*'s scale, float64 differences are rounding
    noise, so such values are shown at the floor rather than dropped. Non-finite runs become
    NaN, which :func:`mean_ci` leaves out (and :func:`median_ci` counts as the worst value).
    """
    a = _as_curves(f)
    fs = np.asarray(f_star, dtype=np.float64).reshape(-1)
    if fs.shape[0] != a.shape[0]:
        raise ValueError(f"f_star: got {fs.shape[0]} values, allowed: one per objective "
                         f"({a.shape[0]})")
    if not (isinstance(floor, float | int) and math.isfinite(floor) and floor > 0):
        raise ValueError(f"floor: got {floor!r}, allowed: a finite number > 0")
    low = floor * np.maximum(1.0, np.abs(fs))[:, None]
    with np.errstate(invalid="ignore"):
        gap = np.maximum(a - fs[:, None], low)
    return np.where(np.isfinite(a) & np.isfinite(fs)[:, None], gap, np.nan)
