"""The study's tables, figures and ``report.md``, generated from ``study.json`` alone (plus the
results files it names, for the curves), so that the numbers and the text cannot drift apart;
``optenv study --report-only`` regenerates them.

Figures (PNG and SVG, drawn with :mod:`optenv.lab.figures`' styles and labels):

* ``axis-<axis>``: one panel per condition of the axis — mean f per iteration with its 95%
  interval, on a log axis where the curves span more than a decade. With several seeds a
  learned method's line is the mean over the seeds, its band runs from the lowest to the
  highest end of the seeds' 95% intervals (the table cells' ``[low, high]``), and each seed's
  own curve is a thin line of the same colour: the band alone would mix the spread over test
  objectives with the spread over seeds, and one line per seed alone would hide the mean the
  tables report; together they show whether two methods differ by more than their seeds do;
* ``divergence``: the fraction of runs diverged (final f > f(x0), or non-finite) and of runs
  that diverge late (f rises by more than 10% of its decrease after its minimum), per method
  and condition, averaged over the seeds;
* ``margin_of_victory``: Li & Malik's margin of victory on the longest-horizon condition of the
  training family (:func:`optenv.lab.figures.margin_figure`), averaged over the seeds;
* each condition's compare figures in ``conditions/<condition>/seed0/``.

Cells: a mean f is ``mean [low, high]`` (the 95% interval); with several seeds the range of the
seeds' means follows (``seeds a..b``); a fraction is a percentage, with the seeds' range in
parentheses when there are several.

Markdown pages (``optenv study --report-only --out DIR --doc PAGE``, :func:`update_doc`): a page
holds generated blocks between marker lines, each tagged with the study's setting and preset —
the full tables (``<!-- optenv study 2016 --quick: begin -->``, docs/results.md) and the short
summary (``<!-- optenv study 2016 --quick summary: begin -->``, the README) — and hand-written
text around them, which is never touched. :func:`render_doc` is the pure function behind it, so
a test checks that a page's blocks are what the study.json they came from generates.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from optenv.checkpoint import atomic_write
from optenv.lab.compare import fixed_width

__all__ = ["BLOCKS", "condition_rows", "divergence_figure", "divergence_rows", "doc_block",
           "doc_markers", "final_rows", "format_summary", "markdown_table", "render_doc",
           "seed_mean", "short_summary_rows", "summary_rows", "update_doc", "wins_rows",
           "write_report"]


# ---------------------------------------------------------------------- cells
def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _mean_cell(stat: Mapping[str, Any] | None, seeds: int) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = f"{_num(stat['mean'])} [{_num(stat['low'])}, {_num(stat['high'])}]"
    if seeds > 1:
        text += f" seeds {_num(stat['seed_min'])}..{_num(stat['seed_max'])}"
    return text


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _upturn_cell(values: list[int | None]) -> str:
    return ", ".join("none" if v is None else str(v) for v in values)


def _training_condition(doc: Mapping[str, Any], axis: str) -> str | None:
    names = (doc["axes"].get(axis) or {}).get("conditions") or []
    return names[0] if names else None


# ---------------------------------------------------------------------- tables
def summary_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """The summary table: per method, mean f at T on the training task, mean f at T..10T on the
    horizon axis with the divergence figures there, and the worst divergence elsewhere."""
    seeds, t = doc["seeds"], doc["train"]["horizon"]
    same = _training_condition(doc, "same")
    long = _training_condition(doc, "horizon")
    at = [str(c * t) for c in doc["checkpoints"]]
    long_at = [k for k in at if long and k in
               next(iter(doc["conditions"][long]["methods"].values()))["mean_f_at"]]
    head = ["method", f"same: f@{t}"] + [f"{long}: f@{k}" for k in long_at]
    if long:
        head += [f"{long}: diverged", "late", "upturn"]
    head += ["most diverged elsewhere"]
    rows = [head]
    for name in doc["methods"]:
        row = [name]
        row.append(_mean_cell(doc["conditions"][same]["methods"][name]["mean_f_at"].get(str(t)),
                              seeds) if same else "n/a")
        if long:
            m = doc["conditions"][long]["methods"][name]
            row += [_mean_cell(m["mean_f_at"].get(k), seeds) for k in long_at]
            row += [_short_cell(m["fraction_diverged"], seeds, pct=True),
                    _short_cell(m["fraction_late_divergence"], seeds, pct=True),
                    _upturn_cell(m["first_upturn"])]
        row.append(_most_diverged(doc, name, (same, long)))
        rows.append(row)
    return rows


def _short_cell(stat: Mapping[str, Any] | None, seeds: int, pct: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    fmt = _pct if pct else _num
    text = fmt(stat["mean"])
    if seeds > 1:
        text += f" ({fmt(stat['seed_min'])}..{fmt(stat['seed_max'])})"
    return text


def short_summary_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """The README's short table: the learned methods and the best tuned hand-designed one
    (lowest mean f at the horizon axis's last iteration, else at T; plan order on ties), each
    with mean f at T and at that last iteration, the share diverged there and the most diverged
    elsewhere; means only (the intervals are in the full tables), with the seeds' range when
    there are several."""
    seeds, t = doc["seeds"], doc["train"]["horizon"]
    same = _training_condition(doc, "same")
    long = _training_condition(doc, "horizon")
    long_t = doc["conditions"][long]["horizon"] if long else None
    names = [k for k, m in doc["methods"].items() if m["kind"] == "learned"]
    hand = [k for k, m in doc["methods"].items() if m["kind"] == "hand"]
    judge = long or same
    if judge is not None and hand:
        ms = doc["conditions"][judge]["methods"]
        at = str(long_t if long else t)
        score = {k: (ms[k]["mean_f_at"].get(at) or {}).get("mean") for k in hand}
        names.append(min(hand, key=lambda k: (score[k] is None, score[k] or 0.0,
                                              hand.index(k))))
    head = ["method", f"f@T={t}"]
    if long:
        head += [f"f@{long_t // t}T={long_t}", f"diverged at {long_t}"]
    head += ["most diverged elsewhere"]
    rows = [head]
    for name in names:
        label = name if doc["methods"][name]["kind"] == "learned" else f"{name} (tuned)"
        row = [label, _short_cell(doc["conditions"][same]["methods"][name]["mean_f_at"]
                                  .get(str(t)), seeds) if same else "n/a"]
        if long:
            m = doc["conditions"][long]["methods"][name]
            row += [_short_cell(m["mean_f_at"].get(str(long_t)), seeds),
                    _short_cell(m["fraction_diverged"], seeds, pct=True)]
        row.append(_most_diverged(doc, name, (same, long)))
        rows.append(row)
    return rows


def _most_diverged(doc: Mapping[str, Any], name: str, skip: tuple[str | None, ...]) -> str:
    """The condition outside ``skip`` where ``name`` diverged most often (mean over the seeds),
    as ``4% (quadratic)``, the first such condition in the plan's order on ties; ``0%`` when
    it diverged nowhere there, n/a when there is no other condition."""
    others = [(c["methods"][name]["fraction_diverged"]["mean"] or 0.0, -i, cname)
              for i, (cname, c) in enumerate(doc["conditions"].items()) if cname not in skip]
    if not others:
        return "n/a"
    frac, _i, cname = max(others)
    return f"{_pct(frac)} ({cname})" if frac > 0 else _pct(0.0)


def condition_rows(doc: Mapping[str, Any], condition: str) -> list[list[str]]:
    """Per method: mean f at the checkpoints within the condition's horizon, the fractions
    diverged and diverged late, and the first upturn of the mean curve (per seed)."""
    seeds, c = doc["seeds"], doc["conditions"][condition]
    at = list(next(iter(c["methods"].values()))["mean_f_at"])
    rows = [["method", *[f"f@{k}" for k in at], "diverged", "late", "upturn"]]
    for name, m in c["methods"].items():
        rows.append([name, *[_mean_cell(m["mean_f_at"][k], seeds) for k in at],
                     _short_cell(m["fraction_diverged"], seeds, pct=True),
                     _short_cell(m["fraction_late_divergence"], seeds, pct=True),
                     _upturn_cell(m["first_upturn"])])
    return rows


def wins_rows(doc: Mapping[str, Any], condition: str) -> list[list[str]]:
    """Each learned method against every other method: the share of iterations at which its
    mean margin is positive, and the same at equal f/∇f evaluation budgets (``it / evals``)."""
    c = doc["conditions"][condition]
    learned = [k for k, m in doc["methods"].items() if m["kind"] == "learned"]
    names = list(c["methods"])
    rows = [["ahead of → (iterations / evals)", *names]]
    for a in learned:
        m = c["methods"][a]
        cells = []
        for b in names:
            if a == b or b not in m["beats"]:
                cells.append("-")
                continue
            cells.append(f"{_pct(m['beats'][b]['mean'])} / "
                         f"{_pct((m['beats_by_evals'].get(b) or {}).get('mean'))}")
        rows.append([a, *cells])
    return rows


def final_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """Per condition (rows) and method (columns): mean f at the condition's last iteration,
    averaged over the seeds."""
    names = list(doc["methods"])
    rows = [["condition (horizon)", *names]]
    for cname, c in doc["conditions"].items():
        last = str(c["horizon"])
        rows.append([f"{cname} ({last})",
                     *[_num((c["methods"][m]["mean_f_at"].get(last) or {}).get("mean"))
                       for m in names]])
    return rows


def divergence_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """Per method (rows) and condition (columns): ``diverged / late`` fractions, averaged over
    the seeds."""
    rows = [["diverged / late", *doc["conditions"]]]
    for name in doc["methods"]:
        rows.append([name, *[f"{_pct(c['methods'][name]['fraction_diverged']['mean'])} / "
                             f"{_pct(c['methods'][name]['fraction_late_divergence']['mean'])}"
                             for c in doc["conditions"].values()]])
    return rows


def markdown_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells (the first the header) as a Markdown table."""
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


def format_summary(doc: Mapping[str, Any]) -> str:
    """The printed summary: the set-up in one line and :func:`summary_rows` as text."""
    t = doc["train"]
    head = (f"optenv study, setting {doc['setting']}{' (quick)' if doc['quick'] else ''}: "
            f"meta-trained on {t['env_id']} at T = {t['horizon']}, {doc['seeds']} seed(s), "
            f"{len(doc['conditions'])} held-out conditions")
    return "\n".join([head, *fixed_width(summary_rows(doc), rule=True)])


# ---------------------------------------------------------------------- figures
def _results(out: Path, doc: Mapping[str, Any], condition: str) -> dict[str, Any]:
    from optenv.lab.results import read_results

    return read_results(out / doc["conditions"][condition]["results"][0])


def _seed_results(out: Path, doc: Mapping[str, Any], condition: str) -> list[dict[str, Any]]:
    from optenv.lab.results import read_results

    return [read_results(out / rel) for rel in doc["conditions"][condition]["results"]]


def _curves(values: list[Any]) -> np.ndarray:
    """Equal-length JSON curves (None for non-finite) as a float array [curves, T+1]."""
    return np.array([[np.nan if v is None else v for v in c] for c in values],
                    dtype=np.float64)


def _finite_mean(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite entries (NaN where there is none): the rule of
    study.json's seed means, which leave a seed's non-finite value out."""
    ok = np.isfinite(a)
    count = ok.sum(axis=0)
    total = np.where(ok, a, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _finite_extreme(a: np.ndarray, pick: Any) -> np.ndarray:
    ok = np.isfinite(a)
    fill = np.inf if pick is np.min else -np.inf
    out = pick(np.where(ok, a, fill), axis=0)
    return np.where(ok.any(axis=0), out, np.nan)


def seed_mean(results: list[Mapping[str, Any]], learned: Any) -> dict[str, Any]:
    """One results document from the S seeds' documents of a condition, for the figures: a
    ``learned`` method's mean f and margin of victory are the means over the seeds, its band
    runs from the lowest to the highest end of the seeds' 95% intervals (study.json's
    ``low``/``high``), its finite count is the smallest; the other methods, which are not
    meta-trained and so the same in every seed's file, are seed 0's. One seed: that document."""
    if len(results) == 1:
        return dict(results[0])
    methods = {}
    for name, first in results[0]["methods"].items():
        if name not in learned:
            methods[name] = first
            continue
        ms = [r["methods"][name] for r in results]
        entry = dict(first)
        entry["mean_f"] = _finite_mean(_curves([m["mean_f"] for m in ms])).tolist()
        entry["mean_f_low"] = _finite_extreme(_curves([m["mean_f_low"] for m in ms]),
                                              np.min).tolist()
        entry["mean_f_high"] = _finite_extreme(_curves([m["mean_f_high"] for m in ms]),
                                               np.max).tolist()
        entry["n_finite"] = np.min(_curves([m["n_finite"] for m in ms]), axis=0).tolist()
        if all(m.get("margin_of_victory") is not None for m in ms):
            entry["margin_of_victory"] = _finite_mean(
                _curves([m["margin_of_victory"] for m in ms])).tolist()
        methods[name] = entry
    return {**results[0], "methods": methods}


def _wants_log(results: Mapping[str, Any]) -> bool:
    """A log axis when every mean is positive and they span more than a decade."""
    vals = np.array([v for m in results["methods"].values() for v in m["mean_f"]
                     if v is not None], dtype=np.float64)
    return bool(vals.size and vals.min() > 0 and vals.max() / vals.min() > 10)


def _learned(doc: Mapping[str, Any]) -> list[str]:
    return [k for k, m in doc["methods"].items() if m["kind"] == "learned"]


def axis_figure(doc: Mapping[str, Any], out: Path, axis: str) -> Any:
    """One panel per condition of ``axis``: mean f and its 95% interval, with several seeds
    the learned methods' mean over the seeds and each seed's curve (module docstring)."""
    from optenv.lab.figures import draw_mean_f, finish_figure, new_figure

    names = doc["axes"][axis]["conditions"]
    learned = _learned(doc)
    fig, axes = new_figure(len(names))
    for ax, name in zip(axes, names, strict=True):
        seeds = _seed_results(out, doc, name)
        results = seed_mean(seeds, learned)
        curves = ({k: [r["methods"][k]["mean_f"] for r in seeds] for k in learned}
                  if len(seeds) > 1 else None)
        draw_mean_f(ax, results, log=_wants_log(results), seed_curves=curves)
        kwargs = doc["conditions"][name]["env_kwargs"]
        ax.set_title(f"{name}: {doc['conditions'][name]['env_id'].split('/')[-1]}"
                     + (f" {kwargs}" if kwargs else ""), fontsize="small")
    n = doc["plan"]["n_test"]
    seeds = (f"; learned methods: mean of {doc['seeds']} seeds (thin lines: each seed)"
             if doc["seeds"] > 1 else "")
    title = f"{axis}: {doc['axes'][axis]['description']} — {n} test objectives{seeds}"
    # wrapped to the figure's width (about 11 characters an inch at the title's size)
    return finish_figure(fig, axes, textwrap.fill(title, int(11 * fig.get_size_inches()[0])))


def divergence_figure(doc: Mapping[str, Any]) -> Any:
    """Grouped bars: per condition, each method's fraction diverged (left) and diverged late
    (right), mean over the seeds."""
    from optenv.lab.figures import finish_figure, method_styles, new_figure

    conds = list(doc["conditions"])
    names = list(doc["methods"])
    styles = method_styles({k: {"kind": "callable" if m["kind"] == "learned" else "direct"}
                            for k, m in doc["methods"].items()})
    fig, axes = new_figure(2)
    width = 0.8 / len(names)
    x = np.arange(len(conds))
    for ax, key, title in ((axes[0], "fraction_diverged", "diverged (final f > f(x0))"),
                           (axes[1], "fraction_late_divergence", "late divergence")):
        for i, name in enumerate(names):
            vals = [doc["conditions"][c]["methods"][name][key]["mean"] or 0.0 for c in conds]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width,
                   color=styles[name].color, label=name,
                   hatch="//" if doc["methods"][name]["kind"] == "learned" else None)
        ax.set_xticks(x, conds, rotation=30, ha="right", fontsize="small")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of runs")
        ax.set_title(title, fontsize="small")
    return finish_figure(fig, axes, "divergence per method and condition")


def _figures(doc: Mapping[str, Any], out: Path) -> dict[str, Any]:
    from optenv.lab.figures import margin_figure

    figs = {f"axis-{axis}": axis_figure(doc, out, axis) for axis in doc["axes"]}
    figs["divergence"] = divergence_figure(doc)
    long = _training_condition(doc, "horizon") or _training_condition(doc, "same")
    if long:
        mov = margin_figure(seed_mean(_seed_results(out, doc, long), _learned(doc)))
        if mov is not None:
            figs["margin_of_victory"] = mov
    return figs


# ---------------------------------------------------------------------- report.md
def _report_text(doc: Mapping[str, Any], stems: list[str]) -> str:
    t, plan = doc["train"], doc["plan"]
    wall = doc["wall_s"]
    lines = [
        f"# optenv study — setting {doc['setting']}{' (quick)' if doc['quick'] else ''}", "",
        f"Generated from `study.json` (schema {doc['schema']}, {doc['created']}, optenv "
        f"{doc['optenv_version']}, torch {doc['torch_version']}, device {doc['device']}). "
        f"Command: `{_command(doc)}`; regenerate this file with `--report-only`.", "",
        f"Meta-trained on {t['env_id']} at T = {t['horizon']} ({doc['seeds']} seed(s) per "
        f"learned method); hand-designed methods tuned on {doc['tuning']['n_train']} of its "
        f"TRAIN objectives at T (criterion: {doc['tuning']['criterion']} f) and applied "
        f"unchanged everywhere; every condition evaluates {plan['n_test']} TEST objectives. "
        f"Wall time: training {wall['train']:.0f} s, tuning {wall['tune']:.0f} s, evaluation "
        f"{wall['evaluate']:.0f} s.", "",
        "## Summary", "", *markdown_table(summary_rows(doc)), "",
        "Cells: mean f [95% interval]; diverged = final f > f(x0) or non-finite; late = f "
        "rises by more than 10% of (f(x0) − min f) after its minimum; upturn = first iteration "
        "at which the mean curve turns upward (per seed).", "",
        "## Methods", "",
        *markdown_table([["method", "kind", "description", "hyper-parameters"]] + [
            [k, m["kind"], m["description"],
             " ".join(f"{h}={v:g}" for h, v in (m["hyperparameters"] or {}).items()) or "-"]
            for k, m in doc["methods"].items()]), ""]
    for axis, a in doc["axes"].items():
        lines += [f"## Axis: {axis}", "", a["description"] + ".", ""]
        if f"axis-{axis}" in stems:
            lines += [f"![{axis}](axis-{axis}.png)", ""]
        for name in a["conditions"]:
            c = doc["conditions"][name]
            lines += [f"### {name}: {c['env_id']}"
                      + (f" {c['env_kwargs']}" if c["env_kwargs"] else "")
                      + f", horizon {c['horizon']}", "",
                      *markdown_table(condition_rows(doc, name)), "",
                      *markdown_table(wins_rows(doc, name)), "",
                      f"Results: {', '.join(f'`{r}`' for r in c['results'])}.", ""]
    for axis, why in doc["not_applicable"].items():
        lines += [f"## Axis: {axis}", "", f"Not in this setting: {why}.", ""]
    lines += ["## Mean f at the last iteration", "", *markdown_table(final_rows(doc)), "",
              "## Divergence", "", *markdown_table(divergence_rows(doc)), ""]
    if "divergence" in stems:
        lines += ["![divergence](divergence.png)", ""]
    if "margin_of_victory" in stems:
        lines += ["## Margin of victory", "", "![margin of victory](margin_of_victory.png)", ""]
    return "\n".join(lines)


def _command(doc: Mapping[str, Any]) -> str:
    """The ``optenv study`` command line that makes a study like ``doc``."""
    return (f"optenv study --setting {doc['setting']}{' --quick' if doc['quick'] else ''}"
            + (f" --seeds {doc['seeds']}" if doc["seeds"] > 1 else ""))


def _seeds(doc: Mapping[str, Any]) -> str:
    return f"{doc['seeds']} seed{'s' if doc['seeds'] > 1 else ''}"


def _provenance(doc: Mapping[str, Any]) -> str:
    wall = doc["wall_s"]
    return (f"Generated from the `study.json` of `{_command(doc)}` (created {doc['created']}, "
            f"optenv {doc['optenv_version']}, torch {doc['torch_version']}, device "
            f"{doc['device']}; wall time: training {wall['train']:.0f} s, tuning "
            f"{wall['tune']:.0f} s, evaluation {wall['evaluate']:.0f} s). Meta-trained on "
            f"{doc['train']['env_id']} at T = {doc['train']['horizon']}, {_seeds(doc)}; "
            f"{doc['plan']['n_test']} TEST objectives per condition.")


def _tables_block(doc: Mapping[str, Any]) -> list[str]:
    """The full tables (docs/results.md): summary, last-iteration means, divergence."""
    return [_provenance(doc) + " Cells: mean f [95% interval]; diverged = final f > f(x0) or "
            "non-finite; late = f rises by more than 10% of its decrease after its minimum; "
            "upturn = first iteration the mean curve turns upward.", "",
            "Summary:", "", *markdown_table(summary_rows(doc)), "",
            "Mean f at each condition's last iteration:", "", *markdown_table(final_rows(doc)),
            "", "Fraction of runs diverged / diverged late:", "",
            *markdown_table(divergence_rows(doc))]


def _summary_block(doc: Mapping[str, Any]) -> list[str]:
    """The short table (the README): :func:`short_summary_rows` under one line of set-up."""
    t = doc["train"]
    return [f"`{_command(doc)}`: meta-trained on `{t['env_id']}` at T = {t['horizon']}, "
            f"{doc['plan']['n_test']} TEST objectives, {_seeds(doc)}; mean f:", "",
            *markdown_table(short_summary_rows(doc))]


#: Kind of generated block → what fills it; the tag after the setting in its marker lines
#: (:func:`doc_markers`).
BLOCKS = {"tables": _tables_block, "summary": _summary_block}


def doc_markers(setting: str, quick: bool, kind: str = "tables") -> tuple[str, str]:
    """The two lines that delimit a study's generated block of ``kind`` (:data:`BLOCKS`) in a
    Markdown file, one block per setting, preset and kind: ``<!-- optenv study 2016 --quick:
    begin -->`` ... ``: end -->`` for the tables, ``<!-- optenv study 2016 --quick summary:
    begin -->`` for the summary."""
    if kind not in BLOCKS:
        raise ValueError(f"kind: got {kind!r}, allowed: {', '.join(BLOCKS)}")
    tag = (f"optenv study {setting}{' --quick' if quick else ''}"
           + ("" if kind == "tables" else f" {kind}"))
    return f"<!-- {tag}: begin -->", f"<!-- {tag}: end -->"


def _blocks(text: str, setting: str, quick: bool, where: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each of the study's blocks in ``text``, in file order; ValueError
    naming ``where`` when there is none, or one whose markers are broken."""
    found = []
    for kind in BLOCKS:
        begin, end = doc_markers(setting, quick, kind)
        i, j = text.find(begin), text.find(end)
        if i < 0 and j < 0:
            continue
        if i < 0 or j < i or text.count(begin) > 1 or text.count(end) > 1:
            raise ValueError(f"{where} has a broken block: allowed: the lines {begin!r} and "
                             f"{end!r} once each, in that order")
        found.append((kind, i + len(begin), j))
    if not found:
        pairs = " or ".join(f"{a!r} ... {b!r}" for a, b in
                            (doc_markers(setting, quick, k) for k in BLOCKS))
        raise ValueError(f"{where} has no block of this study; allowed: a Markdown file "
                         f"holding the lines {pairs}, in order")
    return sorted(found, key=lambda b: b[1])


def doc_block(path: str | os.PathLike[str], setting: str, quick: bool
              ) -> tuple[str, list[tuple[str, int, int]]]:
    """(text of ``path``, its blocks of the study as (kind, start, end)); ValueError naming
    ``--doc`` when the file cannot be read or holds no block of the study (checked before a
    study runs, so that a bad ``--doc`` fails at once)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"--doc: got {str(path)!r}, which cannot be read ({err.strerror}); "
                         "allowed: a Markdown file") from err
    return text, _blocks(text, setting, quick, f"--doc: {str(path)!r}")


def render_doc(doc: Mapping[str, Any], text: str, where: str = "text") -> str:
    """``text`` (a Markdown page) with each of the study's blocks regenerated from ``doc`` and
    everything outside them unchanged: what :func:`update_doc` writes, and what a test compares
    a committed page with."""
    out, pos = [], 0
    for kind, i, j in _blocks(text, doc["setting"], doc["quick"], where):
        out += [text[pos:i], "\n", "\n".join(BLOCKS[kind](doc)), "\n"]
        pos = j
    return "".join(out) + text[pos:]


def update_doc(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Regenerate the study's blocks in the Markdown file ``path`` (:func:`render_doc`): how
    docs/results.md's tables and the README's summary are rewritten (``optenv study
    --report-only --out DIR --doc PAGE``), so that they cannot drift from the study. The file
    is rewritten atomically, or not at all."""
    text, _ = doc_block(path, doc["setting"], doc["quick"])
    new = render_doc(doc, text, f"--doc: {str(path)!r}")
    return atomic_write(path, lambda fh: fh.write(new))


def write_report(doc: Mapping[str, Any], out_dir: str | os.PathLike[str], *,
                 condition_figures: bool = True) -> list[Path]:
    """Draw the study's figures (and each condition's compare figures unless
    ``condition_figures`` is off) and write ``report.md`` into ``out_dir``; returns the figure
    files written."""
    from optenv.lab.figures import save_figure, write_figures

    out = Path(out_dir)
    figs = _figures(doc, out)
    written: list[Path] = []
    for stem, fig in figs.items():
        written += save_figure(fig, out / stem)
    if condition_figures:
        for name in doc["conditions"]:
            first = out / doc["conditions"][name]["results"][0]
            written += write_figures(_results(out, doc, name), first.parent)
    text = _report_text(doc, list(figs))
    atomic_write(out / "report.md", lambda fh: fh.write(text + "\n"))
    return written
