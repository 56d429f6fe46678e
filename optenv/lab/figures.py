"""Figures of a comparison: suboptimality f − f* on a log axis, mean f, margin of victory.

Everything is drawn from a results document (:mod:`optenv.lab.results`, schema
``optenv-compare/1``) alone, so ``optenv compare`` and the study draw the same figures, and a
figure can be redrawn from a results.json without rerunning anything
(``write_figures(read_results(path), out_dir)``). Each figure is written as PNG and SVG.

The figures (file stems):

* ``suboptimality``: mean (left) and median with its 95% interval (right) of f − f* per
  iteration, log axis — which method is ahead, and by how many orders of magnitude, at every
  iteration; ``suboptimality_by_evals``: the same against f/∇f evaluations (the equal-budget
  view), drawn when a method's line search spends more than one evaluation per iteration.
  Needs the document's ``reference`` (f*, see :mod:`optenv.lab.reference`).
* ``mean_f``: mean f with its 95% interval on a linear axis (the objective's own scale).
* ``margin_of_victory``: Li & Malik's mean margin of victory per iteration, one line per
  method, zero marked, on a symmetric-log axis (left) and zoomed on the second half of the
  horizon on a linear axis (right), where the margins are small and a linear full-range axis
  would show flat lines at zero.

Conventions, the same in every figure:

* **Labels** are short and stable: a hand-designed method's name; a learned optimiser's kind
  and run folder's base name, ``gps (gps-quick)`` (more of the path when two would read the
  same); the full path is in results.json.
* **Styles** are fixed per method, across figures and runs: hand-designed methods dashed, each
  its own colour (:data:`HAND_COLOURS`); learned optimisers solid with markers, coloured by
  kind (:data:`LEARNED_COLOURS`), the marker chosen by a hash of the label so two runs of one
  kind differ and a run keeps its marker from one comparison to the next.
* **Non-finite runs** (diverged) are left out of the means and counted in the legend
  (``[3/100 non-finite]``); medians count them as the worst value.

Matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), so drawing is
safe in tests and threads.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from optenv.checkpoint import atomic_write

__all__ = ["DPI", "FIGURE_STEMS", "FORMATS", "HAND_COLOURS", "LEARNED_COLOURS", "Style",
           "draw_mean_f", "figure_size", "figures", "finish_figure", "margin_figure",
           "mean_f_figure", "method_styles", "new_figure", "remove_stale_figures",
           "save_figure", "short_labels", "split_method", "suboptimality_figure",
           "write_figures"]

#: File formats every figure is written in.
FORMATS = ("png", "svg")
#: Every figure :func:`figures` may draw, by file stem: the files a comparison's folder owns
#: (:func:`remove_stale_figures` deletes those of them a run did not write, and nothing else).
FIGURE_STEMS = ("suboptimality", "suboptimality_by_evals", "mean_f", "margin_of_victory")
#: Resolution of the PNGs: a figure of w × h inches is w·DPI × h·DPI pixels.
DPI = 100
_PANEL = (5.0, 4.0)  # inches per panel
_LEGEND = 2.6  # inches to the right of the panels for the legend
#: Colours of the hand-designed methods (drawn dashed).
HAND_COLOURS = {"gd": "#1f77b4", "momentum": "#ff7f0e", "nesterov": "#2ca02c", "cg": "#d62728",
                "lbfgs": "#9467bd", "adam": "#8c564b", "adagrad": "#e377c2",
                "rmsprop": "#7f7f7f", "cg-fixed": "#ff9896", "lbfgs-fixed": "#c5b0d5"}
#: Colours of the learned optimisers by kind, the ``PREFIX`` of ``PREFIX:DIR``, and by the
#: study's method names (drawn solid).
LEARNED_COLOURS = {"gps": "#000000", "bptt": "#bcbd22", "ppo": "#17becf",
                   "recurrent-ppo": "#0b5d66", "sac": "#4b0082", "td3": "#8b0000",
                   "bptt-lstm": "#bcbd22", "bptt-same": "#006d2c"}
_OTHER_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                  "#e6550d", "#31a354")
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def split_method(key: str) -> tuple[str, str | None]:
    """``"gps:runs/gps-quick"`` → ("gps", "runs/gps-quick"); ``"adam"`` → ("adam", None)."""
    kind, sep, path = key.partition(":")
    return (kind, path) if sep and kind and path else (key, None)


def short_labels(keys: Iterable[str]) -> dict[str, str]:
    """Each method key's figure label: the name itself, or for ``KIND:PATH`` the kind and the
    path's last component, ``gps (gps-quick)``, with as many more components as it takes to
    tell two runs apart (the whole key when nothing does)."""
    keys = list(keys)
    parts = {k: PurePath(p).parts or (p,) for k in keys
             if (p := split_method(k)[1]) is not None}
    depth = dict.fromkeys(parts, 1)

    def label(k: str) -> str:
        if k not in parts:
            return k
        return f"{split_method(k)[0]} ({'/'.join(parts[k][-depth[k]:])})"

    while True:
        labels = {k: label(k) for k in keys}
        seen: dict[str, list[str]] = {}
        for k, v in labels.items():
            seen.setdefault(v, []).append(k)
        grow = [k for same in seen.values() if len(same) > 1 for k in same
                if k in parts and depth[k] < len(parts[k])]
        if not grow:
            break
        for k in grow:
            depth[k] += 1
    counts = {v: len(same) for v, same in seen.items()}
    return {k: v if counts[v] == 1 else k for k, v in labels.items()}


@dataclass(frozen=True)
class Style:
    """How one method is drawn: ``color``, ``linestyle`` (dashed for hand-designed methods,
    solid for learned ones) and a ``marker`` (learned ones only)."""

    color: str
    linestyle: str
    marker: str | None = None

    def line_kwargs(self, n_points: int) -> dict[str, Any]:
        """Keyword arguments of ``Axes.plot`` (markers every tenth of the curve)."""
        kw: dict[str, Any] = {"color": self.color, "linestyle": self.linestyle,
                              "linewidth": 1.6}
        if self.marker is not None:
            kw.update(marker=self.marker, markevery=max(1, n_points // 10), markersize=4)
        return kw


def _hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def method_styles(methods: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Style]:
    """The style of each method (key → its results entry, whose ``kind`` tells a saved
    policy from a hand-designed optimiser when the key alone does not); see the module
    docstring. Two learned optimisers of one kind whose markers' hashes collide get the next
    free marker, in key order."""
    labels = short_labels(methods)
    styles: dict[str, Style] = {}
    used: dict[str, set[str]] = {}
    for key, entry in methods.items():
        name, path = split_method(key)
        kind = (entry or {}).get("kind")
        if path is None and name in HAND_COLOURS:
            styles[key] = Style(HAND_COLOURS[name], "--")
            continue
        learned = path is not None or kind in ("predict", "callable")
        colour = LEARNED_COLOURS.get(name) if learned else None
        colour = colour or _OTHER_COLOURS[_hash(name) % len(_OTHER_COLOURS)]
        if not learned:
            styles[key] = Style(colour, "--")
            continue
        taken = used.setdefault(colour, set())
        start = _hash(labels[key]) % len(_MARKERS)
        marker = next((m for i in range(len(_MARKERS))
                       if (m := _MARKERS[(start + i) % len(_MARKERS)]) not in taken),
                      _MARKERS[start])
        taken.add(marker)
        styles[key] = Style(colour, "-", marker)
    return styles


# ---------------------------------------------------------------------- helpers
def _arr(values: Sequence[Any] | None) -> np.ndarray:
    """A JSON list (None for non-finite) as floats with NaN; +inf stays out of the drawing."""
    a = np.array([np.nan if v is None else v for v in (values or [])], dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan)


def _legend_label(label: str, n_finite: Sequence[Any] | None, n: int) -> str:
    """The label with ``[k/N non-finite]`` when k runs were left out somewhere."""
    finite = [v for v in (n_finite or []) if v is not None]
    left_out = n - int(min(finite)) if finite else 0
    return f"{label} [{left_out}/{n} non-finite]" if left_out > 0 else label


def _env_name(doc: Mapping[str, Any]) -> str:
    return str(doc["env_id"]).split("/")[-1]


def figure_size(panels: int) -> tuple[float, float]:
    """(width, height) in inches of a figure of ``panels`` side-by-side panels and the legend
    column: the PNG is DPI times that in pixels, the SVG 72 times that in points."""
    return (_PANEL[0] * panels + _LEGEND, _PANEL[1])


def new_figure(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figure_size(panels), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def finish_figure(fig: Any, axes: list[Any], title: str) -> Any:
    """One legend for all panels, right of them (every panel has the same lines and styles),
    the title on top, the grid on each panel."""
    for ax in axes:
        ax.grid(alpha=0.3, which="major")
    handles, labels = axes[0].get_legend_handles_labels()
    width = fig.get_size_inches()[0]
    fig.legend(handles, labels, loc="center left", fontsize="small", frameon=False,
               bbox_to_anchor=(1.0 - _LEGEND / width, 0.5))
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - _LEGEND / width, 1.0))
    return fig


def _reference_text(ref: Mapping[str, Any]) -> str:
    """How f* was obtained, in a few words, with how often a method went below it."""
    if ref.get("source") == "closed form":
        text = "f*: closed form"
    elif int(ref.get("starts") or 1) > 1:
        text = f"f*: best of L-BFGS from {ref['starts']} starts"
    else:
        text = "f*: L-BFGS"
    below = len((ref.get("below_reference") or {}).get("objectives") or [])
    return text + (f", or lower f a method reached ({below} objectives)" if below else "")


# ---------------------------------------------------------------------- figures
def suboptimality_figure(doc: Mapping[str, Any], *, by: str = "iterations") -> Any | None:
    """Mean and median f − f* per iteration (``by="iterations"``) or per f/∇f evaluation
    budget (``by="evals"``) on log axes; None without a reference optimum in ``doc``."""
    if by not in ("iterations", "evals"):
        raise ValueError(f"by: got {by!r}, allowed: 'iterations', 'evals'")
    ref = doc.get("reference")
    subs = {k: m["suboptimality"] for k, m in doc["methods"].items()
            if m.get("suboptimality") is not None}
    if ref is None or not subs:
        return None
    suffix = "" if by == "iterations" else "_by_evals"
    styles = method_styles(doc["methods"])
    labels = short_labels(doc["methods"])
    fig, (ax_mean, ax_med) = new_figure(2)
    n = int(doc["n_test"])
    for key, sub in subs.items():
        mean = _arr(sub[f"mean{suffix}"])
        it = np.arange(mean.size)
        kw = styles[key].line_kwargs(mean.size)
        label = _legend_label(doc["methods"][key].get("label") or labels[key],
                              sub.get("n_finite"), n)
        ax_mean.plot(it, mean, label=label, **kw)
        med = _arr(sub[f"median{suffix}"])
        ax_med.plot(it, med, **kw)
        ax_med.fill_between(it, _arr(sub[f"median_low{suffix}"]),
                            _arr(sub[f"median_high{suffix}"]), color=kw["color"], alpha=0.12,
                            linewidth=0)
    xlabel = "iteration" if by == "iterations" else "f/∇f evaluations"
    for ax, what in ((ax_mean, "mean"), (ax_med, "median (95% interval)")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{what} of f − f*")
    floor = ref.get("floor")
    title = (f"{_env_name(doc)}: {n} {doc['split']} objectives — {_reference_text(ref)}"
             + (f"\nf − f* below {floor:g}·max(1, |f*|) drawn at that value" if floor else ""))
    return finish_figure(fig, [ax_mean, ax_med], title)


def mean_f_figure(doc: Mapping[str, Any]) -> Any:
    """Mean f per iteration with its 95% interval, on the objective's own (linear) scale."""
    fig, (ax,) = new_figure(1)
    draw_mean_f(ax, doc)
    return finish_figure(fig, [ax], f"{_env_name(doc)}: {int(doc['n_test'])} {doc['split']} "
                                    "objectives")


