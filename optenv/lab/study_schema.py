"""``study.json``: the study's evidence in one versioned document, built from its results files.

Schema ``"optenv-study/1"`` (one object; non-finite numbers are ``null``; T = the training
horizon; S = the number of meta-training seeds; paths are relative to the study folder)::

    {
      "schema": "optenv-study/1",
      "setting": "2016", "quick": true, "seeds": 1, "device": "cpu",
      "optenv_version": "0.1.0", "torch_version": "2.x", "created": "2026-12-02T10:00:00Z",
      "train": {"env_id": "optenv/LogisticRegression-v0", "horizon": 40},
      "plan": {...},                    # optenv.lab.study_plan.StudyPlan.to_dict()
      "checkpoints": [1, 2, 5, 10],     # multiples of T at which the tables read mean f
      "methods": {
        "<name>": {
          "kind": "learned" | "hand",
          "description": "...",
          "runs": [{"seed": 0, "path": "train/gps-s0", "wall_s": 300.0}] | null,  # learned
          "hyperparameters": {"lr": 0.5, ...} | null,   # hand: tuned on the meta-train
          "tuning_score": 0.21 | null                   # objectives at T, used everywhere
        }, ...
      },
      "tuning": {"env_id": "...", "horizon": 40, "n_train": 90, "criterion": "mean",
                 "split": "train", "wall_s": 12.0},
      "axes": {"<axis>": {"description": "...", "conditions": ["<condition>", ...]}, ...},
      "not_applicable": {"<axis>": "why the setting has no such condition"},
      "conditions": {
        "<condition>": {
          "axis": "horizon", "env_id": "...", "env_kwargs": {"dim": 20},
          "horizon": 400, "n_test": 100, "wall_s": 30.0,
          "results": ["conditions/<condition>/seed0/results.json", ...],   # S files, in the
                                          # optenv-compare/1 format (optenv.lab.results)
          "methods": {
            "<name>": {
              "mean_f_at": {"<iteration>": STAT_CI, ...},   # the checkpoints within horizon
              "fraction_diverged": STAT,          # final f > f(x0), or non-finite
              "fraction_late_divergence": STAT,   # f rises > 10% of (f(x0) − min f) after
                                                  # its minimum (optenv.metrics)
              "first_upturn": [int | null] * S,   # first iteration the mean curve turns up
              "beats": {"<other>": STAT},         # share of iterations 1..horizon ahead
              "beats_by_evals": {"<other>": STAT} # the same at equal f/∇f evaluation budgets
            }, ...
          }
        }, ...
      },
      "wall_s": {"train": 0.0, "tune": 0.0, "evaluate": 0.0}
    }

    STAT    = {"mean": x, "seed_min": x, "seed_max": x}   # over the S seeds' results files
    STAT_CI = STAT + {"low": x, "high": x}   # the lowest / highest end of the seeds' 95%
                                             # Student-t intervals of mean f

With one seed, mean = seed_min = seed_max and low/high are that run's interval. A hand-designed
method is the same in every seed's file (it is not meta-trained): its spread is zero, its wins
against a learned method are per seed. ``--seeds N`` repeats meta-training so that a difference
between methods can be told from run-to-run variation (seed_min..seed_max).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optenv.lab.results import check_header, jsonable, write_json
from optenv.metrics import first_upturn

__all__ = ["SCHEMA", "condition_entry", "make_study", "read_study", "validate_study",
           "write_study"]

SCHEMA = "optenv-study/1"
_TOP_KEYS = ("schema", "setting", "quick", "seeds", "device", "optenv_version", "torch_version",
             "created", "train", "plan", "checkpoints", "methods", "tuning", "axes",
             "not_applicable", "conditions", "wall_s")
_CONDITION_KEYS = ("axis", "env_id", "env_kwargs", "horizon", "n_test", "results", "methods")
_METHOD_KEYS = ("mean_f_at", "fraction_diverged", "fraction_late_divergence", "first_upturn",
                "beats", "beats_by_evals")
_STAT_KEYS = ("mean", "seed_min", "seed_max")


def _stat(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and range over the seeds (None entries, non-finite values, left out)."""
    a = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return {"mean": None, "seed_min": None, "seed_max": None}
    return {"mean": float(a.mean()), "seed_min": float(a.min()), "seed_max": float(a.max())}


def _value(values: Sequence[Any], i: int) -> float | None:
    v = values[i] if i < len(values) else None
    return None if v is None else float(v)


def condition_entry(docs: Sequence[Mapping[str, Any]], horizon: int,
                    checkpoints: Sequence[int]) -> dict[str, Any]:
    """A condition's ``methods`` (module docstring) from its S seeds' results documents, each
    of which carries, per method, the optional ``fraction_late_divergence`` the study adds."""
    names = list(docs[0]["methods"])
    at = [c * horizon for c in checkpoints if c * horizon <= docs[0]["horizon"]]
    out: dict[str, Any] = {}
    for name in names:
        ms = [d["methods"][name] for d in docs]
        mean_f_at = {}
        for t in at:
            lows = [v for m in ms if (v := _value(m["mean_f_low"], t)) is not None]
            highs = [v for m in ms if (v := _value(m["mean_f_high"], t)) is not None]
            mean_f_at[str(t)] = {**_stat([_value(m["mean_f"], t) for m in ms]),
                                 "low": min(lows) if lows else None,
                                 "high": max(highs) if highs else None}
        others = [k for k in names if k != name]
        out[name] = {
            "mean_f_at": mean_f_at,
            "fraction_diverged": _stat([m["fraction_diverged"] for m in ms]),
            "fraction_late_divergence": _stat([m.get("fraction_late_divergence")
                                               for m in ms]),
            "first_upturn": [first_upturn(np.array([np.nan if v is None else v
                                                    for v in m["mean_f"]], dtype=np.float64))
                             for m in ms],
            "beats": {o: _stat([m["beats"].get(o) for m in ms]) for o in others
                      if any(o in m["beats"] for m in ms)},
            "beats_by_evals": {o: _stat([m["beats_by_evals"].get(o) for m in ms])
                               for o in others if any(o in m["beats_by_evals"] for m in ms)},
        }
    return out


