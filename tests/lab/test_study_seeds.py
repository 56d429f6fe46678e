"""``optenv study --seeds 2`` end to end on a tiny plan: every learned method meta-trained once
per seed, the spread over the seeds reported in study.json, the tables and the printed summary,
and the per-axis figures drawing every seed's curve and their mean (not seed 0 alone)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from study_helpers import ENV, tiny_plan

from optenv.lab import study
from optenv.lab.figures import LEARNED_COLOURS, method_styles
from optenv.lab.results import read_results
from optenv.lab.study_plan import Condition
from optenv.lab.study_report import (
    axis_figure,
    format_summary,
    seed_mean,
    summary_rows,
)
from optenv.lab.study_schema import read_study

SEEDS = 2


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A tiny study with two seeds on two axes (the training task at T and at 10T), without
    f* (not what this tests, and a third of the time), on one torch thread (the test machine's
    cores are shared): about 20 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plan = tiny_plan().replace(conditions=(Condition("same", "same", ENV, horizon_x=1),
                                           Condition("horizon-10x", "horizon", ENV)),
                              reference=False)
    out = tmp_path_factory.mktemp("study") / "s"
    try:
        study.run_study(plan, out, seeds=SEEDS, quiet=True, figures=False)
    finally:
        torch.set_num_threads(threads)
    yield out, read_study(out / "study.json")


def _seed_docs(out: Path, doc: dict[str, Any], condition: str) -> list[dict[str, Any]]:
    return [read_results(out / rel) for rel in doc["conditions"][condition]["results"]]


def test_each_learned_method_is_trained_per_seed_and_its_spread_is_reported(two_seeds) -> None:
    out, doc = two_seeds
    assert doc["seeds"] == SEEDS
    learned = [k for k, m in doc["methods"].items() if m["kind"] == "learned"]
    assert learned == ["gps", "bptt-lstm", "bptt-same"]
    for name in learned:
        runs = doc["methods"][name]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        ckpts = [(out / r["path"] / "checkpoint.pt").read_bytes() for r in runs]
        assert ckpts[0] != ckpts[1]  # two meta-trainings, not one run counted twice
    spread = 0
    for cname, c in doc["conditions"].items():
        seeds = _seed_docs(out, doc, cname)
        assert len(seeds) == SEEDS
        for name, m in c["methods"].items():
            for t, cell in m["mean_f_at"].items():
                vals = [s["methods"][name]["mean_f"][int(t)] for s in seeds]
                assert cell["mean"] == pytest.approx(np.mean(vals))
                assert (cell["seed_min"], cell["seed_max"]) == (min(vals), max(vals))
                assert cell["low"] == min(s["methods"][name]["mean_f_low"][int(t)]
                                          for s in seeds)
                if name in learned:
                    spread += cell["seed_max"] > cell["seed_min"]
                else:  # hand-designed: not meta-trained, the same in every seed's file
                    assert cell["seed_min"] == cell["seed_max"]
            assert len(m["first_upturn"]) == SEEDS
    assert spread > 0  # the seeds' meta-trainings give different optimisers
    # the summary tables and the printed summary give the seeds' range of every mean f
    rows = summary_rows(doc)
    by_name = {r[0]: r for r in rows[1:]}
    cell = doc["conditions"]["same"]["methods"]["gps"]["mean_f_at"]["4"]
    assert by_name["gps"][1].endswith(f"seeds {cell['seed_min']:.4g}..{cell['seed_max']:.4g}")
    assert "seeds" in format_summary(doc) and "2 seed(s)" in format_summary(doc)
    report = (out / "report.md").read_text()
    assert "--seeds 2" in report and by_name["bptt-same"][1] in report


def test_the_axis_figures_draw_every_seed_and_their_mean(two_seeds) -> None:
    out, doc = two_seeds
    assert (out / "axis-horizon.png").stat().st_size > 1000
    seeds = _seed_docs(out, doc, "horizon-10x")
    fig = axis_figure(doc, out, "horizon")
    ax = fig.axes[0]
    styles = method_styles({k: {"kind": "callable" if m["kind"] == "learned" else "direct"}
                            for k, m in doc["methods"].items()})
    for name in ("gps", "bptt-lstm", "bptt-same"):
        assert styles[name].color == LEARNED_COLOURS[name]
        lines = [ln for ln in ax.get_lines() if ln.get_color() == styles[name].color]
        labelled = [ln for ln in lines if not ln.get_label().startswith("_")]
        thin = [ln for ln in lines if ln.get_label().startswith("_")]
        curves = np.array([s["methods"][name]["mean_f"] for s in seeds], dtype=float)
        assert len(labelled) == 1 and len(thin) == SEEDS
        np.testing.assert_allclose(labelled[0].get_ydata(), curves.mean(axis=0))
        for ln, curve in zip(thin, curves, strict=True):
            np.testing.assert_array_equal(ln.get_ydata(), curve)
    # a hand-designed method is one line, seed 0's (the same in every file)
    gd = [ln for ln in ax.get_lines() if ln.get_color() == styles["gd"].color]
    assert len(gd) == 1
    np.testing.assert_array_equal(gd[0].get_ydata(),
                                  np.array(seeds[0]["methods"]["gd"]["mean_f"], dtype=float))
    assert "mean of 2 seeds" in " ".join(fig.texts[0].get_text().split())


def test_the_seed_mean_leaves_non_finite_seeds_out_and_spans_their_intervals() -> None:
    def results(mean_f: list[float | None], n_finite: list[int]) -> dict[str, Any]:
        m = {"mean_f": mean_f, "n_finite": n_finite,
             "mean_f_low": [None if v is None else v - 1 for v in mean_f],
             "mean_f_high": [None if v is None else v + 1 for v in mean_f],
             "margin_of_victory": [0.0, 1.0, 2.0]}
        return {"n_test": 4, "methods": {"gps": m, "gd": {**m, "mean_f": [9.0, 9.0, 9.0]}}}

    merged = seed_mean([results([4.0, 2.0, None], [4, 4, 0]),
                        results([4.0, 3.0, 1.0], [4, 3, 3])], learned=["gps"])
    gps = merged["methods"]["gps"]
    assert gps["mean_f"][:2] == [4.0, 2.5] and gps["mean_f"][2] == 1.0
    assert gps["mean_f_low"] == [3.0, 1.0, 0.0] and gps["mean_f_high"] == [5.0, 4.0, 2.0]
    assert gps["n_finite"] == [4, 3, 0]
    assert merged["methods"]["gd"]["mean_f"] == [9.0, 9.0, 9.0]
