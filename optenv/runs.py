"""Run folders: what every ``optenv train ALGO`` run shares — its folder, checkpoints, resume, log.

The trainers (``gps.train``, ``baselines.bptt_train``, ``baselines.sb3_train``) build on this;
the ``optenv train`` dispatcher that offers them lives in the application layer
(:mod:`optenv.lab.train`).

Layout of a run folder (``--out DIR``), the same for GPS, BPTT and the SB3 agents::

    DIR/config.json      the run's configuration (algorithm, env id, hyper-parameters, seed)
    DIR/checkpoint.pt    everything needed to continue: model, optimiser, duals, RNG states,
                         the log so far; rewritten atomically after every iteration
    DIR/log.csv          one row per iteration (rewritten atomically with the checkpoint)
    DIR/curves.png       the training curves
    DIR/<artifact>       the trained optimiser, loadable by ``optenv compare --methods ALGO:DIR``

``--resume`` reloads ``checkpoint.pt`` and continues, losing at most the iteration that was
running. A folder that already holds a run is never overwritten without ``--resume``; resuming
with a different configuration, or from a corrupt checkpoint, is a ValueError and changes
nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optenv.checkpoint import atomic_write, load_tagged, save_tagged
from optenv.validation import check_int

__all__ = ["CHECKPOINT_FORMAT", "RunDir", "run_threads", "torch_threads"]

#: The tag inside every run's checkpoint.pt (its old module name is kept in the tag, so the
#: checkpoints written before this module was renamed still resume).
CHECKPOINT_FORMAT = "optenv.training.checkpoint/1"


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``n`` torch CPU threads inside the block (None: leave torch's setting), restored after,
    so a trainer called from Python does not change its caller's thread count."""
    import torch

    n = check_int("threads", n, 1, optional=True)
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_threads(out: str | os.PathLike[str], threads: int | None, resume: bool) -> int | None:
    """The thread count a run should use: ``threads`` if given; when resuming without it, the
    count the run's ``config.json`` recorded (the order of the CPU's parallel sums, and so the
    numbers, depend on it); else None (torch's default)."""
    if threads is not None or not resume:
        return threads
    try:
        saved = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # RunDir reports a missing or unreadable run in its own words
    value = saved.get("threads") if isinstance(saved, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 \
        else None


class RunDir:
    """One training run's folder (see the module docstring for the layout).

    Args:
        out: the folder.
        config: the run's configuration (JSON-serialisable). A new run writes it; a resumed
            run must match the saved one, except for keys in ``resumable_keys``.
        resume: continue the run in ``out`` instead of starting one.
        resumable_keys: configuration keys that may change on resume (e.g. ``iterations``,
            ``device``).
    """

    def __init__(self, out: str | os.PathLike[str], config: Mapping[str, Any], *,
                 resume: bool = False, resumable_keys: Sequence[str] = ()) -> None:
        self.path = Path(out)
        self.config = json.loads(json.dumps(dict(config)))
        has_run = self.checkpoint_path.exists() or self.config_path.exists()
        saved: dict[str, Any] | None = None
        if resume:
            if not self.checkpoint_path.exists():
                raise ValueError(f"--resume: {str(self.path)!r} holds no checkpoint.pt to resume")
            saved = json.loads(self.config_path.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(saved) | set(self.config)
                             if k not in resumable_keys and saved.get(k) != self.config.get(k))
            if changed:
                detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {self.config.get(k)!r}"
                                   for k in changed)
                raise ValueError(f"--resume: the configuration differs from the saved run in "
                                 f"{str(self.path)!r} ({detail}); allowed to change: "
                                 f"{', '.join(resumable_keys) or 'nothing'}")
        else:
            if has_run:
                raise ValueError(f"--out: {str(self.path)!r} already holds a run; pass --resume "
                                 "to continue it, or choose another folder")
            self._check_writable()
        if not resume or self.config != saved:
            atomic_write(self.config_path,
                         lambda fh: fh.write(json.dumps(self.config, indent=1) + "\n"))

    def _check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--out: cannot create {str(self.path)!r} ({err.strerror}); "
                             "allowed: a folder you can write to") from err
        if not os.access(self.path, os.W_OK):
            raise ValueError(f"--out: {str(self.path)!r} is not writable; allowed: a folder you "
                             "can write to")

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.path / "log.csv"

    def save(self, state: Mapping[str, Any], log: Sequence[Mapping[str, Any]]) -> None:
        """Checkpoint ``state`` and the log rows so far, then rewrite log.csv (both atomic)."""
        save_tagged(self.checkpoint_path, CHECKPOINT_FORMAT,
                    {"config": self.config, "state": dict(state), "log": list(log)})
        self.write_log(log)

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(state, log) from the checkpoint; ValueError if it is corrupt or of another run."""
        payload = load_tagged(self.checkpoint_path, CHECKPOINT_FORMAT, "an optenv checkpoint",
                              weights_only=False)
        return payload["state"], list(payload["log"])

    def write_log(self, log: Sequence[Mapping[str, Any]]) -> None:
        """log.csv from the rows (columns: the union of keys, first-seen order)."""
        columns: list[str] = []
        for row in log:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(log)
        atomic_write(self.log_path, lambda fh: fh.write(buf.getvalue()))

    def plot(self, log: Sequence[Mapping[str, Any]], keys: Sequence[str],
             x: str = "iteration") -> Path:
        """curves.png: one panel per key against ``x`` (log scale where all values are > 0)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4 * len(keys), 3.2))
        FigureCanvasAgg(fig)
        xs = [row.get(x, i) for i, row in enumerate(log)]
        for i, key in enumerate(keys):
            ax = fig.add_subplot(1, len(keys), i + 1)
            ys = [float(row[key]) if row.get(key) is not None else math.nan for row in log]
            ax.plot(xs, ys, "-o", ms=2)
            finite = [y for y in ys if math.isfinite(y)]
            if finite and min(finite) > 0:
                ax.set_yscale("log")
            ax.set_xlabel(x)
            ax.set_title(key, fontsize=9)
        fig.tight_layout()
        return atomic_write(self.path / "curves.png",
                            lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
