"""``optenv.lab.figures``: the comparison's figures, on hand-made curves with known answers —
f − f* clipped at the floor, non-finite runs left out of the means and counted in the legend,
fixed labels and styles — and every written figure opening as an image of the expected size."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from optenv.evaluate import Evaluation
from optenv.families import Quadratic
from optenv.lab import figures
from optenv.lab.results import FLOOR, make_results, read_results, write_results

N, T = 3, 4


def _ev(name: str, f: list[list[float]], evals: list[list[int]] | None = None) -> Evaluation:
    a = np.array(f, dtype=np.float64)
    return Evaluation(method=name, f=a, nonfinite=~np.isfinite(a[:, -1]),
                      extra_evals=np.zeros(N, dtype=np.int64) if evals is None else
                      np.array(evals)[:, -1] - T, seeds=np.arange(N), horizon=T,
                      split="test", env="optenv/Quadratic-v0",
                      info={"kind": "callable" if ":" in name else "direct"},
                      evals=None if evals is None else np.array(evals))


def _reference(f_reference: list[float]) -> dict:
    return {"source": "numerical", "how": "hand-made", "convex": False, "starts": 4,
            "f_reference": np.array(f_reference), "f_x0": np.full(N, 8.0),
            "max_grad": np.zeros(N), "iterations": np.zeros(N, dtype=int), "key": {},
            "cached": False, "wall_s": 0.0}


def _doc() -> dict:
    """gd reaches f* = 1 on objective 0 at iteration 3; the learned one diverges on objective 2;
    lbfgs spends 2 evaluations per iteration and reaches f = 0.5 < f_reference = 1 on
    objective 1 (so f* there is 0.5)."""
    inf = math.inf
    evs = {
        "gd": _ev("gd", [[8, 4, 2, 1, 1], [8, 6, 5, 4, 3], [8, 7, 6, 5, 4]]),
        "gps:/home/me/runs/gps-quick": _ev(
            "gps:/home/me/runs/gps-quick",
            [[8, 2, 1.5, 1.25, 1.125], [8, 3, 2, 1.5, 1.25], [8, 9, inf, inf, inf]]),
        "lbfgs": _ev("lbfgs", [[8, 2, 1, 1, 1], [8, 1, 0.5, 0.5, 0.5], [8, 4, 2, 1, 1]],
                     evals=[[0, 2, 4, 6, 8]] * N),
    }
    return make_results(evs, family=Quadratic(dim=2), seed=0,
                        reference=_reference([1.0, 1.0, 1.0]),
                        paths={"gps:/home/me/runs/gps-quick": "/home/me/runs/gps-quick"})


def test_f_star_is_the_reference_or_lower_f_a_method_reached_and_that_is_recorded():
    ref = _doc()["reference"]
    assert ref["f_star"] == [1.0, 0.5, 1.0]
    assert ref["below_reference"] == {"objectives": [1], "within_rounding": 0, "largest": 0.5,
                                      "by": {"lbfgs": 1}}


def test_suboptimality_on_hand_made_curves_has_the_known_values():
    doc = _doc()
    gd = doc["methods"]["gd"]["suboptimality"]
    # gaps per objective at t = 3: 0 (clipped at the floor), 3.5, 4
    assert gd["mean"][3] == pytest.approx((FLOOR + 3.5 + 4.0) / 3)
    assert gd["median"][3] == pytest.approx(3.5)
    assert gd["median"][4] == pytest.approx(2.5)
    lb = doc["methods"]["lbfgs"]["suboptimality"]
    assert lb["mean"][2] == pytest.approx((FLOOR + FLOOR + 1.0) / 3)  # at f*, at f*, 1 above
    assert lb["mean"][4] == pytest.approx(FLOOR)  # at f* everywhere: the floor, never 0
    # two evaluations per iteration: at budget b it shows iteration b // 2
    assert lb["mean_by_evals"][4] == pytest.approx(lb["mean"][2])
    assert lb["mean_by_evals"][1] == pytest.approx(lb["mean"][0])
    gps = doc["methods"]["gps:/home/me/runs/gps-quick"]["suboptimality"]
    assert gps["n_finite"] == [3, 3, 2, 2, 2]  # the diverged run is left out of the mean
    assert gps["mean"][2] == pytest.approx((0.5 + 1.5) / 2)
    assert gps["median_high"][2] is None  # the worst value (+inf) bounds the median


def test_labels_are_short_and_the_full_path_is_in_the_results():
    doc = _doc()
    m = doc["methods"]["gps:/home/me/runs/gps-quick"]
    assert m["label"] == "gps (gps-quick)" and m["path"] == "/home/me/runs/gps-quick"
    assert doc["methods"]["gd"]["label"] == "gd" and doc["methods"]["gd"]["path"] is None
    assert figures.short_labels(["gd", "gps:a/gps-quick", "gps:b/gps-quick/", "bptt:b/x"]) == {
        "gd": "gd", "gps:a/gps-quick": "gps (a/gps-quick)",
        "gps:b/gps-quick/": "gps (b/gps-quick)", "bptt:b/x": "bptt (x)"}
    # nothing tells two spellings of one folder apart: the whole keys
    assert figures.short_labels(["gps:runs/x", "gps:./runs/x"]) == {
        "gps:runs/x": "gps:runs/x", "gps:./runs/x": "gps:./runs/x"}


def test_styles_are_fixed_per_method_whatever_else_is_compared():
    one = figures.method_styles({"gd": None, "gps:runs/a": None})
    other = figures.method_styles({"lbfgs": None, "adam": None, "gps:runs/a": None, "gd": None})
    assert one["gps:runs/a"] == other["gps:runs/a"] and one["gd"] == other["gd"]
    assert one["gd"] == figures.Style(figures.HAND_COLOURS["gd"], "--")
    assert one["gps:runs/a"].linestyle == "-" and one["gps:runs/a"].marker is not None
    assert one["gps:runs/a"].color == figures.LEARNED_COLOURS["gps"]
    many = figures.method_styles({f"gps:runs/r{i}": None for i in range(8)})
    assert len({s.marker for s in many.values()}) == 8  # runs of one kind stay apart
    custom = figures.method_styles({"mine": {"kind": "callable"}, "rule": {"kind": "direct"}})
    assert custom["mine"].linestyle == "-" and custom["rule"].linestyle == "--"


def _lines(ax) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in ax.lines}


def test_suboptimality_figure_draws_the_gaps_on_a_log_axis_and_counts_non_finite_runs():
    doc = _doc()
    fig = figures.suboptimality_figure(doc)
    ax_mean, ax_median = fig.axes
    assert ax_mean.get_yscale() == ax_median.get_yscale() == "log"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["gd", "gps (gps-quick) [1/3 non-finite]", "lbfgs"]
    lines = _lines(ax_mean)
    np.testing.assert_allclose(lines["gd"], doc["methods"]["gd"]["suboptimality"]["mean"])
    assert lines["lbfgs"][-1] == pytest.approx(FLOOR)
    by_evals = figures.suboptimality_figure(doc, by="evals")
    assert by_evals.axes[0].get_xlabel() == "f/∇f evaluations"
    with pytest.raises(ValueError, match="by: got 'time'"):
        figures.suboptimality_figure(doc, by="time")


def test_margin_figure_marks_zero_and_zooms_on_the_late_iterations():
    doc = _doc()
    fig = figures.margin_figure(doc)
    ax_all, ax_late = fig.axes
    assert ax_all.get_yscale() == "symlog" and ax_late.get_yscale() == "linear"
    for ax in (ax_all, ax_late):
        assert any(np.allclose(line.get_ydata(), 0.0) and line.get_color() == "black"
                   for line in ax.lines)
    late = [np.asarray(line.get_xdata()) for line in ax_late.lines if line.get_label() != "_"]
    assert late[0][0] == T // 2
    lo, hi = ax_late.get_ylim()
    values = [0.0, *(v for m in doc["methods"].values()
                     for v in m["margin_of_victory"][T // 2:] if v is not None)]
    assert lo < min(values) and hi > max(values)
    assert hi - lo < 1.5 * (max(values) - min(values))  # fits the late margins


def test_every_written_figure_opens_as_an_image_of_the_expected_size(tmp_path):
    doc = _doc()
    write_results(doc, tmp_path / "results.json")
    paths = figures.write_figures(read_results(tmp_path / "results.json"), tmp_path)
    stems = ["suboptimality", "suboptimality_by_evals", "mean_f", "margin_of_victory"]
    assert [p.name for p in paths] == [f"{s}.{x}" for s in stems for x in ("png", "svg")]
    panels = {"suboptimality": 2, "suboptimality_by_evals": 2, "mean_f": 1,
              "margin_of_victory": 2}
    for path in paths:
        w, h = figures.figure_size(panels[path.stem])
        if path.suffix == ".png":
            with Image.open(path) as im:
                assert im.format == "PNG"
                assert im.size == (round(w * figures.DPI), round(h * figures.DPI))
        else:
            root = ET.parse(path).getroot()
            assert root.tag.endswith("svg")
            assert float(root.get("width").removesuffix("pt")) == pytest.approx(w * 72)
            assert float(root.get("height").removesuffix("pt")) == pytest.approx(h * 72)


def test_without_a_reference_or_a_second_method_those_figures_are_left_out(tmp_path):
    evs = {"gd": _ev("gd", [[8, 4, 2, 1, 1]] * N)}
    doc = make_results(evs, family=Quadratic(dim=2), seed=0)
    assert doc["reference"] is None and "suboptimality" not in doc["methods"]["gd"]
    assert list(figures.figures(doc)) == ["mean_f"]
    with pytest.raises(ValueError, match="formats: got"):
        figures.write_figures(doc, tmp_path, formats=("pdf",))
    assert list(tmp_path.iterdir()) == []


def test_a_reference_of_other_objectives_is_refused():
    evs = {"gd": _ev("gd", [[8, 4, 2, 1, 1]] * N)}
    ref = {**_reference([1.0] * N), "f_x0": np.full(N, 7.0)}
    with pytest.raises(ValueError, match="reference: got f\\(x0\\) values"):
        make_results(evs, family=Quadratic(dim=2), seed=0, reference=ref)
