"""``optenv train gps``: learn an optimiser with Guided Policy Search, and load it for comparison.

    optenv train gps --env optenv/LogisticRegression-v0 --out runs/gps [--quick]
        [--algorithm badmm|mdgps] [--iterations N] [--device cuda] [--resume]

The run folder (:class:`optenv.runs.RunDir`) gets ``config.json``, ``checkpoint.pt``
(atomic, every iteration: policy, Adam state, controllers, duals, step sizes, the two expected
costs per condition the next step-size update needs, GMM warm starts, RNG states), ``log.csv``,
``curves.png`` and ``policy.pt`` — the learned optimiser, loadable with one call
(:func:`load_optimizer`, or ``optenv.policy.load_policy``) and usable in any optenv env of the
same family and d, on CPU or GPU, and through ``optenv compare --methods gps:DIR``
(:func:`load_for_compare`).

Presets: the defaults are Li & Malik's settings (90 conditions, 20 samples, T = 40, kl_step 0.2,
BADMM with 4 inner iterations, Adam lr 1e-4 with weight decay 0.005); ``--quick`` is sized to learn
something real on 2 CPU cores in minutes: the authors' 90 conditions with 10 samples each, 10
iterations, a 3-step LQR history (see :mod:`gps.controller`), 2 inner iterations, a small ν step
(lg_step 0.05), fewer and larger Adam steps at lr 1e-3, and the cost's Hessian clipped to be PSD.
Any explicit option overrides the preset. Both presets, the help texts and the flags are
declared once, in :class:`gps.config.GPSConfig` (its module says why the quick values are what
they are); the flags are generated from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from gps.agent import GPSAgent
from gps.config import ALGORITHMS, GPSConfig
from gps.coordinatewise import CoordinatewiseGPSAgent
from optenv import distributed
from optenv.flags import add_flags, build_config, config_from_flags, flag_fields, quick_preset
from optenv.validation import check_int

__all__ = ["QUICK", "add_train_parser", "load_for_compare", "load_optimizer", "make_config",
           "run", "train"]

#: The ``--quick`` preset: the ``quick`` values declared on :class:`~gps.config.GPSConfig`'s
#: fields (a derived view, kept for callers that read it).
QUICK: dict[str, Any] = quick_preset(GPSConfig)

#: Options a resumed run may change: they set where and how fast it runs and what it prints,
#: not what it computes (though another device or thread count sums in another order, so the
#: numbers can differ in the last bits and the run can then take another path).
RESUMABLE = ("iterations", "device", "threads", "quiet", "processes")
POLICY_FILE = "policy.pt"
#: curves.png is redrawn every this many iterations and after the last one.
PLOT_EVERY = 5
PLOT_KEYS = ("sampled_cost", "policy_cost", "kl", "eta", "step_mult", "dyn_residual", "wall_s")


def add_train_parser(subparsers: Any) -> None:
    """Add ``gps`` to ``optenv train``: the run's own flags, then one flag per
    :class:`~gps.config.GPSConfig` field (generated, see :mod:`optenv.flags`)."""
    p = subparsers.add_parser("gps", help="Guided Policy Search (BADMM as Li & Malik, or MDGPS)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="optenv/LogisticRegression-v0",
                   help="optenv env id whose TRAIN objectives are the conditions")
    p.add_argument("--env-kwargs", default=None, metavar="KEY=VALUE,...",
                   help="family arguments of the env, e.g. dim=100 (values read as Python "
                        "literals, else strings)")
    p.add_argument("--out", required=True, help="run folder")
    add_flags(p, GPSConfig, only=["algorithm"])
    p.add_argument("--quick", action="store_true", help="small preset for a CPU (minutes)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core; a resumed run "
                        "keeps the count it recorded)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_flags(p, GPSConfig, only=[f.name for f in flag_fields(GPSConfig)
                                  if f.name != "algorithm"])
    p.set_defaults(func=run)


def make_config(algorithm: str | None = "badmm", quick: bool = False,
                **overrides: Any) -> GPSConfig:
    """Authors' defaults, the quick preset if asked, then explicit overrides (None = unset)."""
    return build_config(GPSConfig, quick, algorithm=algorithm, **overrides)


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    """``"dim=100,lam=1e-3"`` → {"dim": 100, "lam": 0.001} (Python literals, else strings);
    None → {}. ValueError naming ``--env-kwargs`` for an item without ``=``."""
    import ast

    out: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--env-kwargs: got {item!r}, allowed: KEY=VALUE items, "
                             "comma-separated")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


