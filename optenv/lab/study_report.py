"""The study's tables, figures and ``report.md``, generated from ``study.json`` alone (plus the
results files it names, for the curves), so that the numbers and the text cannot drift apart;
``optenv study --report-only`` regenerates them.

Figures (PNG and SVG, drawn with :mod:`optenv.lab.figures`' styles and labels):

* ``axis-<axis>``: one panel per condition of the axis — mean f per iteration with its 95%
  interval, on a log axis where the curves span more than a decade (seed 0's runs);
* ``divergence``: the fraction of runs diverged (final f > f(x0), or non-finite) and of runs
  that diverge late (f rises by more than 10% of its decrease after its minimum), per method
  and condition, averaged over the seeds;
* ``margin_of_victory``: Li & Malik's margin of victory on the longest-horizon condition of the
  training family (:func:`optenv.lab.figures.margin_figure`);
* each condition's compare figures in ``conditions/<condition>/seed0/``.

Cells: a mean f is ``mean [low, high]`` (the 95% interval); with several seeds the range of the
seeds' means follows (``seeds a..b``); a fraction is a percentage, with the seeds' range in
parentheses when there are several.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from optenv.checkpoint import atomic_write
from optenv.lab.compare import fixed_width

__all__ = ["condition_rows", "divergence_figure", "divergence_rows", "doc_block", "doc_markers",
           "final_rows", "format_summary", "markdown_table", "summary_rows", "update_doc",
           "wins_rows", "write_report"]


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


def _frac_cell(stat: Mapping[str, Any] | None, seeds: int) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = _pct(stat["mean"])
    if seeds > 1:
        text += f" ({_pct(stat['seed_min'])}..{_pct(stat['seed_max'])})"
    return text


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
            row += [_frac_cell(m["fraction_diverged"], seeds),
                    _frac_cell(m["fraction_late_divergence"], seeds),
                    _upturn_cell(m["first_upturn"])]
        others = [(c["methods"][name]["fraction_diverged"]["mean"] or 0.0, cname)
                  for cname, c in doc["conditions"].items() if cname not in (same, long)]
        worst = max(others) if others else None
        row.append("n/a" if worst is None else f"{_pct(worst[0])} ({worst[1]})")
        rows.append(row)
    return rows


def condition_rows(doc: Mapping[str, Any], condition: str) -> list[list[str]]:
    """Per method: mean f at the checkpoints within the condition's horizon, the fractions
    diverged and diverged late, and the first upturn of the mean curve (per seed)."""
    seeds, c = doc["seeds"], doc["conditions"][condition]
    at = list(next(iter(c["methods"].values()))["mean_f_at"])
    rows = [["method", *[f"f@{k}" for k in at], "diverged", "late", "upturn"]]
    for name, m in c["methods"].items():
        rows.append([name, *[_mean_cell(m["mean_f_at"][k], seeds) for k in at],
                     _frac_cell(m["fraction_diverged"], seeds),
                     _frac_cell(m["fraction_late_divergence"], seeds),
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


def _wants_log(results: Mapping[str, Any]) -> bool:
    """A log axis when every mean is positive and they span more than a decade."""
    vals = np.array([v for m in results["methods"].values() for v in m["mean_f"]
                     if v is not None], dtype=np.float64)
    return bool(vals.size and vals.min() > 0 and vals.max() / vals.min() > 10)


def axis_figure(doc: Mapping[str, Any], out: Path, axis: str) -> Any:
    """One panel per condition of ``axis``: mean f and its 95% interval (seed 0's runs)."""
    from optenv.lab.figures import draw_mean_f, finish_figure, new_figure

    names = doc["axes"][axis]["conditions"]
    fig, axes = new_figure(len(names))
    for ax, name in zip(axes, names, strict=True):
        results = _results(out, doc, name)
        draw_mean_f(ax, results, log=_wants_log(results))
        kwargs = doc["conditions"][name]["env_kwargs"]
        ax.set_title(f"{name}: {doc['conditions'][name]['env_id'].split('/')[-1]}"
                     + (f" {kwargs}" if kwargs else ""), fontsize="small")
    n = doc["plan"]["n_test"]
    return finish_figure(fig, axes, f"{axis}: {doc['axes'][axis]['description']} — "
                                    f"{n} test objectives")


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
        mov = margin_figure(_results(out, doc, long))
        if mov is not None:
            figs["margin_of_victory"] = mov
    return figs


# ---------------------------------------------------------------------- report.md
def _report_text(doc: Mapping[str, Any], stems: list[str]) -> str:
    t, plan = doc["train"], doc["plan"]
    flags = f"--setting {doc['setting']}{' --quick' if doc['quick'] else ''}" + (
        f" --seeds {doc['seeds']}" if doc["seeds"] > 1 else "")
    wall = doc["wall_s"]
    lines = [
        f"# optenv study — setting {doc['setting']}{' (quick)' if doc['quick'] else ''}", "",
        f"Generated from `study.json` (schema {doc['schema']}, {doc['created']}, optenv "
        f"{doc['optenv_version']}, torch {doc['torch_version']}, device {doc['device']}). "
        f"Command: `optenv study {flags}`; regenerate this file with `--report-only`.", "",
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


def doc_markers(setting: str, quick: bool) -> tuple[str, str]:
    """The two lines that delimit a study's generated block in a Markdown file (one block per
    setting and preset: ``<!-- optenv study 2016 --quick: begin -->`` ... ``: end -->``)."""
    tag = f"optenv study {setting}{' --quick' if quick else ''}"
    return f"<!-- {tag}: begin -->", f"<!-- {tag}: end -->"


def doc_block(path: str | os.PathLike[str], setting: str, quick: bool
              ) -> tuple[str, int, int]:
    """(text of ``path``, start and end of the study's block in it); ValueError naming
    ``--doc`` when the file or its markers are missing (checked before a study runs, so that a
    bad ``--doc`` fails at once)."""
    begin, end = doc_markers(setting, quick)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"--doc: got {str(path)!r}, which cannot be read ({err.strerror}); "
                         "allowed: a Markdown file") from err
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"--doc: {str(path)!r} has no block between the lines {begin!r} and "
                         f"{end!r}; allowed: a Markdown file holding those two lines, in order")
    return text, i + len(begin), j


def update_doc(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Replace the study's block in the Markdown file ``path`` (between :func:`doc_markers`)
    with its summary, last-iteration and divergence tables, generated from ``doc``: how
    docs/study.md's measured tables are regenerated (``optenv study --report-only --doc``), so
    that they cannot drift from the study. The file is rewritten atomically, or not at all."""
    text, i, j = doc_block(path, doc["setting"], doc["quick"])
    block = ["Summary:", "", *markdown_table(summary_rows(doc)), "",
             "Mean f at each condition's last iteration:", "", *markdown_table(final_rows(doc)),
             "", "Fraction of runs diverged / diverged late:", "",
             *markdown_table(divergence_rows(doc))]
    new = text[:i] + "\n" + "\n".join(block) + "\n" + text[j:]
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
