"""Headless pictures of an optimisation run (``render_mode="rgb_array"`` / ``"ansi"``).

The picture shows the objective curve so far and, for families whose data points are 2-D
(LogisticRegression with dim=2, NeuralNet), the data with the current decision boundary, as in
Li & Malik's 2-D figures. Matplotlib's Agg backend draws off-screen, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from optenv.families.base import ObjectiveFamily

__all__ = ["render_ansi", "render_rgb"]


def _has_2d_data(family: ObjectiveFamily) -> bool:
    return getattr(family, "input_dim", None) == 2 and hasattr(family, "decision_values")


def render_rgb(
    family: ObjectiveFamily,
    data: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    f_history: Sequence[float],
    *,
    width: int = 640,
    height: int = 320,
) -> np.ndarray:
    """An RGB frame (uint8, [height, width, 3]) of one run; ``data``/``x`` are one instance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if _has_2d_data(family) else 1
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    fs = np.asarray(f_history, dtype=np.float64)
    finite = np.isfinite(fs)
    ax.plot(np.arange(len(fs))[finite], fs[finite], "-o", ms=2, lw=1)
    if finite.any() and (fs[finite] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("f(x)")
    ax.set_title(f"{family.name}: f = {fs[-1]:.4g}" if len(fs) else family.name, fontsize=9)
    if panels == 2:
        ax2 = fig.add_subplot(1, 2, 2)
        pts = data["X"][0].detach().cpu().double()
        lab = data["y"][0].detach().cpu().numpy()
        lo, hi = pts.min(0).values - 1.0, pts.max(0).values + 1.0
        gx, gy = torch.meshgrid(
            torch.linspace(float(lo[0]), float(hi[0]), 80, dtype=torch.float64),
            torch.linspace(float(lo[1]), float(hi[1]), 80, dtype=torch.float64),
            indexing="xy",
        )
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1).unsqueeze(0)
        xx = x.detach().cpu().double().reshape(1, -1)
        vals = family.decision_values(xx, grid)[0].reshape(gx.shape).numpy()
        vals = np.nan_to_num(vals, nan=0.0, posinf=1e6, neginf=-1e6)
        ax2.contourf(gx.numpy(), gy.numpy(), vals > 0, levels=[-0.5, 0.5, 1.5],
                     colors=["#cfe0f3", "#f6d5cf"], alpha=0.8)
        if vals.min() < 0 < vals.max():
            ax2.contour(gx.numpy(), gy.numpy(), vals, levels=[0.0], colors="k", linewidths=1)
        p = pts.numpy()
        ax2.scatter(p[lab < 0.5, 0], p[lab < 0.5, 1], s=8, c="#1f77b4")
        ax2.scatter(p[lab >= 0.5, 0], p[lab >= 0.5, 1], s=8, c="#d62728")
        ax2.set_title("data and decision boundary", fontsize=9)
    fig.tight_layout()
    canvas.draw()
    frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return frame


def render_ansi(t: int, f: float, f0: float, grad_norm: float) -> str:
    """One text line per frame."""
    return f"t={t:4d}  f={f:.6g}  f0={f0:.6g}  |grad|={grad_norm:.4g}\n"
