"""The SB3 callback of ``optenv train ALGO``: the log, the checkpoints and the curves of a run.

Kept apart from :mod:`baselines.sb3_train` because it subclasses SB3's ``BaseCallback`` and so
imports Stable-Baselines3, which is slow to import: the trainer imports this module only when it
trains, so ``optenv train --help`` does not pay for it.

Like SB3's own callbacks, :class:`RunCallback` stores its arguments when built and allocates
what it needs (the progress bar, the step counters) when training starts. Checkpoints are taken
at rollout starts, i.e. after the previous rollout's gradient updates (see
:mod:`baselines.sb3_train`). A checkpoint holds the model (SB3's zip, in memory), the
VecNormalize statistics, the filled part of the replay buffer (:func:`replay_buffer_state`), the
step count, the wall time and the episode count.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from baselines.sb3_policy import normalization_state, save_artifacts

__all__ = ["CURVES", "EpisodeWindow", "RunCallback", "replay_buffer_state",
           "restore_replay_buffer"]

#: log.csv panels drawn into curves.png.
CURVES = ("mean_return", "mean_final_f", "diverged")


def replay_buffer_state(rb: Any) -> dict[str, Any] | None:
    """The filled part of an SB3 replay buffer (None for none).

    ``save_replay_buffer`` pickles the whole preallocated arrays: 550 MB for SAC's 300k-entry
    buffer on LogisticRegression however little is filled, rewritten at every checkpoint. Only
    rows ``[:pos]`` (all rows once the ring has wrapped) are data, so only those are kept, as
    tensors (a checkpoint holds nothing but tensors and plain data: it loads with
    ``weights_only=True``).
    """
    if rb is None:
        return None
    n = rb.buffer_size if rb.full else rb.pos
    arrays = {k: torch.from_numpy(v[:n].copy()) for k, v in vars(rb).items()
              if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == rb.buffer_size}
    return {"pos": int(rb.pos), "full": bool(rb.full), "buffer_size": int(rb.buffer_size),
            "arrays": arrays}


def restore_replay_buffer(rb: Any, state: Mapping[str, Any]) -> None:
    """Put :func:`replay_buffer_state`'s rows back into a buffer of the same size."""
    if int(state["buffer_size"]) != rb.buffer_size:
        raise ValueError(f"--resume: the checkpoint's replay buffer holds "
                         f"{state['buffer_size']} rows per env, the model's {rb.buffer_size}")
    for key, rows in state["arrays"].items():
        getattr(rb, key)[:len(rows)] = rows.numpy() if isinstance(rows, torch.Tensor) else rows
    rb.pos, rb.full = int(state["pos"]), bool(state["full"])


@dataclass
class EpisodeWindow:
    """The episodes finished since the last log row (their returns, the final f of those that
    ran to the horizon, how many diverged) and the run's episode count."""

    episodes: int = 0
    returns: list[float] = field(default_factory=list)
    finals: list[float] = field(default_factory=list)
    diverged: int = 0

    def add(self, dones: Any, infos: Sequence[Mapping[str, Any]]) -> None:
        """Count the episodes that ended in this env step (``dones``/``infos`` from SB3)."""
        for i in np.flatnonzero(np.asarray(dones)):
            info = infos[i]
            ep = info.get("episode")
            if ep is not None:
                self.returns.append(float(ep["r"]))
            f = float(info.get("f", math.nan))
            truncated = bool(info.get("TimeLimit.truncated", False))
            if truncated and math.isfinite(f):
                self.finals.append(f)
            else:  # terminated = diverged (the env's only termination)
                self.diverged += 1
            self.episodes += 1

    def row(self, timesteps: int, wall_s: float) -> dict[str, Any]:
        """The log row of the window (None where it holds no episode), which then starts
        afresh."""
        n = len(self.finals) + self.diverged
        row = {
            "timesteps": timesteps,
            "episodes": self.episodes,
            "window_episodes": n,
            "mean_return": float(np.mean(self.returns)) if self.returns else None,
            "mean_final_f": float(np.mean(self.finals)) if self.finals else None,
            "diverged": self.diverged / n if n else None,
            "wall_s": round(wall_s, 3),
        }
        self.returns, self.finals, self.diverged = [], [], 0
        return row


