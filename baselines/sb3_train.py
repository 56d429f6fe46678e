"""``optenv train ppo|sac|td3|recurrent-ppo``: Stable-Baselines3 agents on the optenv ids.

The general-purpose RL side of the papers' comparison: the optimiser is whatever policy PPO,
SAC, TD3 or RecurrentPPO (sb3-contrib; the state is a history, so a recurrent policy is the
natural extra) learn on the env, with no knowledge of the objective's structure.

Pipeline: the env id → N envs, either ``--vec batched`` (default: one
:class:`optenv.sb3.SB3VecEnv`, all N objectives stepped as one torch batch) or ``--vec dummy``
(SB3's ``DummyVecEnv`` over N ``gym.make`` envs, the path any Gymnasium env takes; both give the
same transitions for the same seed) → ``VecMonitor`` (episode returns) → ``VecNormalize`` when
the hyper-parameters say ``normalize``. Hyper-parameters per env id come from the rl-zoo3 style
YAML files shipped in ``baselines/hyperparams`` (see :mod:`baselines.sb3_hyperparams`);
``--conf-file`` and ``--hyperparams KEY=VALUE`` change them.

The run folder is :class:`optenv.runs.RunDir`'s: ``config.json``; ``checkpoint.pt`` with the
model, the VecNormalize statistics, the replay buffer (SAC/TD3) and the log, rewritten
atomically every ``--checkpoint-every`` steps by an SB3 callback; ``log.csv`` (timesteps,
episodes, mean episode return, mean final f, fraction diverged, wall time); ``curves.png``;
and the evaluable artifacts ``model.zip`` (SB3's format: ``PPO.load`` reads it) and
``vecnormalize.pt`` (plain tensors). ``--resume`` continues from the checkpoint with
``reset_num_timesteps=False``, so the step count, schedules and log carry on.

Checkpoints are taken at rollout starts, i.e. after the previous rollout's gradient updates,
so a checkpoint never holds a model that has collected data it has not trained on; resuming
loses at most the rollout that was running. The env is reseeded with ``seed + timesteps`` on
resume (new objectives, not a replay of the first ones); a resumed run is therefore not
bit-identical to an uninterrupted one.

CPU notes: training uses one torch thread by default (``--threads``). The networks are small
(64-400 units, minibatches of 256-640), so intra-op threads buy little even on an idle machine,
and on a busy one (the test suite, other jobs) they wait on each other: a tiny SAC run took
18 s with torch's default 2 threads on this 2-core CPU under load, 0.3 s with 1. TD3's (and to
a lesser degree SAC's) networks and Adam state drift into denormal floats, which made TD3 about
8x slower (measured: 73 vs 630 env steps/s); training runs with ``torch.set_flush_denormal``.

Example::

    optenv train ppo --env optenv/LogisticRegression-v0 --steps 1000000 --out runs/ppo
    optenv compare --methods gd,adam,ppo:runs/ppo
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from baselines.sb3_hyperparams import (
    ALGORITHMS,
    Hyperparams,
    algorithm_class,
    load_hyperparams,
    parse_override,
)
from baselines.sb3_policy import (
    SB3Optimizer,
    load_ppo,
    load_recurrent_ppo,
    load_run,
    load_sac,
    load_td3,
    normalization_state,
    restore_normalization,
    save_artifacts,
)
from optenv.validation import parse_device

__all__ = [
    "VEC_MODES",
    "SB3Optimizer",
    "TrainResult",
    "add_train_parser",
    "load_ppo",
    "load_recurrent_ppo",
    "load_run",
    "load_sac",
    "load_td3",
    "make_venv",
    "run",
    "train",
]

VEC_MODES = ("batched", "dummy")
#: Configuration keys that may change on --resume (the rest must match the saved run).
RESUMABLE_KEYS = ("steps", "device", "checkpoint_every", "log_every")
#: log.csv panels drawn into curves.png.
CURVES = ("mean_return", "mean_final_f", "diverged")


def add_train_parser(subparsers: Any) -> None:
    """Add ``ppo``, ``sac``, ``td3`` and ``recurrent-ppo`` to ``optenv train``."""
    helps = {"ppo": "Stable-Baselines3 PPO", "sac": "Stable-Baselines3 SAC",
             "td3": "Stable-Baselines3 TD3", "recurrent-ppo": "sb3-contrib RecurrentPPO (LSTM)"}
    for name in ALGORITHMS:
        p = subparsers.add_parser(
            name, help=f"train {helps[name]} on an optenv id",
            description=f"Train {helps[name]} on an optenv env id with the packaged rl-zoo3 "
                        "style hyper-parameters; the result evaluates with 'optenv compare "
                        f"--methods {name}:DIR'.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--env", required=True, help="optenv env id")
        p.add_argument("--out", required=True, help="run folder")
        p.add_argument("--steps", type=int, default=None,
                       help="total env steps (default: the hyper-parameters' n_timesteps)")
        p.add_argument("--vec", choices=VEC_MODES, default=None,
                       help="batched: optenv.sb3.SB3VecEnv (one torch batch); dummy: SB3's "
                            "DummyVecEnv over gym.make envs (default: batched, or the run's)")
        p.add_argument("--num-envs", type=int, default=None,
                       help="parallel envs (default: the hyper-parameters' n_envs)")
        p.add_argument("--seed", type=int, default=None, help="seed (default 0, or the run's)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
        p.add_argument("--device", default="cpu", help="torch device of the networks")
        p.add_argument("--conf-file", default=None,
                       help="rl-zoo3 style YAML instead of the packaged one")
        p.add_argument("--hyperparams", nargs="+", default=None, metavar="KEY=VALUE",
                       help="override hyper-parameters, e.g. learning_rate=1e-3 n_steps=80")
        p.add_argument("--checkpoint-every", type=int, default=None,
                       help="env steps between checkpoints (default: max(10000, steps/10))")
        p.add_argument("--log-every", type=int, default=None,
                       help="env steps between log rows (default: max(1, steps/100))")
        p.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads while training (1: fastest for these small "
                            "networks, see the module docstring)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=run, sb3_algorithm=name)


@dataclass
class TrainResult:
    """What :func:`train` leaves: the model, its (normalising) training env, the log rows,
    the run folder."""

    model: Any
    venv: Any
    log: list[dict[str, Any]]
    out: Path


def run(args: argparse.Namespace) -> int:
    """The ``optenv train ALGO`` command; returns the exit status (0)."""
    overrides = dict(parse_override(item) for item in (args.hyperparams or ()))
    res = train(args.sb3_algorithm, args.env, args.out, steps=args.steps, vec=args.vec,
                num_envs=args.num_envs, seed=args.seed, resume=args.resume,
                device=args.device, conf_file=args.conf_file, overrides=overrides,
                checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                threads=args.threads, progress=not args.quiet)
    last = res.log[-1] if res.log else {}
    print(f"{args.sb3_algorithm} on {args.env}: {res.model.num_timesteps} steps, "
          f"mean final f {_fmt(last.get('mean_final_f'))} (train objectives, last "
          f"{last.get('window_episodes', 0)} episodes); wrote {res.out}")
    print(f"evaluate: optenv compare --env {args.env} --methods gd,adam,"
          f"{args.sb3_algorithm}:{res.out}")
    res.venv.close()
    return 0


def _fmt(v: Any) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.4g}"


def _check_int(flag: str, value: Any, low: int, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{flag}: got {value!r}, allowed: an int >= {low}")
    return int(value)


def _check_device(device: Any) -> str:
    return str(parse_device(device, "--device"))


def make_venv(env_id: str, vec: str, num_envs: int, seed: int,
              normalize: Mapping[str, Any] | None, gamma: float = 0.99) -> Any:
    """The SB3 training env: ``vec`` envs → VecMonitor → VecNormalize (if ``normalize``)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

    if vec == "batched":
        from optenv.sb3 import SB3VecEnv

        base: Any = SB3VecEnv(env_id, num_envs=num_envs)
    elif vec == "dummy":
        import gymnasium as gym

        base = DummyVecEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
    else:
        raise ValueError(f"--vec: got {vec!r}, allowed: {', '.join(VEC_MODES)}")
    venv: Any = VecMonitor(base)
    venv.seed(seed)
    if normalize is not None:
        venv = VecNormalize(venv, gamma=gamma, **normalize)
    return venv


