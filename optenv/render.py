"""Headless pictures of an optimisation run (``render_mode="rgb_array"`` / ``"ansi"``).

The picture shows the objective curve so far and, for families whose data points are 2-D
(LogisticRegression with dim=2, NeuralNet), the data on the current decision regions (the edge
between the two colours is the decision boundary), as in Li & Malik's 2-D figures. Matplotlib's
Agg backend draws off-screen, so no display is needed.

Why a :class:`FrameRenderer` per env rather than a figure per frame: building and laying out a
matplotlib figure costs 0.2–0.9 s, so ``RecordVideo`` made training several times slower. A
renderer builds its figure once, draws everything that never changes (frames, axis labels) once
and keeps that as a background; a frame restores the background and draws only what changes
over it: the curve as a matplotlib line (blitting, as animations do), and the numbers, the
decision regions and the data points with numpy (matplotlib's text layout alone cost more than
the whole frame budget). The axes carry no tick marks (their limits change every frame): the
numbers at the panel's corners give the ranges instead. ``optenv bench`` has a ``render`` row
with the frame time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from optenv.families.base import ObjectiveFamily

__all__ = ["FrameRenderer", "render_ansi"]

#: Class colours of the data panel (class 0, class 1) and of its two decision regions.
POINT_COLOURS = ("#1f77b4", "#d62728")
REGION_COLOURS = ("#cfe0f3", "#f6d5cf")
#: Resolution of the decision-region grid (per side).
GRID = 80


def _has_2d_data(family: ObjectiveFamily) -> bool:
    return getattr(family, "input_dim", None) == 2 and hasattr(family, "decision_values")


class FrameRenderer:
    """One env's figure, built once and redrawn by blitting (see the module docs).

    ``frame(data, x, f_history)`` returns an RGB uint8 array [height, width, 3] of one run
    (``data``/``x`` are one instance); the same inputs give the same pixels, whichever renderer
    draws them. Picklable: the figure is rebuilt on the first frame after unpickling.

    The curve panel's changing parts are matplotlib artists drawn over the saved background;
    the data panel's inside (decision regions and points) is painted with numpy straight into
    the frame, which is what keeps a frame within a few milliseconds.
    """

    def __init__(self, family: ObjectiveFamily, *, width: int = 640, height: int = 320) -> None:
        self.family = family
        self.width, self.height = width, height
        self._fig: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"family": self.family, "width": self.width, "height": self.height}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["family"], width=state["width"], height=state["height"])

    # ------------------------------------------------------------------ the figure, once
    def _build(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        panels = 2 if _has_2d_data(self.family) else 1
        fig = Figure(figsize=(self.width / 100, self.height / 100), dpi=100)
        self._canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, panels, 1)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("iteration")
        ax.set_ylabel("f(x)")
        (self._line,) = ax.plot([], [], "-o", ms=2, lw=1, animated=True)
        ax.set_title(" ", fontsize=9)  # keeps the title's room in the layout; stamped per frame
        self._panel: tuple[int, int, int, int] | None = None
        if panels == 2:
            ax2 = fig.add_subplot(1, 2, 2)
            ax2.set_xticks([])
            ax2.set_yticks([])
            ax2.set_title("data and decision regions", fontsize=9)
        fig.tight_layout()
        self._canvas.draw()  # animated artists are left out: this is the background
        self._background = self._canvas.copy_from_bbox(fig.bbox)
        h = self._canvas.get_width_height()[1]
        box, title = ax.get_window_extent(), ax.title.get_window_extent()
        # where the numbers go, as array (row, column) anchors: title centred above the
        # curve panel, the range at its top-left and bottom-left corners inside
        self._anchors = {"title": (int(h - title.y0), int((box.x0 + box.x1) / 2)),
                         "hi": (int(h - box.y1) + 3, int(box.x0) + 4),
                         "lo": (int(h - box.y0) - 3, int(box.x0) + 4)}
        self._font = _Font()
        if panels == 2:
            # the data panel's inside in array rows/columns (inside its frame lines)
            box = ax2.get_window_extent()
            self._panel = (int(np.ceil(h - box.y1)) + 1, int(np.floor(h - box.y0)) - 1,
                           int(np.ceil(box.x0)) + 1, int(np.floor(box.x1)) - 1)
        self._fig = fig

    # ------------------------------------------------------------------ one frame
    def frame(
        self, data: Mapping[str, torch.Tensor], x: torch.Tensor, f_history: Sequence[float]
    ) -> np.ndarray:
        """An RGB frame (uint8, [height, width, 3]) of one run."""
        if self._fig is None:
            self._build()
        self._canvas.restore_region(self._background)
        texts = self._draw_curve(np.asarray(f_history, dtype=np.float64))
        self._fig.draw_artist(self._line)
        out = np.asarray(self._canvas.buffer_rgba())[..., :3].copy()
        font = self._font
        row, col = self._anchors["title"]
        font.stamp(out, texts["title"], 9, row, col, valign="bottom", halign="center")
        row, col = self._anchors["hi"]
        font.stamp(out, texts["hi"], 7, row, col, valign="top", halign="left")
        row, col = self._anchors["lo"]
        font.stamp(out, texts["lo"], 7, row, col, valign="bottom", halign="left")
        if self._panel is not None:
            self._paint_data(out, data, x)
        return out

    def _draw_curve(self, fs: np.ndarray) -> dict[str, str]:
        """The objective curve scaled into the unit axes (on a log scale when every finite f is
        positive); returns the texts: the title (step and f) and the range for the corners."""
        finite = np.isfinite(fs)
        log = bool(finite.any() and (fs[finite] > 0).all())
        ys = np.log10(fs[finite]) if log else fs[finite]
        t = max(len(fs) - 1, 0)
        if len(ys):
            lo, hi = float(ys.min()), float(ys.max())
            span = hi - lo if hi > lo else 1.0
            self._line.set_data(0.02 + 0.96 * np.flatnonzero(finite) / max(t, 1),
                                0.05 + 0.9 * (ys - lo) / span)
            scale = ", log scale" if log else ""
            hi_text, lo_text = f"{fs[finite].max():.4g}{scale}", f"{fs[finite].min():.4g}"
        else:
            self._line.set_data([], [])
            hi_text = lo_text = ""
        last = f", f = {fs[-1]:.4g}" if len(fs) else ""
        return {"title": f"{self.family.name}: t = {t}{last}", "hi": hi_text, "lo": lo_text}

    def _paint_data(self, out: np.ndarray, data: Mapping[str, torch.Tensor],
                    x: torch.Tensor) -> None:
        """The 2-D data points on the decision regions of the current iterate, painted into
        the data panel of ``out`` (nearest-neighbour regions on a GRID × GRID grid)."""
        assert self._panel is not None
        r0, r1, c0, c1 = self._panel
        pts = data["X"][0].detach().cpu().double()
        lab = data["y"][0].detach().cpu().numpy() >= 0.5
        lo, hi = pts.min(0).values - 1.0, pts.max(0).values + 1.0
        gx, gy = torch.meshgrid(
            torch.linspace(float(lo[0]), float(hi[0]), GRID, dtype=torch.float64),
            torch.linspace(float(lo[1]), float(hi[1]), GRID, dtype=torch.float64),
            indexing="xy",
        )
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1).unsqueeze(0)
        xx = x.detach().cpu().double().reshape(1, -1)
        vals = self.family.decision_values(xx, grid)[0].reshape(GRID, GRID).numpy()
        positive = np.nan_to_num(vals, nan=0.0) > 0  # [row = y index, column = x index]
        rows, cols = r1 - r0, c1 - c0
        yi = ((rows - 1 - np.arange(rows)) * GRID // rows)[:, None]  # top row = largest y
        xi = (np.arange(cols) * GRID // cols)[None, :]
        out[r0:r1, c0:c1] = _REGIONS[positive[yi, xi].astype(np.int64)]
        # the points: discs of radius 2 px, class 0 first so class 1 stays visible on top
        p = pts.numpy()
        px = c0 + np.round((p[:, 0] - float(lo[0])) / float(hi[0] - lo[0]) * (cols - 1))
        py = r1 - 1 - np.round((p[:, 1] - float(lo[1])) / float(hi[1] - lo[1]) * (rows - 1))
        for cls in (False, True):
            sel = lab == cls
            rr = (py[sel, None] + _DISC[None, :, 0]).astype(np.int64).ravel()
            cc = (px[sel, None] + _DISC[None, :, 1]).astype(np.int64).ravel()
            inside = (rr >= r0) & (rr < r1) & (cc >= c0) & (cc < c1)
            out[rr[inside], cc[inside]] = _POINTS[int(cls)]


class _Font:
    """Text stamped into a frame with FreeType (matplotlib's own font engine and default font),
    black, anti-aliased: a string costs well under a millisecond, a matplotlib Text artist
    several."""

    def __init__(self) -> None:
        from matplotlib import font_manager, ft2font

        self._face = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))

    def stamp(self, out: np.ndarray, text: str, size: float, row: int, col: int, *,
              valign: str, halign: str) -> None:
        """Darken ``out`` with ``text`` at ``size`` points, its box's ``valign`` edge ("top"
        or "bottom") at ``row`` and its ``halign`` point ("left", "center", "right") at
        ``col``; clipped to the frame."""
        if not text:
            return
        face = self._face
        face.set_size(size, 100)
        face.set_text(text, 0.0)
        face.draw_glyphs_to_bitmap(antialiased=True)
        alpha = np.asarray(face.get_image(), dtype=np.float32) / 255.0
        h, w = alpha.shape
        top = row if valign == "top" else row - h
        left = {"left": col, "center": col - w // 2, "right": col - w}[halign]
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + h, out.shape[0]), min(left + w, out.shape[1])
        if r1 <= r0 or c1 <= c0:
            return
        a = alpha[r0 - top : r1 - top, c0 - left : c1 - left, None]
        out[r0:r1, c0:c1] = np.round(out[r0:r1, c0:c1] * (1.0 - a)).astype(np.uint8)


def _colours(names: Sequence[str]) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.round(np.asarray([to_rgb(c) for c in names]) * 255).astype(np.uint8)


_REGIONS = _colours(REGION_COLOURS)
_POINTS = _colours(POINT_COLOURS)
#: Pixel offsets of a disc of radius 2.
_DISC = np.array([(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)
                  if dr * dr + dc * dc <= 5])


def render_ansi(t: int, f: float, f0: float, grad_norm: float) -> str:
    """One text line per frame."""
    return f"t={t:4d}  f={f:.6g}  f0={f0:.6g}  |grad|={grad_norm:.4g}\n"
