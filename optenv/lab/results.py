"""Comparison results: a JSON document (schema below), written atomically; figures of it.

JSON schema ``"optenv-compare/1"`` (one object; non-finite numbers are written as ``null``,
since JSON has no inf/NaN; T = horizon, N = number of test objectives)::

    {
      "schema": "optenv-compare/1",
      "env_id": "optenv/LogisticRegression-v0",      # or the family's repr for a bare family
      "family": {"name": "LogisticRegression", "config": {"dim": 3, ...}},
      "horizon": 40, "history": 25, "max_step": 1.0,
      "split": "test", "n_test": 100, "seed": 0,      # test objectives: seeds seed .. seed+N-1
      "device": "cpu", "dtype": "float64",
      "optenv_version": "0.1.0", "torch_version": "2.x", "created": "2025-01-01T00:00:00Z",
      "tuning": {"split": "train", "n_train": 90, "criterion": "mean"} | null,
      "methods": {
        "<name>": {
          "kind": "direct" | "predict" | "callable",   # how it was run (see optenv.evaluate)
          "hyperparameters": {"lr": 0.5, ...} | null,   # the values used (tuned or given)
          "tuning": {...} | null,        # baselines.tuning.TuningResult.to_dict(): the grid,
                                         # every grid point's train score, the best point
          "mean_f": [T+1], "mean_f_low": [T+1], "mean_f_high": [T+1],   # 95% Student-t
          "n_finite": [T+1],             # objectives with finite f at each iteration
          "median_f": [T+1], "median_f_low": [T+1], "median_f_high": [T+1],
          "final_f": [N],                # f at iteration T of each test objective
          "margin_of_victory": [T+1] | null,   # Li & Malik's mean margin (>= 2 methods)
          "beats": {"<other>": 0.95, ...},     # share of iterations 1..T where the mean
                                               # margin over <other> is > 0 (optional key)
          "mean_f_by_evals": [T+1],            # mean f after b = 0..T f/∇f evaluations
          "beats_by_evals": {"<other>": 0.9},  # as "beats", at equal evaluation budgets
                                               # (both optional keys)
          "fraction_diverged": 0.0,      # final f > f(x0), or non-finite
          "fraction_nonfinite": 0.0,
          "extra_evals_mean": 0.0,       # line-search f/∇f evaluations beyond 1 per iteration
          "fraction_late_divergence": 0.0,   # f rises > 10% of its decrease after its
                                         # minimum (optional key: written by optenv study)
          "wall_s": 1.2,                 # seconds spent evaluating (tuning excluded)
          "label": "gps (gps-quick)",    # short label for figures (optional key)
          "path": "/home/me/runs/gps-quick" | null,  # a learned optimiser's run folder,
                                         # absolute (optional key)
          "suboptimality": {             # f − f* (optional key: with "reference")
            "mean": [T+1], "n_finite": [T+1],          # over the finite runs
            "median": [T+1], "median_low": [T+1], "median_high": [T+1],
            "mean_by_evals": [T+1], "median_by_evals": [T+1],   # after b = 0..T f/∇f
            "median_low_by_evals": [T+1], "median_high_by_evals": [T+1]   # evaluations
          } | null
        }, ...
      },
      "reference": {                     # f* per test objective (optional key)
        "f_star": [N],                   # min(f_reference, best f any method reached)
        "f_reference": [N], "f_x0": [N], "max_grad": [N], "iterations": [N],
        "source": "closed form" | "numerical", "how": "L-BFGS (...) ...",
        "convex": true, "starts": 1, "key": {...}, "cached": false, "wall_s": 0.4,
        "floor": 1e-12,                  # f − f* is clipped at floor·max(1, |f*|)
        "below_reference": {             # where a method reached lower f than f_reference
          "objectives": [...],           # by more than the floor (indices)
          "within_rounding": 0,          # objectives where by less (taken as f* all the same)
          "largest": 0.0, "by": {"<name>": 0}}   # largest difference; who reached lowest
      } | null
    }

``suboptimality`` and ``reference`` come from :mod:`optenv.lab.reference` (how f* is obtained);
:mod:`optenv.lab.figures` draws the figures from this document alone.

Why atomic writes: a comparison can take minutes and is often interrupted; a half-written JSON
or figure would look like a result. Each file goes to a temporary file in the target directory and
is renamed into place with ``os.replace`` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from optenv.checkpoint import atomic_write
from optenv.evaluate import Evaluation
from optenv.metrics import (
    f_at_evaluation_budget,
    margin_of_victory,
    mean_ci,
    median_ci,
    pairwise_win_fraction,
    suboptimality,
    summarize,
)

__all__ = [
    "SCHEMA",
    "atomic_write",
    "check_header",
    "jsonable",
    "make_results",
    "plot_results",
    "read_results",
    "validate_results",
    "write_json",
    "write_results",
]

SCHEMA = "optenv-compare/1"
_PER_ITER = ("mean_f", "mean_f_low", "mean_f_high", "n_finite", "median_f", "median_f_low",
             "median_f_high")
_METHOD_KEYS = (*_PER_ITER, "kind", "hyperparameters", "tuning", "final_f",
                "margin_of_victory", "fraction_diverged", "fraction_nonfinite",
                "extra_evals_mean", "wall_s")
_SUBOPT_KEYS = ("mean", "n_finite", "median", "median_low", "median_high", "mean_by_evals",
                "median_by_evals", "median_low_by_evals", "median_high_by_evals")
#: f − f* below FLOOR·max(1, |f*|) is drawn at that value (rounding noise in float64).
FLOOR = 1e-12
_TOP_KEYS = ("schema", "env_id", "family", "horizon", "history", "max_step", "split", "n_test",
             "seed", "device", "dtype", "optenv_version", "torch_version", "created", "tuning",
             "methods")


def jsonable(obj: Any) -> Any:
    """numpy/torch values → plain Python; non-finite floats → None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "detach"):  # torch tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def make_results(
    evaluations: Mapping[str, Evaluation],
    *,
    family: Any,
    seed: int,
    device: str = "cpu",
    dtype: str = "float64",
    tuning: Mapping[str, Mapping[str, Any] | None] | None = None,
    hyperparameters: Mapping[str, Mapping[str, float] | None] | None = None,
    wall_s: Mapping[str, float] | None = None,
    tuning_setup: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
    paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The results document (see the module docstring) for evaluations of the same objectives.

    ``reference``: the f* record of :func:`optenv.lab.reference.reference_optimum` for these
    objectives (None: no ``suboptimality``); f* becomes min(its ``f_reference``, the best f any
    method reached), recorded under ``below_reference``. ``paths``: method → the absolute run
    folder of a learned optimiser (its ``path`` field).
    """
    from optenv.lab.figures import short_labels

    if not evaluations:
        raise ValueError("evaluations: got none, allowed: at least one method's Evaluation")
    first = _check_same_objectives(list(evaluations.values()))
    methods = _method_entries(evaluations, tuning=tuning or {},
                              hyperparameters=hyperparameters or {}, wall_s=wall_s or {})
    labels = short_labels(list(evaluations))
    for name, entry in methods.items():
        entry["label"] = labels[name]
        entry["path"] = (paths or {}).get(name)
    ref = None
    if reference is not None:
        ref = _with_best_seen(reference, evaluations)
        for name, ev in evaluations.items():
            methods[name]["suboptimality"] = _suboptimality_entry(ev, ref["f_star"])
    return jsonable({**_header(first, family, seed=seed, device=device, dtype=dtype),
                     "tuning": dict(tuning_setup) if tuning_setup is not None else None,
                     "methods": methods, "reference": ref})


def _with_best_seen(
    reference: Mapping[str, Any], evaluations: Mapping[str, Evaluation]
) -> dict[str, Any]:
    """The reference with ``f_star`` = min(f_reference, best f any method reached) per objective
    and ``below_reference`` saying where a method went lower (another basin of a non-convex
    objective, or a numerical reference that stopped early): f − f* is then never negative,
    and that it happened is on record. ValueError if the reference is of other objectives."""
    f_ref = _arr(jsonable(reference["f_reference"]))
    f0_ref = _arr(jsonable(reference["f_x0"]))
    ev0 = next(iter(evaluations.values())).f[:, 0]
    both = np.isfinite(f0_ref) & np.isfinite(ev0) if f0_ref.shape == ev0.shape else None
    if both is None or not np.allclose(f0_ref[both], ev0[both], rtol=1e-9, atol=1e-12):
        raise ValueError("reference: got f(x0) values that are not the evaluations' (another "
                         "family, split, seed or number of objectives); allowed: the reference "
                         "of the evaluated objectives")
    names = list(evaluations)
    stack = np.stack([np.where(np.isfinite(ev.f), ev.f, np.inf) for ev in evaluations.values()])
    per_method = stack.min(axis=2)  # [M, N]
    best = per_method.min(axis=0)
    ref_or_inf = np.where(np.isnan(f_ref), np.inf, f_ref)
    below = best < ref_or_inf
    # beyond rounding: by more than the floor at which f − f* is drawn
    beyond = best < ref_or_inf - FLOOR * np.maximum(1.0, np.abs(best))
    idx = np.flatnonzero(beyond)
    by = {names[m]: int((per_method[m, idx] == best[idx]).sum()) for m in range(len(names))}
    return {**reference,
            "f_star": np.where(below, best, f_ref),
            "floor": FLOOR,
            "below_reference": {
                "objectives": idx.tolist(),
                "within_rounding": int((below & ~beyond).sum()),
                "largest": float(np.max(ref_or_inf[idx] - best[idx])) if idx.size else 0.0,
                "by": {k: v for k, v in by.items() if v}}}


def _suboptimality_entry(ev: Evaluation, f_star: np.ndarray) -> dict[str, Any]:
    """A method's ``suboptimality`` field: mean (over finite runs) and median (non-finite runs
    counted as the worst) of f − f* per iteration and per f/∇f evaluation budget."""
    out: dict[str, Any] = {}
    for suffix, curves in (("", ev.f), ("_by_evals", f_at_evaluation_budget(ev.f, ev.evals))):
        gap = suboptimality(curves, f_star, FLOOR)
        mean, _, _, n = mean_ci(gap)
        med, lo, hi = median_ci(gap)
        out.update({f"mean{suffix}": mean, f"median{suffix}": med,
                    f"median_low{suffix}": lo, f"median_high{suffix}": hi})
        if not suffix:
            out["n_finite"] = n
    return out


def _check_same_objectives(evs: list[Evaluation]) -> Evaluation:
    """The first evaluation, once every other ran on its objectives and horizon: margins and
    win fractions compare methods objective by objective, so anything else is meaningless."""
    first = evs[0]
    for ev in evs[1:]:
        if ev.f.shape != first.f.shape or not np.array_equal(ev.seeds, first.seeds):
            raise ValueError(f"evaluations: {ev.method!r} ran on other objectives or another "
                             "horizon; allowed: the same test objectives for every method")
    return first


def _method_entries(
    evaluations: Mapping[str, Evaluation],
    *,
    tuning: Mapping[str, Mapping[str, Any] | None],
    hyperparameters: Mapping[str, Mapping[str, float] | None],
    wall_s: Mapping[str, float],
) -> dict[str, dict[str, Any]]:
    """Each method's entry of ``"methods"``: its own summary statistics, plus the comparisons
    against the others (margin of victory, win fractions per iteration and per evaluation
    budget), which need every method at once."""
    curves = {k: v.f for k, v in evaluations.items()}
    has_steps = next(iter(curves.values())).shape[1] > 1
    mov = margin_of_victory(curves) if len(evaluations) > 1 else {}
    by_evals = {k: f_at_evaluation_budget(v.f, v.evals) for k, v in evaluations.items()}
    beats = pairwise_win_fraction(curves) if has_steps else {}
    beats_e = pairwise_win_fraction(by_evals) if has_steps else {}
    methods = {}
    for name, ev in evaluations.items():
        s = summarize(ev.f)
        methods[name] = {
            "kind": ev.info.get("kind"),
            "hyperparameters": hyperparameters.get(name),
            "tuning": tuning.get(name),
            "mean_f": s.mean, "mean_f_low": s.mean_low, "mean_f_high": s.mean_high,
            "n_finite": s.n_finite,
            "median_f": s.median, "median_f_low": s.median_low, "median_f_high": s.median_high,
            "final_f": s.final_f,
            "margin_of_victory": mov.get(name),
            "beats": beats.get(name, {}),
            "mean_f_by_evals": mean_ci(by_evals[name])[0],
            "beats_by_evals": beats_e.get(name, {}),
            "fraction_diverged": s.fraction_diverged,
            "fraction_nonfinite": s.fraction_nonfinite,
            "extra_evals_mean": float(np.mean(ev.extra_evals)),
            "wall_s": wall_s.get(name),
        }
    return methods


def _header(
    first: Evaluation, family: Any, *, seed: int, device: str, dtype: str
) -> dict[str, Any]:
    """The document's top-level fields up to ``"tuning"``: what was run, on what, with which
    versions — enough to rerun the comparison and to tell two result files apart."""
    import torch

    from optenv import __version__

    config = family.config() if hasattr(family, "config") else {}
    return {
        "schema": SCHEMA,
        "env_id": first.env,
        "family": {"name": getattr(family, "name", type(family).__name__), "config": config},
        "horizon": first.horizon,
        "history": first.info.get("history"),
        "max_step": first.info.get("max_step"),
        "observation": first.info.get("observation"),
        "features": first.info.get("features"),
        "split": first.split,
        "n_test": int(first.f.shape[0]),
        "seed": int(seed),
        "device": str(device),
        "dtype": str(dtype),
        "optenv_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def check_header(doc: Any, what: str, schema: str, keys: tuple[str, ...]) -> None:
    """ValueError unless ``doc`` is an object with every one of ``keys`` and ``schema`` as its
    schema; the messages name ``what`` (``results``, ``study``) and the field."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{what}: got {type(doc).__name__}, allowed: a JSON object")
    missing = [k for k in keys if k not in doc]
    if missing:
        raise ValueError(f"{what}: missing field(s) {missing}")
    if doc["schema"] != schema:
        raise ValueError(f"{what}.schema: got {doc['schema']!r}, allowed: {schema!r}")