def replay_buffer_state(rb: Any) -> dict[str, Any] | None:
    """The filled part of an SB3 replay buffer (None for none).

    ``save_replay_buffer`` pickles the whole preallocated arrays: 550 MB for SAC's 300k-entry
    buffer on LogisticRegression however little is filled, rewritten at every checkpoint. Only
    rows ``[:pos]`` (all rows once the ring has wrapped) are data, so only those are kept.
    """
    if rb is None:
        return None
    n = rb.buffer_size if rb.full else rb.pos
    arrays = {k: v[:n].copy() for k, v in vars(rb).items()
              if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == rb.buffer_size}
    return {"pos": int(rb.pos), "full": bool(rb.full), "buffer_size": int(rb.buffer_size),
            "arrays": arrays}


def restore_replay_buffer(rb: Any, state: Mapping[str, Any]) -> None:
    """Put :func:`replay_buffer_state`'s rows back into a buffer of the same size."""
    if int(state["buffer_size"]) != rb.buffer_size:
        raise ValueError(f"--resume: the checkpoint's replay buffer holds "
                         f"{state['buffer_size']} rows per env, the model's {rb.buffer_size}")
    for key, rows in state["arrays"].items():
        getattr(rb, key)[:len(rows)] = rows
    rb.pos, rb.full = int(state["pos"]), bool(state["full"])