class RunCallback(BaseCallback):
    """Collects finished episodes each step; at rollout starts (after training on the previous
    rollout) appends log rows and writes checkpoints when their step is due.

    Args:
        run_dir: the run folder (:class:`optenv.runs.RunDir`).
        log: the log rows so far (a resumed run's), appended to in place.
        total: the run's total env steps (the progress bar's length).
        checkpoint_every: env steps between checkpoints.
        log_every: env steps between log rows.
        wall_s: wall time spent before (a resumed run's).
        episodes: episodes finished before (a resumed run's).
        progress: show a progress bar.
    """

    def __init__(self, run_dir: Any, log: list[dict[str, Any]], *, total: int,
                 checkpoint_every: int, log_every: int, wall_s: float = 0.0, episodes: int = 0,
                 progress: bool = False) -> None:
        super().__init__(verbose=0)
        self.run_dir, self.log = run_dir, log
        self.total, self.checkpoint_every, self.log_every = total, checkpoint_every, log_every
        self.wall0, self.t0 = wall_s, time.perf_counter()
        self.window = EpisodeWindow(episodes=episodes)
        self.progress = progress
        self.bar: Any = None
        self.last_t = self.next_log = self.next_ckpt = 0

    def _on_training_start(self) -> None:
        t = int(self.model.num_timesteps)
        self.last_t = t
        self.next_log = (t // self.log_every + 1) * self.log_every
        self.next_ckpt = (t // self.checkpoint_every + 1) * self.checkpoint_every
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=t, desc=type(self.model).__name__,
                        unit="step", disable=not self.progress, file=sys.stderr,
                        dynamic_ncols=True)

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None:
            self.window.add(dones, self.locals.get("infos") or [])
        t = int(self.model.num_timesteps)
        if self.bar is not None:
            self.bar.update(t - self.last_t)
            if self.window.finals:
                self.bar.set_postfix_str(f"final f {np.mean(self.window.finals[-100:]):.4g}",
                                         refresh=False)
        self.last_t = t
        return True

    def _on_rollout_start(self) -> None:
        t = int(self.model.num_timesteps)
        if t >= self.next_log:
            self.add_row()
            self.next_log = (t // self.log_every + 1) * self.log_every
        if t >= self.next_ckpt:
            self.save()
            self.next_ckpt = (t // self.checkpoint_every + 1) * self.checkpoint_every

    def wall(self) -> float:
        """Wall time of the run so far, earlier sessions included."""
        return self.wall0 + time.perf_counter() - self.t0

    def add_row(self) -> None:
        """A log row for the episodes since the last one (none twice at one step)."""
        t = int(self.model.num_timesteps)
        if self.log and int(self.log[-1]["timesteps"]) >= t:
            return
        self.log.append(self.window.row(t, self.wall()))
        # log.csv follows every row (not only checkpoints) so a long run can be watched;
        # on --resume the checkpoint's copy of the log is the one that continues.
        self.run_dir.write_log(self.log)

    def save(self) -> None:
        """The checkpoint, the evaluable artifacts and the curves."""
        model = self.model
        buf = io.BytesIO()
        model.save(buf)
        replay = replay_buffer_state(getattr(model, "replay_buffer", None))
        venv = model.get_vec_normalize_env()
        state = {"model": buf.getvalue(), "vecnormalize": normalization_state(venv),
                 "replay_buffer": replay, "num_timesteps": int(model.num_timesteps),
                 "wall_s": self.wall(), "episodes": self.window.episodes}
        self.run_dir.save(state, self.log)
        save_artifacts(self.run_dir.path, model, venv)
        if self.log:
            self.run_dir.plot(self.log, CURVES, x="timesteps")

    def finish(self) -> None:
        """The last row, checkpoint, artifacts and curves (also for a run already done)."""
        if self.bar is not None:
            self.bar.close()
        self.add_row()
        self.save()
