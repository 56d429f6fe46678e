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
``--conf-file`` and ``--hyperparams KEY=VALUE`` change them. The trainer's own options (steps,
envs, seed, device, checkpoint and log intervals, threads) are declared once, as
:class:`SB3Options`: :func:`train`'s keyword arguments, and the flags generated from them.

The run folder is :class:`optenv.runs.RunDir`'s: ``config.json``; ``checkpoint.pt`` with the
model, the VecNormalize statistics, the replay buffer (SAC/TD3) and the log, rewritten
atomically every ``--checkpoint-every`` steps by an SB3 callback (:mod:`baselines.sb3_callback`);
``log.csv`` (timesteps, episodes, mean episode return, mean final f, fraction diverged, wall
time); ``curves.png``; and the evaluable artifacts ``model.zip`` (SB3's format: ``PPO.load``
reads it) and ``vecnormalize.pt`` (plain tensors). ``--resume`` continues from the checkpoint
with ``reset_num_timesteps=False``, so the step count, schedules and log carry on.

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
import dataclasses
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    restore_normalization,
)
from optenv.checkpoint import read_json_object
from optenv.flags import add_flags, flag_fields, flag_name, option
from optenv.validation import check_choice, check_int, parse_device

__all__ = [
    "VEC_MODES",
    "SB3Optimizer",
    "SB3Options",
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


@dataclass
class SB3Options:
    """How a run trains, declared once: :func:`train`'s keyword arguments and the flags of
    ``optenv train ALGO`` (generated from these fields, see :mod:`optenv.flags`).

    None means "not given": :meth:`resolve` then takes the resumed run's value, else the
    hyper-parameters' (``n_timesteps``, ``n_envs``) or the stated default. Checked on
    construction; an error names the flag (``--steps: got 0, ...``), from Python too, since
    these are the command's options.
    """

    steps: int | None = option(None, shown="the hyper-parameters' n_timesteps",
                               help="total env steps")
    vec: str | None = option(
        None, choices=VEC_MODES, shown="batched, or the run's",
        help="batched: optenv.sb3.SB3VecEnv (one torch batch); dummy: SB3's DummyVecEnv over "
             "gym.make envs")
    num_envs: int | None = option(None, shown="the hyper-parameters' n_envs",
                                  help="parallel envs")
    seed: int | None = option(None, shown="0, or the run's", help="seed")
    device: str = option("cpu", help="torch device of the networks")
    conf_file: str | None = option(  # a pathlib.Path works as well
        None, shown="the packaged one", help="rl-zoo3 style YAML of hyper-parameters")
    checkpoint_every: int | None = option(None, shown="max(10000, steps/10)",
                                          help="env steps between checkpoints")
    log_every: int | None = option(None, shown="max(1, steps/100)",
                                   help="env steps between log rows")
    threads: int | None = option(  # None (Python only): leave torch's count alone
        1, help="torch CPU threads while training (1: fastest for these small networks, see "
                "the module docstring)")

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("num_envs", 1), ("seed", 0), ("checkpoint_every", 1),
                          ("log_every", 1), ("threads", 1)):
            check_int(flag_name(name), getattr(self, name), low, optional=True)
        if self.vec is not None:
            check_choice("--vec", self.vec, VEC_MODES)
        self.device = str(parse_device(self.device, "--device"))

    def resolve(self, saved: Mapping[str, Any], hp: Hyperparams) -> SB3Options:
        """Every None filled in: from the resumed run's config (``saved``), else from the
        hyper-parameters, else the defaults the help states."""
        steps = self.steps or saved.get("steps") or hp.n_timesteps
        return dataclasses.replace(
            self, vec=self.vec or saved.get("vec") or "batched",
            num_envs=self.num_envs or saved.get("num_envs") or hp.n_envs,
            seed=self.seed if self.seed is not None else int(saved.get("seed", 0)),
            steps=steps,
            checkpoint_every=(self.checkpoint_every or saved.get("checkpoint_every")
                              or max(10_000, steps // 10)),
            log_every=self.log_every or saved.get("log_every") or max(1, steps // 100))


def add_train_parser(subparsers: Any) -> None:
    """Add ``ppo``, ``sac``, ``td3`` and ``recurrent-ppo`` to ``optenv train``: the run's own
    flags and one per :class:`SB3Options` field."""
    helps = {"ppo": "Stable-Baselines3 PPO", "sac": "Stable-Baselines3 SAC",
             "td3": "Stable-Baselines3 TD3", "recurrent-ppo": "sb3-contrib RecurrentPPO (LSTM)"}
    for name in ALGORITHMS:
        p = subparsers.add_parser(
            name, help=f"train {helps[name]} on an optenv id",
            description=f"Train {helps[name]} on an optenv env id with the packaged rl-zoo3 "
                        "style hyper-parameters; the result evaluates with 'optenv compare "
                        f"--methods {name}:DIR'.")
        p.add_argument("--env", required=True, help="optenv env id")
        p.add_argument("--out", required=True, help="run folder")
        add_flags(p, SB3Options)
        p.add_argument("--hyperparams", nargs="+", default=None, metavar="KEY=VALUE",
                       help="override hyper-parameters, e.g. learning_rate=1e-3 n_steps=80")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
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
    options = {f.name: getattr(args, f.name) for f in flag_fields(SB3Options)}
    res = train(args.sb3_algorithm, args.env, args.out, resume=args.resume,
                overrides=overrides, progress=not args.quiet,
                **{k: v for k, v in options.items() if v is not None})
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
        check_choice("--vec", vec, VEC_MODES)
    venv: Any = VecMonitor(base)
    venv.seed(seed)
    if normalize is not None:
        venv = VecNormalize(venv, gamma=gamma, **normalize)
    return venv


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


def train(algorithm: str, env_id: str, out: str | Path, *, resume: bool = False,
          overrides: Mapping[str, Any] | None = None, progress: bool = False,
          **options: Any) -> TrainResult:
    """Train (or with ``resume`` continue) an SB3 agent into run folder ``out``.

    ``options`` are :class:`SB3Options`'s fields (``steps``, ``vec``, ``num_envs``, ``seed``,
    ``device``, ``conf_file``, ``checkpoint_every``, ``log_every``, ``threads``), as the command
    line's flags; ``overrides`` are ``--hyperparams`` as a dict. Everything is validated before
    the folder is touched: a user error is a ValueError naming the flag.
    """
    from optenv.runs import RunDir, torch_threads

    family = _family(algorithm, env_id)
    opts = SB3Options(**options)
    out = Path(out)
    saved = _saved_config(out) if resume else {}
    if saved and opts.conf_file is None and not overrides and "hyperparams" in saved:
        raw = dict(saved["hyperparams"])  # the run's own, even if the packaged file changed
    else:
        raw = load_hyperparams(algorithm, env_id, opts.conf_file, overrides)
    hp = Hyperparams(algorithm, raw, action_dim=family.d)
    opts = opts.resolve(saved, hp)
    config = {"algorithm": algorithm, "env": env_id, "vec": opts.vec,
              "num_envs": opts.num_envs, "seed": opts.seed, "steps": opts.steps,
              "device": opts.device, "hyperparams": raw,
              "checkpoint_every": opts.checkpoint_every, "log_every": opts.log_every}
    venv = make_venv(env_id, opts.vec, opts.num_envs, opts.seed, hp.normalize,
                     float(hp.model_kwargs.get("gamma", 0.99)))
    # The model (new, or the checkpoint's) is built once the folder is checked and before
    # anything in it is written: SB3 checks the hyper-parameters then.
    models: list[Any] = []
    try:
        with RunDir(out, config, resume=resume, resumable_keys=RESUMABLE_KEYS,
                    prepare=lambda st: models.append(_model(algorithm, hp, venv, opts, st))
                    ) as run_dir, _flush_denormals(), torch_threads(opts.threads):
            state, log = run_dir.load()
            model = models[0]
            _learn(algorithm, model, run_dir, log, opts, state, resume=run_dir.resuming,
                   progress=progress)
    except BaseException:
        venv.close()
        raise
    return TrainResult(model=model, venv=venv, log=log, out=out)


def _family(algorithm: str, env_id: Any) -> Any:
    """The objective family of ``env_id`` (ValueError naming --env), once the algorithm is
    known."""
    from optenv.evaluate import resolve_env

    check_choice("algorithm", algorithm, ALGORITHMS)
    if not isinstance(env_id, str):
        raise ValueError(f"--env: got {env_id!r}, allowed: an optenv env id")
    try:
        _, family, _defaults = resolve_env(env_id)
    except ValueError as err:
        raise ValueError(f"--{err}") from err
    return family


def _saved_config(out: Path) -> dict[str, Any]:
    """The config.json of the run to resume ({} if there is none: RunDir reports that);
    ValueError naming the file if it is not a JSON object."""
    if not (out / "config.json").is_file():
        return {}
    return read_json_object(out / "config.json", "--resume")


def _model(algorithm: str, hp: Hyperparams, venv: Any, opts: SB3Options,
           state: Mapping[str, Any] | None) -> Any:
    """A new model, or (``state``: the checkpoint) the resumed one with its normalisation
    statistics and replay buffer, reseeded with ``seed + timesteps`` (new objectives, not a
    replay of the first ones)."""
    if state is None:
        cls = algorithm_class(algorithm)
        try:
            model = cls(hp.policy, venv, seed=opts.seed, device=opts.device, verbose=0,
                        **hp.model_kwargs)
        except (AssertionError, TypeError, ValueError) as err:
            raise ValueError(f"hyperparams: {cls.__name__} refuses them ({err})") from err
    else:
        from baselines.sb3_callback import restore_replay_buffer
        from baselines.sb3_zip import load_sb3_model

        if not isinstance(state.get("model"), bytes):
            raise ValueError("--resume: the checkpoint holds no SB3 model")
        replay = state.get("replay_buffer")
        if isinstance(replay, bytes):
            raise ValueError("--resume: the checkpoint holds a replay buffer in SB3's pickle "
                             "(written by an early optenv), which optenv never unpickles; to "
                             "go on, resume it with the optenv that wrote it, or start a new "
                             "run in another folder")
        model = load_sb3_model(algorithm, state["model"],
                               what="--resume: the model in the checkpoint",
                               obs_space=venv.observation_space,
                               action_space=venv.action_space, model_kwargs=hp.model_kwargs,
                               policy=hp.policy, env=venv, device=opts.device)
        if state.get("vecnormalize") is not None:
            restore_normalization(venv, state["vecnormalize"])
        if replay is not None:
            restore_replay_buffer(model.replay_buffer, replay)
        model.set_random_seed(opts.seed + int(model.num_timesteps))
    model.set_logger(_silent_logger())
    return model


def _learn(algorithm: str, model: Any, run_dir: Any, log: list[dict[str, Any]],
           opts: SB3Options, state: Mapping[str, Any], *, resume: bool, progress: bool) -> None:
    """``model.learn`` up to ``opts.steps`` with the run's callback (log rows, checkpoints),
    then the last row, checkpoint and artifacts, also when nothing was left to learn."""
    from baselines.sb3_callback import RunCallback

    callback = RunCallback(run_dir, log, total=opts.steps, checkpoint_every=opts.checkpoint_every,
                           log_every=opts.log_every, wall_s=float(state.get("wall_s", 0.0)),
                           episodes=int(state.get("episodes", 0)), progress=progress)
    remaining = opts.steps - int(model.num_timesteps)
    if remaining > 0:
        try:
            model.learn(total_timesteps=remaining, callback=callback,
                        reset_num_timesteps=not resume)
        except ValueError as err:  # e.g. NaN in the policy: not a user error
            raise RuntimeError(
                f"{algorithm} training failed at step {model.num_timesteps} ({err}); the "
                f"last checkpoint in {str(run_dir.path)!r} is intact: fix the hyper-parameters "
                "or --resume") from err
    else:
        callback.init_callback(model)
    callback.finish()


def _silent_logger() -> Any:
    """An SB3 logger that writes nowhere. Without one, every ``learn`` call makes an empty
    ``SB3-<timestamp>`` folder in the system temp dir (SB3's default logger); this trainer
    keeps its own log.csv and curves in the run folder."""
    from stable_baselines3.common.logger import Logger

    return Logger(folder=None, output_formats=[])