def make_study(*, plan: Mapping[str, Any], seeds: int, device: str,
               methods: Mapping[str, Any], tuning: Mapping[str, Any],
               axes: Mapping[str, Any], not_applicable: Mapping[str, str],
               conditions: Mapping[str, Any], checkpoints: Sequence[int],
               wall_s: Mapping[str, float]) -> dict[str, Any]:
    """The study document (module docstring) from its parts; validated."""
    import torch

    from optenv import __version__

    doc = jsonable({
        "schema": SCHEMA, "setting": plan["setting"], "quick": plan["quick"],
        "seeds": seeds, "device": device, "optenv_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train": {"env_id": plan["train_env"], "horizon": plan["horizon"]},
        "plan": plan, "checkpoints": list(checkpoints), "methods": methods, "tuning": tuning,
        "axes": axes, "not_applicable": dict(not_applicable), "conditions": conditions,
        "wall_s": wall_s})
    validate_study(doc)
    return doc


def _check_stat(where: str, stat: Any, ci: bool = False) -> None:
    keys = _STAT_KEYS + (("low", "high") if ci else ())
    if not isinstance(stat, Mapping) or any(k not in stat for k in keys):
        raise ValueError(f"study.{where}: allowed: an object with {', '.join(keys)}")
    for k in keys:
        if stat[k] is not None and not isinstance(stat[k], int | float):
            raise ValueError(f"study.{where}.{k}: got {stat[k]!r}, allowed: a number or null")


def validate_study(doc: Any) -> None:
    """Raise ValueError naming the first field that does not follow the schema."""
    check_header(doc, "study", SCHEMA, _TOP_KEYS)
    seeds = doc["seeds"]
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"study.seeds: got {seeds!r}, allowed: an int >= 1")
    for name, m in doc["methods"].items():
        if m.get("kind") not in ("learned", "hand"):
            raise ValueError(f"study.methods[{name!r}].kind: got {m.get('kind')!r}, allowed: "
                             "'learned', 'hand'")
        runs = m.get("runs")
        if m["kind"] == "learned" and (not isinstance(runs, list) or len(runs) != seeds):
            raise ValueError(f"study.methods[{name!r}].runs: allowed: one run per seed "
                             f"({seeds})")
    for axis, a in doc["axes"].items():
        unknown = [c for c in a.get("conditions", []) if c not in doc["conditions"]]
        if unknown:
            raise ValueError(f"study.axes[{axis!r}].conditions: got unknown {unknown}")
    for cname, c in doc["conditions"].items():
        missing = [k for k in _CONDITION_KEYS if k not in c]
        if missing:
            raise ValueError(f"study.conditions[{cname!r}]: missing field(s) {missing}")
        if len(c["results"]) != seeds:
            raise ValueError(f"study.conditions[{cname!r}].results: got {len(c['results'])} "
                             f"files, allowed: one per seed ({seeds})")
        if set(c["methods"]) != set(doc["methods"]):
            raise ValueError(f"study.conditions[{cname!r}].methods: got {sorted(c['methods'])}, "
                             f"allowed: the study's methods {sorted(doc['methods'])}")
        for mname, m in c["methods"].items():
            where = f"conditions[{cname!r}].methods[{mname!r}]"
            missing = [k for k in _METHOD_KEYS if k not in m]
            if missing:
                raise ValueError(f"study.{where}: missing field(s) {missing}")
            for t, stat in m["mean_f_at"].items():
                if not t.isdigit() or int(t) > c["horizon"]:
                    raise ValueError(f"study.{where}.mean_f_at: got iteration {t!r}, allowed: "
                                     f"0..{c['horizon']}")
                _check_stat(f"{where}.mean_f_at[{t}]", stat, ci=True)
            _check_stat(f"{where}.fraction_diverged", m["fraction_diverged"])
            _check_stat(f"{where}.fraction_late_divergence", m["fraction_late_divergence"])
            if len(m["first_upturn"]) != seeds:
                raise ValueError(f"study.{where}.first_upturn: got {len(m['first_upturn'])} "
                                 f"values, allowed: one per seed ({seeds})")
            for key in ("beats", "beats_by_evals"):
                for other, stat in m[key].items():
                    _check_stat(f"{where}.{key}[{other!r}]", stat)


def write_study(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write ``study.json`` atomically (strict JSON)."""
    doc = jsonable(doc)
    validate_study(doc)
    return write_json(doc, path)


def read_study(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a ``study.json``; ValueError naming the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"--out: {str(path)!r} is not a readable study.json ({err})") from err
    validate_study(doc)
    return doc