def draw_mean_f(ax: Any, doc: Mapping[str, Any], *, log: bool = False,
                seed_curves: Mapping[str, Sequence[Sequence[Any]]] | None = None) -> None:
    """Every method's mean f per iteration and its 95% interval onto ``ax`` (fixed styles,
    short labels), on a log axis if ``log``: the panel of :func:`mean_f_figure`, and of the
    study's per-axis figures (one panel per condition). ``seed_curves``: method key → one mean
    f curve per meta-training seed, each drawn as a thin line of the method's colour (no
    legend entry) over the method's own line — the study's run-to-run spread."""
    styles = method_styles(doc["methods"])
    labels = short_labels(doc["methods"])
    n = int(doc["n_test"])
    for key, m in doc["methods"].items():
        mean = _arr(m["mean_f"])
        it = np.arange(mean.size)
        kw = styles[key].line_kwargs(mean.size)
        ax.plot(it, mean, label=_legend_label(m.get("label") or labels[key], m["n_finite"], n),
                **kw)
        ax.fill_between(it, _arr(m["mean_f_low"]), _arr(m["mean_f_high"]), color=kw["color"],
                        alpha=0.12, linewidth=0)
        for curve in (seed_curves or {}).get(key, ()):
            seed = _arr(curve)
            ax.plot(np.arange(seed.size), seed, color=kw["color"], linestyle=kw["linestyle"],
                    linewidth=0.7, alpha=0.6)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean f (95% interval)" + (", log axis" if log else ""))