@contextmanager
def _flush_denormals() -> Iterator[None]:
    """Denormal floats made TD3 ~8× slower on CPU (module docstring); flush them while
    training and restore torch's default (off) afterwards."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train(algorithm: str, env_id: str, out: str | Path, *, steps: int | None = None,
          vec: str | None = None, num_envs: int | None = None, seed: int | None = None,
          resume: bool = False, device: str = "cpu", conf_file: str | Path | None = None,
          overrides: Mapping[str, Any] | None = None, checkpoint_every: int | None = None,
          log_every: int | None = None, threads: int | None = 1,
          progress: bool = False) -> TrainResult:
    """Train (or with ``resume`` continue) an SB3 agent into run folder ``out``.

    Arguments mirror the command line (module docstring). Everything is validated before the
    folder is touched: a user error is a ValueError naming the flag.
    """
    import json

    from optenv.evaluate import resolve_env
    from optenv.runs import RunDir, torch_threads

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: got {algorithm!r}, allowed: {', '.join(ALGORITHMS)}")
    if not isinstance(env_id, str):
        raise ValueError(f"--env: got {env_id!r}, allowed: an optenv env id")
    try:
        _, family, _defaults = resolve_env(env_id)
    except ValueError as err:
        raise ValueError(f"--{err}") from err
    steps = _check_int("--steps", steps, 1)
    num_envs = _check_int("--num-envs", num_envs, 1)
    seed = _check_int("--seed", seed, 0)
    checkpoint_every = _check_int("--checkpoint-every", checkpoint_every, 1)
    log_every = _check_int("--log-every", log_every, 1)
    threads = _check_int("--threads", threads, 1)
    if vec is not None and vec not in VEC_MODES:
        raise ValueError(f"--vec: got {vec!r}, allowed: {', '.join(VEC_MODES)}")
    device = _check_device(device)
    out = Path(out)

    saved: dict[str, Any] = {}
    if resume and (out / "config.json").is_file():
        try:
            saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--resume: cannot read {str(out / 'config.json')!r} ({err})") \
                from err
    if saved and conf_file is None and not overrides and "hyperparams" in saved:
        raw = dict(saved["hyperparams"])  # the run's own, even if the packaged file changed
    else:
        raw = load_hyperparams(algorithm, env_id, conf_file, overrides)
    hp = Hyperparams(algorithm, raw, action_dim=family.d)
    vec = vec or saved.get("vec") or "batched"
    num_envs = num_envs or saved.get("num_envs") or hp.n_envs
    seed = seed if seed is not None else int(saved.get("seed", 0))
    steps = steps or saved.get("steps") or hp.n_timesteps
    checkpoint_every = checkpoint_every or saved.get("checkpoint_every") or max(10_000,
                                                                                steps // 10)
    log_every = log_every or saved.get("log_every") or max(1, steps // 100)
    config = {"algorithm": algorithm, "env": env_id, "vec": vec, "num_envs": num_envs,
              "seed": seed, "steps": steps, "device": device, "hyperparams": raw,
              "checkpoint_every": checkpoint_every, "log_every": log_every}
    run_dir = RunDir(out, config, resume=resume, resumable_keys=RESUMABLE_KEYS)

    cls = algorithm_class(algorithm)
    gamma = float(hp.model_kwargs.get("gamma", 0.99))
    state: dict[str, Any] = {}
    log: list[dict[str, Any]] = []
    if resume:
        state, log = run_dir.load()
    venv = make_venv(env_id, vec, num_envs, seed, hp.normalize, gamma)
    with _flush_denormals(), torch_threads(threads):
        if resume:
            model = cls.load(io.BytesIO(state["model"]), env=venv, device=device)
            if state.get("vecnormalize") is not None:
                restore_normalization(venv, state["vecnormalize"])
            replay = state.get("replay_buffer")
            if isinstance(replay, bytes):  # SB3's own pickle (early checkpoints wrote it)
                model.load_replay_buffer(io.BytesIO(replay))
            elif replay is not None:
                restore_replay_buffer(model.replay_buffer, replay)
            model.set_random_seed(seed + int(model.num_timesteps))
        else:
            model = cls(hp.policy, venv, seed=seed, device=device, verbose=0,
                        **hp.model_kwargs)
        model.set_logger(_silent_logger())
        callback = _make_callback(run_dir, log, total=steps, checkpoint_every=checkpoint_every,
                                log_every=log_every, wall_s=float(state.get("wall_s", 0.0)),
                                episodes=int(state.get("episodes", 0)), progress=progress)
        remaining = steps - int(model.num_timesteps)
        if remaining > 0:
            try:
                model.learn(total_timesteps=remaining, callback=callback,
                            reset_num_timesteps=not resume)
            except ValueError as err:  # e.g. NaN in the policy: not a user error
                raise RuntimeError(
                    f"{algorithm} training failed at step {model.num_timesteps} ({err}); the "
                    f"last checkpoint in {str(out)!r} is intact: fix the hyper-parameters or "
                    "--resume") from err
        else:
            callback.init_callback(model)
        callback.finish()
    return TrainResult(model=model, venv=venv, log=log, out=out)


def _silent_logger() -> Any:
    """An SB3 logger that writes nowhere. Without one, every ``learn`` call makes an empty
    ``SB3-<timestamp>`` folder in the system temp dir (SB3's default logger); this trainer
    keeps its own log.csv and curves in the run folder."""
    from stable_baselines3.common.logger import Logger

    return Logger(folder=None, output_formats=[])


def _make_callback(run_dir: Any, log: list[dict[str, Any]], *, total: int,
                 checkpoint_every: int, log_every: int, wall_s: float, episodes: int,
                 progress: bool) -> Any:
    """The SB3 callback that logs, checkpoints and draws curves (built lazily: SB3's import
    is heavy and ``optenv train --help`` should not pay for it)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class RunCallback(BaseCallback):
        """Collects finished episodes each step; at rollout starts (after training on the
        previous rollout) appends log rows and writes checkpoints when their step is due."""

        def __init__(self) -> None:
            super().__init__(verbose=0)
            self.run_dir, self.log = run_dir, log
            self.total, self.checkpoint_every, self.log_every = total, checkpoint_every, \
                log_every
            self.wall0, self.episodes = wall_s, episodes
            self.t0 = time.perf_counter()
            self.returns: list[float] = []
            self.finals: list[float] = []
            self.n_diverged = 0
            self.bar: Any = None
            self.progress = progress
            self.last_t = 0
            self.next_log = self.next_ckpt = 0

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
            infos = self.locals.get("infos") or []
            if dones is not None:
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
                        self.n_diverged += 1
                    self.episodes += 1
            t = int(self.model.num_timesteps)
            if self.bar is not None:
                self.bar.update(t - self.last_t)
                if self.finals:
                    self.bar.set_postfix_str(f"final f {np.mean(self.finals[-100:]):.4g}",
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
            return self.wall0 + time.perf_counter() - self.t0

        def add_row(self) -> None:
            t = int(self.model.num_timesteps)
            if self.log and int(self.log[-1]["timesteps"]) >= t:
                return
            n = len(self.finals) + self.n_diverged
            self.log.append({
                "timesteps": t,
                "episodes": self.episodes,
                "window_episodes": n,
                "mean_return": float(np.mean(self.returns)) if self.returns else None,
                "mean_final_f": float(np.mean(self.finals)) if self.finals else None,
                "diverged": self.n_diverged / n if n else None,
                "wall_s": round(self.wall(), 3),
            })
            self.returns, self.finals, self.n_diverged = [], [], 0
            # log.csv follows every row (not only checkpoints) so a long run can be watched;
            # on --resume the checkpoint's copy of the log is the one that continues.
            self.run_dir.write_log(self.log)

        def save(self) -> None:
            model = self.model
            buf = io.BytesIO()
            model.save(buf)
            replay = replay_buffer_state(getattr(model, "replay_buffer", None))
            venv = model.get_vec_normalize_env()
            state = {"model": buf.getvalue(), "vecnormalize": normalization_state(venv),
                     "replay_buffer": replay, "num_timesteps": int(model.num_timesteps),
                     "wall_s": self.wall(), "episodes": self.episodes}
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

    return RunCallback()

