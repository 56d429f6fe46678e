"""Run folders: what every ``optenv train ALGO`` run shares — its folder, checkpoints, resume,
lock, log.

The trainers (``gps.train``, ``baselines.bptt_train``, ``baselines.sb3_train``) build on this;
the ``optenv train`` dispatcher that offers them lives in the application layer
(:mod:`optenv.lab.train`).

Layout of a run folder (``--out DIR``), the same for GPS, BPTT and the SB3 agents::

    DIR/config.json      the run's configuration (algorithm, env id, hyper-parameters, seed),
                         and under "resumed" what each resume changed (e.g. --iterations)
    DIR/checkpoint.pt    everything needed to continue: model, optimiser, duals, RNG states (as
                         tensors), the log so far (as JSON); checksummed, read with
                         weights_only=True; rewritten atomically after every iteration
    DIR/log.csv          one row per iteration (rewritten atomically with the checkpoint)
    DIR/curves.png       the training curves
    DIR/<artifact>       the trained optimiser, loadable by ``optenv compare --methods ALGO:DIR``
    DIR/.optenv.lock     present while a run holds the folder (:mod:`optenv.locks`)

``--resume`` reloads ``checkpoint.pt`` and continues, losing at most the iteration that was
running. A folder that already holds a checkpoint is never overwritten without ``--resume``;
resuming with a different configuration, or from a corrupt checkpoint, is a ValueError and
changes nothing (the checkpoint is read and checked before ``config.json`` is rewritten). A
folder with a ``config.json`` but no checkpoint (a run killed or failed before its first one,
or with nothing to do) holds nothing to lose: ``--resume`` starts it afresh with its saved
configuration, and a new run may take the folder over. Only one process runs in a folder at a
time: :class:`RunDir` holds the folder's lock (:class:`optenv.locks.FolderLock`) until
:meth:`RunDir.close`, and a second process is refused.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from optenv.checkpoint import (
    CHECKSUM_KEY,
    UnsafeFileError,
    atomic_write,
    read_json_object,
    read_payload,
    save_tagged,
)
from optenv.locks import LOCK_FILE, FolderLock
from optenv.validation import check_int

__all__ = ["CHECKPOINT_FORMAT", "LEGACY_CHECKPOINT_FORMAT", "RunDir", "run_threads",
           "torch_threads"]

#: The tag inside every run's checkpoint.pt (its old module name is kept in the tag). Version 2:
#: a checksum, and the log as JSON text.
CHECKPOINT_FORMAT = "optenv.training.checkpoint/2"
#: Checkpoints of optenv 0.1 (the log as a list of dicts, no checksum): still resumed where they
#: hold only tensors and plain data (GPS, BPTT, PPO), refused with a way forward otherwise.
LEGACY_CHECKPOINT_FORMAT = "optenv.training.checkpoint/1"
#: The config.json key that records what each resume changed.
RESUMED_KEY = "resumed"


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
        saved = read_json_object(Path(out) / "config.json", "--resume")
    except ValueError:
        return None  # RunDir reports a missing or unreadable run in its own words
    value = saved.get("threads")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 \
        else None


class RunDir:
    """One training run's folder (see the module docstring for the layout), locked while open.

    Everything is checked before anything in the folder changes: the saved configuration, the
    checkpoint (read, checksum verified, then handed to ``prepare``), and only then is
    ``config.json`` written. Use it as a context manager (or call :meth:`close`) so the
    folder's lock is released when the run ends.

    Args:
        out: the folder.
        config: the run's configuration (JSON-serialisable). A new run writes it; a resumed
            run must match the saved one, except for keys in ``resumable_keys``, whose changes
            are recorded in ``config.json`` under ``"resumed"``.
        resume: continue the run in ``out`` instead of starting one. Without a checkpoint (the
            run stopped before its first), it starts afresh with the saved configuration.
        resumable_keys: configuration keys that may change on resume (e.g. ``iterations``,
            ``device``).
        explain: given the saved configuration, this run's and the keys that differ, a hint
            for the refusal (e.g. which preset flag the saved run used), or None.
        prepare: called once the folder is checked and before anything in it is written, with
            the checkpoint's state (e.g. an agent's ``load_state_dict``), or None for a fresh
            start (e.g. to build the model, which checks its hyper-parameters); a ValueError
            from it changes nothing.

    Attributes:
        resuming: True if a checkpoint was read (:meth:`load` gives it), False for a fresh
            start.
    """

    def __init__(self, out: str | os.PathLike[str], config: Mapping[str, Any], *,
                 resume: bool = False, resumable_keys: Sequence[str] = (),
                 prepare: Callable[[dict[str, Any] | None], Any] | None = None,
                 explain: Callable[[dict[str, Any], dict[str, Any], list[str]], str | None]
                 | None = None) -> None:
        self.path = Path(out)
        self._explain = explain
        self.config = json.loads(json.dumps(dict(config)))
        self.resuming = False
        self._state: dict[str, Any] = {}
        self._log: list[dict[str, Any]] = []
        if resume and not self.config_path.is_file():
            detail = (" (its checkpoint.pt has no config.json beside it)"
                      if self.checkpoint_path.exists() else "")
            raise ValueError(f"--resume: {str(self.path)!r} holds no run to resume{detail}; "
                             "allowed: the --out folder of an optenv train run")
        created = not self.path.exists()
        self._check_writable()
        self._lock = FolderLock(self.path)
        try:
            self._open(resume, tuple(resumable_keys), prepare)
        except BaseException:
            self._lock.release()
            if created:  # a folder made for a run that could not start goes again
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            raise

    def _open(self, resume: bool, resumable_keys: tuple[str, ...],
              prepare: Callable[[dict[str, Any] | None], Any] | None) -> None:
        """The checks and the config.json write, under the folder's lock."""
        has_checkpoint = self.checkpoint_path.exists()
        saved: dict[str, Any] | None = None
        if resume:
            saved = read_json_object(self.config_path, "--resume")
            history = self._check_resumable(saved, resumable_keys)
            if has_checkpoint:
                self._state, self._log = self._read_checkpoint()
                self.resuming = True
                changed = {k: [saved.get(k), self.config.get(k)] for k in resumable_keys
                           if saved.get(k) != self.config.get(k)}
                if changed:
                    history.append({"log_rows": len(self._log), "changed": changed})
            else:
                print(f"optenv: {str(self.path)!r} has no checkpoint yet (the run stopped before "
                      "its first): starting it from the beginning", file=sys.stderr)
            if history:
                self.config[RESUMED_KEY] = history
        elif has_checkpoint:
            raise ValueError(f"--out: {str(self.path)!r} already holds a run; pass --resume "
                             "to continue it, or choose another folder")
        else:
            others = sorted(p.name for p in self.path.iterdir()
                            if p.name not in (LOCK_FILE, self.config_path.name))
            if others:  # another tool's output (a comparison, a study): not a run's folder
                raise ValueError(f"--out: {str(self.path)!r} holds other files ("
                                 f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}"
                                 "); allowed: a new or empty folder, or --resume for a run there")
        if prepare is not None:
            prepare(self._state if self.resuming else None)
        if self.config != saved:
            atomic_write(self.config_path,
                         lambda fh: fh.write(json.dumps(self.config, indent=1) + "\n"))

    def _check_resumable(self, saved: dict[str, Any], resumable_keys: tuple[str, ...]
                         ) -> list[Any]:
        """ValueError if ``saved`` (config.json) and this run's config differ outside
        ``resumable_keys``; returns the saved record of earlier resumes."""
        history = saved.get(RESUMED_KEY, [])
        history = list(history) if isinstance(history, list) else []
        keys = (set(saved) | set(self.config)) - {RESUMED_KEY}
        changed = sorted(k for k in keys
                         if k not in resumable_keys and saved.get(k) != self.config.get(k))
        if changed:
            detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {self.config.get(k)!r}"
                               for k in changed)
            hint = self._explain(saved, self.config, changed) if self._explain else None
            raise ValueError(f"--resume: the configuration differs from the saved run in "
                             f"{str(self.path)!r} ({detail}); allowed to change: "
                             f"{', '.join(resumable_keys) or 'nothing'}"
                             + (f" ({hint})" if hint else ""))
        return history

    def _read_checkpoint(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(state, log) of checkpoint.pt, read with weights_only and its checksum verified;
        a ValueError that says how to go on otherwise."""
        path = self.checkpoint_path
        what = "an optenv checkpoint"
        try:
            payload = read_payload(path, what)
        except UnsafeFileError as err:
            raise ValueError(f"--resume: {str(err).removeprefix('path: ')}. It is probably a "
                             "checkpoint of optenv 0.1 (SAC and TD3 kept their replay buffer "
                             "as numpy arrays); to go on, resume it with the optenv that wrote "
                             "it, or start a new run in another folder") from err
        except ValueError as err:
            raise ValueError(f"--resume: {str(err).removeprefix('path: ')}; to go on, restore an "
                             "intact copy of it, or start a new run in another folder") from err
        fmt = payload.get("format")
        try:
            if fmt == CHECKPOINT_FORMAT and CHECKSUM_KEY in payload:
                log = json.loads(payload["log_json"])
            elif fmt == LEGACY_CHECKPOINT_FORMAT:
                log = payload["log"]
            else:
                raise ValueError(f"format {fmt!r}, allowed: {CHECKPOINT_FORMAT!r} (with its "
                                 f"checksum) or {LEGACY_CHECKPOINT_FORMAT!r}")
            state = payload["state"]
            if not isinstance(state, dict) or not isinstance(log, list) \
                    or not all(isinstance(row, dict) for row in log):
                raise ValueError("its state or log has the wrong type")
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"--resume: {str(path)!r} is not {what} ({err})") from err
        return state, log

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
        """Checkpoint ``state`` (tensors and plain data) and the log rows so far (as JSON
        text), checksummed, then rewrite log.csv (both atomic)."""
        save_tagged(self.checkpoint_path, CHECKPOINT_FORMAT,
                    {"config": self.config, "state": dict(state),
                     "log_json": json.dumps(list(log), default=_plain)})
        self.write_log(log)

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(state, log) of the checkpoint read when the folder was opened (``resuming``);
        ``({}, [])`` for a fresh start."""
        return self._state, list(self._log)

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        self._lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

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


def _plain(value: Any) -> Any:
    """JSON for the numpy and torch scalars a log row may hold (``json.dumps`` default)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    raise TypeError(f"log: a {type(value).__name__} is not JSON; allowed: numbers, strings, "
                    "None and lists of them")