def _symlog_threshold(values: np.ndarray) -> float:
    """The symmetric-log axis's linear range: the 10th percentile of the non-zero |margins|
    after x(0), so that the small late margins are spread over decades rather than squashed
    into the linear band around zero."""
    a = np.abs(values[np.isfinite(values) & (values != 0)])
    return float(np.percentile(a, 10)) if a.size else 1.0


def _symlog_axis(ax: Any, values: np.ndarray) -> None:
    """A symmetric-log y axis with ticks at 0 and at the whole decades inside the data's range
    on each side, at most five a side; the decade next to the linear band is left out when
    there are more than four (matplotlib's default labels ±linthresh, which then collide with
    the 0 label)."""
    thresh = _symlog_threshold(values)
    ax.set_yscale("symlog", linthresh=thresh)
    finite = values[np.isfinite(values)]
    ticks = [0.0]
    for sign, side in ((1.0, finite[finite > 0]), (-1.0, -finite[finite < 0])):
        if not side.size or side.max() < thresh:
            continue
        decades = list(range(int(np.ceil(np.log10(thresh))),
                             int(np.floor(np.log10(side.max()))) + 1))
        if len(decades) > 4:
            decades = decades[1:]
        step = max(1, -(-len(decades) // 5))
        ticks += [sign * 10.0**k for k in decades[::step]]
    ax.set_yticks(sorted(ticks))


def margin_figure(doc: Mapping[str, Any]) -> Any | None:
    """Li & Malik's mean margin of victory per iteration (the best other method's f minus
    one's own, averaged over objectives: > 0 = winning), one line per method, the zero line
    marked: whole horizon on a symmetric-log axis, and the second half on a linear axis whose
    range fits those iterations' margins. None with fewer than two methods."""
    movs = {k: _arr(m["margin_of_victory"]) for k, m in doc["methods"].items()
            if m.get("margin_of_victory") is not None}
    if not movs:
        return None
    styles = method_styles(doc["methods"])
    labels = short_labels(doc["methods"])
    fig, (ax_all, ax_late) = new_figure(2)
    horizon = len(next(iter(movs.values()))) - 1
    late = horizon // 2
    for key, mov in movs.items():
        it = np.arange(mov.size)
        kw = styles[key].line_kwargs(mov.size)
        ax_all.plot(it, mov, label=doc["methods"][key].get("label") or labels[key], **kw)
        ax_late.plot(it[late:], mov[late:], **kw)
    _symlog_axis(ax_all, np.concatenate([v[1:] for v in movs.values()]))
    window = np.concatenate([v[late:] for v in movs.values()] + [np.zeros(1)])
    window = window[np.isfinite(window)]
    lo, hi = float(window.min()), float(window.max())
    pad = 0.08 * (hi - lo) or 1.0
    ax_late.set_ylim(lo - pad, hi + pad)
    for ax, title in ((ax_all, "all iterations (symmetric log)"),
                      (ax_late, f"iterations {late}..{horizon} (linear)")):
        ax.axhline(0.0, color="black", linewidth=1.0)
        ax.set_xlabel("iteration")
        ax.set_title(title, fontsize="small")
    ax_all.set_ylabel("mean margin of victory (> 0: wins)")
    n = int(doc["n_test"])
    return finish_figure(fig, [ax_all, ax_late],
                   f"{_env_name(doc)}: {n} {doc['split']} objectives — margin of victory "
                   "(best other method's f − own f)")


def figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    """File stem → figure, for every figure ``doc`` has the data for (module docstring)."""
    makers: list[tuple[str, Callable[[], Any]]] = [
        ("suboptimality", lambda: suboptimality_figure(doc)),
        ("mean_f", lambda: mean_f_figure(doc)),
        ("margin_of_victory", lambda: margin_figure(doc)),
    ]
    if any((m.get("extra_evals_mean") or 0) > 0 for m in doc["methods"].values()):
        makers.insert(1, ("suboptimality_by_evals",
                          lambda: suboptimality_figure(doc, by="evals")))
    out = {}
    for stem, make in makers:
        fig = make()
        if fig is not None:
            out[stem] = fig
    return out


def write_figures(doc: Mapping[str, Any], out_dir: str | os.PathLike[str],
                  formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write every figure of ``doc`` into ``out_dir`` as ``<stem>.<format>`` (atomically: a
    figure is whole or absent); returns the paths written."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats: got {list(formats)!r}, allowed: a non-empty subset of "
                         f"{list(FORMATS)}")
    out = Path(out_dir)
    paths = []
    for stem, fig in figures(doc).items():
        paths += save_figure(fig, out / stem, formats)
    return paths


def remove_stale_figures(out_dir: str | os.PathLike[str], written: Sequence[Path]
                         ) -> list[Path]:
    """Delete the figure files in ``out_dir`` (``<stem>.<format>`` of :data:`FIGURE_STEMS` and
    :data:`FORMATS`, nothing else) that are not in ``written``: those of an earlier run into
    the same folder, which would no longer match its new results.json (a method with line
    searches dropped, or ``--no-plots``). Returns the paths removed."""
    out = Path(out_dir)
    keep = {Path(p).resolve() for p in written}
    removed = []
    for stem in FIGURE_STEMS:
        for fmt in FORMATS:
            path = out / f"{stem}.{fmt}"
            if path.is_file() and path.resolve() not in keep:
                path.unlink()
                removed.append(path)
    return removed


def save_figure(fig: Any, stem: str | os.PathLike[str],
                formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``<stem>.<format>`` for each format, atomically (a figure is whole or
    absent); returns the paths written."""
    stem = Path(stem)
    return [atomic_write(stem.with_name(f"{stem.name}.{fmt}"),
                         lambda fh, fmt=fmt: fig.savefig(fh, format=fmt, dpi=DPI), binary=True)
            for fmt in formats]