def train(env_id: str, out: str | os.PathLike[str], config: GPSConfig, *,
          device: str = "cpu", resume: bool = False, quiet: bool = False,
          threads: int | None = None, env_kwargs: dict[str, Any] | None = None,
          across_processes: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) GPS on ``env_id``'s TRAIN objectives into ``out``; returns the log.

    The python entry point behind ``optenv train gps``; a user's family works through an id
    registered with ``optenv.register_objective``. ``env_kwargs``: arguments of the env (its
    family's, e.g. ``{"dim": 100}``), recorded in ``config.json``. ``threads``: torch CPU
    threads for the run (None: torch's default, or on ``resume`` the count the run recorded),
    restored afterwards. ``across_processes``: join the process group torchrun describes and
    share the conditions with the other ranks (what ``optenv train gps`` does); False (the
    default) runs on this process alone even under torchrun, as the study's ranks do, each
    training whole runs of its own.
    """
    import torch.distributed as dist

    from optenv.runs import run_threads, torch_threads
    from optenv.validation import parse_device

    check_int("--threads", threads, 1, optional=True)
    joined = dist.is_available() and dist.is_initialized()
    if across_processes:
        world, rank_device = distributed.init(parse_device(device, "--device"))
    else:
        world, rank_device = distributed.World(), parse_device(device, "--device")
    try:
        with torch_threads(run_threads(out, threads, resume)):
            return _train(env_id, out, config, device=device, resume=resume, quiet=quiet,
                          env_kwargs=env_kwargs or {}, world=world, rank_device=rank_device)
    finally:
        if not joined:  # the group this call joined (a caller's own group stays)
            distributed.shutdown()


def _train(env_id: str, out: str | os.PathLike[str], config: GPSConfig, *, device: str,
           resume: bool, quiet: bool, env_kwargs: dict[str, Any], world: distributed.World,
           rank_device: torch.device) -> list[dict[str, Any]]:
    """The run's steps: check everything (env, device, the checkpoint to resume) before the
    folder is touched, then set the agent up and iterate. Across processes every rank holds
    its share of the conditions; rank 0 alone holds the folder (:func:`_open_run`)."""
    family, run_config = _run_config(env_id, config, device, quiet, env_kwargs, world)
    agent_class = CoordinatewiseGPSAgent if config.policy == "coordinatewise" else GPSAgent
    agent = agent_class(family, config, history=run_config["history"],
                        max_step=run_config["max_step"], device=rank_device, world=world)
    rundir, resuming, log = _open_run(agent, out, run_config, resume, world)
    try:
        if not resuming:
            _initialise(agent, quiet or not world.is_main)
        _iterate(agent, rundir, log, env_id, run_config, quiet or not world.is_main)
    finally:
        if rundir is not None:
            rundir.close()
    return log


def _open_run(agent: GPSAgent, out: str | os.PathLike[str], run_config: dict[str, Any],
              resume: bool, world: distributed.World) -> tuple[Any, bool, list[dict[str, Any]]]:
    """(the run folder or None, whether a checkpoint was resumed, the log so far).

    Rank 0 alone opens the folder (:class:`optenv.runs.RunDir`: its lock, the checks, the
    checkpoint, read, verified and loaded into the agent before anything in the folder is
    written) and sends the outcome to the other ranks: a ValueError (then every rank raises
    it, so none waits for the others) or the checkpoint's state, which every rank loads (each
    keeps its conditions: the checkpoint holds every rank's, in one process's layout)."""
    from optenv.runs import RunDir

    rundir = None
    outcome: dict[str, Any] = {}
    if world.is_main:
        try:
            rundir = RunDir(out, run_config, resume=resume, resumable_keys=RESUMABLE,
                            prepare=lambda state: _load_checkpoint_state(agent, state, out),
                            explain=_preset_hint)
            state, log = rundir.load() if rundir.resuming else (None, [])
            outcome = {"state": state if world.distributed else None, "log": log,
                       "resuming": rundir.resuming}
        except ValueError as err:
            distributed.broadcast_object({"error": str(err)}, world)
            raise
    outcome = distributed.broadcast_object(outcome, world)
    if "error" in outcome:
        raise ValueError(outcome["error"])
    if not world.is_main and outcome["resuming"]:
        _load_checkpoint_state(agent, outcome["state"], out)
    return rundir, outcome["resuming"], list(outcome["log"])


def _run_config(env_id: str, config: GPSConfig, device: str, quiet: bool,
                env_kwargs: dict[str, Any], world: distributed.World
                ) -> tuple[Any, dict[str, Any]]:
    """The env's family and the run's ``config.json``: the env's settings, the config, and
    where and how it runs (``env_kwargs`` recorded only when given, and ``processes`` only
    across processes, so a run without them writes what it always wrote)."""
    import gymnasium as gym

    from optenv.evaluate import resolve_env
    from optenv.validation import parse_device

    try:
        _label, family, defaults = resolve_env(env_id)
        if env_kwargs:
            try:
                env = gym.make(env_id, **env_kwargs)
            except (TypeError, ValueError) as err:
                raise ValueError(f"env-kwargs: got {env_kwargs!r} for {env_id} ({err})") from err
            _label, family, defaults = resolve_env(env)
    except ValueError as err:
        raise ValueError(f"--{err}") from err
    dev = parse_device(device, "--device")
    history = _history(defaults["history"], config.features, "history" in env_kwargs)
    return family, {"trainer": "gps", "env": env_id, "history": history,
                    "max_step": defaults["max_step"], **config.to_dict(), "device": str(dev),
                    "threads": torch.get_num_threads(),  # the count in effect: the order of
                    # the CPU's parallel sums, and so a run's numbers, depend on it
                    "quiet": quiet, **({"env_kwargs": dict(env_kwargs)} if env_kwargs else {}),
                    **({"processes": world.size} if world.distributed else {})}


def _history(env_history: int, features: str, given: bool) -> int:
    """The run's history: the env's, unless the policy's feature set needs a longer one and
    the user did not set it (then the set's default: 132 for ``li-malik-2017``)."""
    from optenv.features import check_features

    fs = check_features(features)
    if env_history >= fs.min_history:
        return env_history
    if given:
        raise ValueError(f"--env-kwargs: history={env_history} is too short for --features "
                         f"{features}, allowed: history >= {fs.min_history}")
    return fs.default_history


def _preset_hint(saved: dict[str, Any], now: dict[str, Any], changed: list[str]
                 ) -> str | None:
    """Which preset the saved run used, when every difference is the saved run's preset
    against this run's other one (the usual cause: ``--quick`` given at the start and
    forgotten on ``--resume``, or the reverse)."""
    algorithm = saved.get("algorithm")
    if algorithm not in ALGORITHMS or not changed:
        return None
    quick, full = (json.loads(json.dumps(make_config(algorithm, quick=q).to_dict()))
                   for q in (True, False))
    for was, other, advice in ((quick, full, "the run was saved with --quick: add --quick"),
                               (full, quick, "the run was saved without --quick: drop it")):
        if all(k in was and saved[k] == was[k] and now.get(k) == other[k] for k in changed):
            return advice
    return None


def _load_checkpoint_state(agent: GPSAgent, state: dict[str, Any] | None,
                           out: str | os.PathLike[str]) -> None:
    """The checkpoint's agent state (None: a fresh start) into ``agent``; ValueError if it is
    not a GPS checkpoint or does not fit the run. First the memory check
    (:meth:`GPSAgent.check_memory`): after the folder's own checks, so that resuming with
    another configuration is told so, and before anything is written."""
    agent.check_memory()
    if state is None:
        return
    if "ctrl" not in state:
        raise ValueError(f"--resume: {str(Path(out) / 'checkpoint.pt')!r} is not a GPS "
                         "checkpoint")
    agent.load_state_dict(state)


def _initialise(agent: GPSAgent, quiet: bool) -> None:
    """A new run's initial controllers (the momentum grid search), reported unless quiet."""
    info = agent.initialise()
    if not quiet:
        print(f"initial controller: momentum lr={info['momentum_lr']:g}, "
              f"momentum={info['momentum']:g} (best of the grid on the "
              f"{agent.cfg.conditions} training conditions, {info['seconds']:.1f} s)",
              file=sys.stderr)


def _iterate(agent: GPSAgent, rundir: Any, log: list[dict[str, Any]], env_id: str,
             run_config: dict[str, Any], quiet: bool) -> None:
    """GPS iterations until ``config.iterations``: after each, the policy, the checkpoint and
    the log are written (so an interrupted run resumes from its last iteration), and the
    curves every :data:`PLOT_EVERY` iterations. Across processes every rank iterates and
    gathers the checkpoint's state; rank 0 (the one with ``rundir``) writes."""
    from tqdm.auto import tqdm

    config, family = agent.cfg, agent.family
    bar = tqdm(total=config.iterations, initial=agent.iteration_count, desc="gps",
               disable=quiet, file=sys.stderr)
    while agent.iteration_count < config.iterations:
        row = agent.iteration()
        log.append(row)
        state = agent.full_state_dict()  # every rank's conditions (a collective)
        if rundir is None:
            continue
        agent.save_policy(str(rundir.path / POLICY_FILE),
                          extra={"env": env_id, "family": type(family).__name__, "d": family.d,
                                 **({"env_kwargs": run_config["env_kwargs"]}
                                    if "env_kwargs" in run_config else {}),
                                 "history": run_config["history"],
                                 "max_step": run_config["max_step"],
                                 "iteration": agent.iteration_count,
                                 "algorithm": config.algorithm})
        rundir.save(state, log)
        if agent.iteration_count % PLOT_EVERY == 0 or agent.iteration_count == config.iterations:
            rundir.plot(log, PLOT_KEYS)  # ~1 s of matplotlib: not every iteration
        bar.set_postfix_str(f"cost {row['sampled_cost']:.4g} pol {row['policy_cost']:.4g} "
                            f"kl {row['kl']:.3g} mult {row['step_mult']:.3g}")
        if row["failures"]:
            bar.write(f"iteration {row['iteration']}: {row['failures']}")
        bar.update(1)
    bar.close()


def run(args: argparse.Namespace) -> int:
    """``optenv train gps`` (see the module docstring); returns the exit status."""
    config = config_from_flags(GPSConfig, args, quick=args.quick)  # errors name the flag
    # Threads: torch's default (one per core) unless --threads says otherwise. Alone on a
    # 2-core machine two threads beat one (quick LogisticRegression 99 vs 140 s, NeuralNet 56
    # vs 88 s per iteration); two runs sharing it should take --threads 1 each, since
    # oversubscribed intra-op threads made iterations 5-25x slower (measured 2026-11-26/27).
    world = distributed.world_from_env()
    try:
        log = train(args.env, args.out, config, device=args.device, resume=args.resume,
                    quiet=args.quiet, threads=args.threads,
                    env_kwargs=parse_env_kwargs(args.env_kwargs), across_processes=True)
    except RuntimeError as err:
        if not (world.distributed and distributed.is_peer_failure(err)):
            raise
        print(f"optenv: error: rank {world.rank} of {world.size}: {distributed.describe(err)}; "
              f"the last checkpoint in {str(args.out)!r} resumes: run the same torchrun "
              "command with --resume", file=sys.stderr)
        return 1
    if log and world.is_main:
        last = log[-1]
        total = sum(r["wall_s"] for r in log)
        print(f"gps: {len(log)} iterations in {args.out}, {total:.1f} s; last: sampled cost "
              f"{last['sampled_cost']:.5g}, policy cost {last['policy_cost']:.5g}; "
              f"policy: {Path(args.out) / POLICY_FILE}")
    return 0


def _load_any_policy(path: str | os.PathLike[str], device: str | torch.device
                     ) -> tuple[Any, dict[str, Any]]:
    """The policy in a run folder (or a ``policy.pt``): flat or coordinatewise, with its
    ``extra`` metadata."""
    from optenv.checkpoint import load_tagged
    from optenv.policy import (
        COORDINATEWISE_FORMAT,
        load_coordinatewise_policy,
        load_policy,
    )

    p = Path(path)
    file = p / POLICY_FILE if p.is_dir() else p
    if not file.exists():
        raise ValueError(f"path: got {str(path)!r}, which holds no {POLICY_FILE}; allowed: a GPS "
                         "run folder (optenv train gps --out DIR) or its policy.pt")
    try:
        load_tagged(file, COORDINATEWISE_FORMAT, "a coordinatewise policy")
        loader = load_coordinatewise_policy
    except ValueError:
        loader = load_policy
    policy, extra = loader(str(file), map_location=device)
    policy.to(device).eval()
    return policy, extra


def load_optimizer(path: str | os.PathLike[str], *, max_step: float | None = None,
                   device: str | torch.device = "cpu", family: Any = None) -> Any:
    """The learned optimiser in a run folder (or a ``policy.pt``) as an env policy: a callable
    on batched observations returning actions (``step / max_step``). One call.

    A coordinatewise policy is bound to ``family``'s coordinate groups and takes that
    family's flat observations (default: the family it was trained on)."""
    from optenv.core import StateLayout
    from optenv.policy import CoordinatewisePolicy

    policy, extra = _load_any_policy(path, device)
    step = float(max_step if max_step is not None else extra.get("max_step", 1.0))
    if not isinstance(policy, CoordinatewisePolicy):
        return policy.as_env_policy(step)
    if family is None:
        from optenv.evaluate import resolve_env

        _label, family, _defaults = resolve_env(extra["env"])
    layout = StateLayout(family.d, int(extra["history"]))
    return policy.as_env_policy(step, family.coordinate_groups(), layout)


def load_for_compare(path: str, context: dict[str, Any]) -> Any:
    """``optenv compare --methods gps:DIR`` loader: checks the policy fits the env.

    A flat policy needs the same d and observation length. A coordinatewise one runs on any d:
    it is bound to the TARGET env's coordinate groups and layout by
    :meth:`optenv.learned.LearnedPolicy.env_policy`, and needs the env's feature set and
    history to give the rows it was trained on (else ValueError)."""
    from optenv.core import StateLayout
    from optenv.features import observer_for
    from optenv.learned import LearnedPolicy
    from optenv.policy import CoordinatewisePolicy

    family, history = context["family"], context["history"]
    policy, _extra = _load_any_policy(path, context["device"])
    if isinstance(policy, CoordinatewisePolicy):
        # the env library's one binding (optenv.learned): on a flat env the policy computes
        # its own rows, a coordinatewise env must emit its feature set; its set's history rule
        what = f"gps:{path}"
        return LearnedPolicy(policy, source=what).env_policy(family, context, what)
    observer_for(context, f"gps:{path}", flat_only=True)
    env_policy = policy.as_env_policy(context["max_step"])
    policy = env_policy.policy
    obs_dim = StateLayout(family.d, history).obs_dim
    if policy.d != family.d or policy.obs_dim != obs_dim:
        raise ValueError(f"--methods: gps:{path} was trained for d={policy.d}, observation "
                         f"length {policy.obs_dim}; {context['env_id']} has d={family.d}, "
                         f"observation length {obs_dim}; allowed: a policy of the same family "
                         "and d (and history)")
    return env_policy