def validate_results(doc: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first field that does not follow the schema."""
    check_header(doc, "results", SCHEMA, _TOP_KEYS)
    t, n = doc["horizon"], doc["n_test"]
    if not isinstance(doc["methods"], Mapping) or not doc["methods"]:
        raise ValueError("results.methods: allowed: a non-empty object of method → results")
    for name, m in doc["methods"].items():
        missing = [k for k in _METHOD_KEYS if k not in m]
        if missing:
            raise ValueError(f"results.methods[{name!r}]: missing field(s) {missing}")
        for k in _PER_ITER:
            if len(m[k]) != t + 1:
                raise ValueError(f"results.methods[{name!r}].{k}: got {len(m[k])} values, "
                                 f"allowed: horizon + 1 = {t + 1}")
        if len(m["final_f"]) != n:
            raise ValueError(f"results.methods[{name!r}].final_f: got {len(m['final_f'])} "
                             f"values, allowed: n_test = {n}")
        mov = m["margin_of_victory"]
        if mov is not None and len(mov) != t + 1:
            raise ValueError(f"results.methods[{name!r}].margin_of_victory: got {len(mov)} "
                             f"values, allowed: horizon + 1 = {t + 1}")
        sub = m.get("suboptimality")
        if sub is not None:
            for k in _SUBOPT_KEYS:
                if len(sub.get(k) or ()) != t + 1:
                    raise ValueError(f"results.methods[{name!r}].suboptimality.{k}: got "
                                     f"{len(sub.get(k) or ())} values, allowed: horizon + 1 "
                                     f"= {t + 1}")
    ref = doc.get("reference")
    if ref is not None and (not isinstance(ref, Mapping) or len(ref.get("f_star") or ()) != n):
        raise ValueError("results.reference: allowed: null or an object whose f_star has "
                         f"n_test = {n} values")


def write_results(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write the results JSON atomically (strict JSON: no NaN/Infinity)."""
    doc = jsonable(doc)
    validate_results(doc)
    return write_json(doc, path)


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``obj`` as strict JSON (:func:`jsonable`: non-finite numbers become null), indented,
    written atomically: the one writer of the comparison's and the study's JSON files."""
    text = json.dumps(jsonable(obj), indent=1, allow_nan=False)
    return atomic_write(path, lambda fh: fh.write(text + "\n"))


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a results JSON."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    validate_results(doc)
    return doc


def _arr(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_results(doc: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the comparison's figures (PNG and SVG) into ``out_dir``; returns the paths
    written. Kept for callers of the first version: :func:`optenv.lab.figures.write_figures`
    does the work."""
    from optenv.lab.figures import write_figures

    return write_figures(doc, out_dir)
