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
(lg_step 0.05, see :data:`QUICK`), fewer and larger Adam steps at lr 1e-3, and the cost's Hessian
clipped to be PSD. Any explicit option overrides the preset.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gps.agent import ALGORITHMS, GPSAgent, GPSConfig

__all__ = ["QUICK", "add_train_parser", "load_for_compare", "load_optimizer", "make_config",
           "run", "train"]

#: The ``--quick`` preset (overrides of :class:`~gps.agent.GPSConfig`'s defaults).
QUICK: dict[str, Any] = {
    "conditions": 90, "samples": 10, "iterations": 10, "lqr_history": 3,
    "inner_iterations": 2, "policy_steps": 400, "policy_batch": 256, "policy_lr": 1e-3,
    "gmm_iters": 30, "lqr_max_iter": 20, "lg_step": 0.05, "cost_hessian": "psd",
}
# Why lg_step 0.05 (reference default 10): the objective's scale is small (f ~ 0.2 on logistic
# regression, curvature ~0.1), so ν_t += 10·KL_t makes the KL-to-policy term dominate the cost
# within two iterations and the trajectories stop improving (measured: policy cost on the
# training conditions stuck at 0.211 vs 0.2015 after 5 iterations with 0.05).
# Why 90 conditions x 10 samples x 10 iterations (measured on 100 TEST objectives, horizon 40):
# the number of training objectives is what makes the policy generalise. 20 x 10 x 15 (97 s)
# was below momentum's mean curve at 25% of iterations; 90 x 10 x 10 (about 3 min) and
# 90 x 20 x 30 (42 min) both at 95%; 200 x 10 x 10 no better. Fixing nu (lg_step 0) fits the
# training conditions better (policy cost 0.213 vs 0.218) and generalises worse (28%).
# Why cost_hessian "psd": on non-convex families the exact Hessian's negative curvature makes the
# LQR crawl through PD retries (RobustRegression quick, 2026-11-26: 1 367 s exact vs 198 s psd;
# exact learns a somewhat better optimiser, 0.5303 vs 0.5340 mean f at iteration 40). Convex
# families: equal.
#: Options a resumed run may change: they set where and how fast it runs and what it prints,
#: not what it computes (though another device or thread count sums in another order, so the
#: numbers can differ in the last bits and the run can then take another path).
RESUMABLE = ("iterations", "device", "threads", "quiet")
POLICY_FILE = "policy.pt"
#: curves.png is redrawn every this many iterations and after the last one.
PLOT_EVERY = 5
PLOT_KEYS = ("sampled_cost", "policy_cost", "kl", "eta", "step_mult", "dyn_residual", "wall_s")

def _comma_list(kind: type, example: str) -> Callable[[str], tuple[Any, ...]]:
    """argparse type of a comma-separated list of ``kind`` ("" = none)."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"got {text!r}, allowed: comma-separated {kind.__name__}s such as {example}"
            ) from None
    return parse


#: Every :class:`~gps.agent.GPSConfig` field but ``algorithm`` as a flag (a test keeps it so).
_OPTIONS: list[tuple[str, Callable[[str], Any], str]] = [
    ("conditions", int, "training objectives (conditions) M"),
    ("samples", int, "samples per condition per iteration N"),
    ("horizon", int, "trajectory length T"),
    ("iterations", int, "GPS iterations to run in total"),
    ("kl_step", float, "KL step (mean per-step KL bound of the trajectory update)"),
    ("min_step_mult", float, "smallest multiplier of the KL step"),
    ("max_step_mult", float, "largest multiplier of the KL step"),
    ("inner_iterations", int, "BADMM inner iterations"),
    ("policy_dual_rate", float, "BADMM step size of the Lagrange multipliers"),
    ("lg_step", float, "BADMM step size of the per-step KL weights nu"),
    ("init_pol_wt", float, "BADMM's initial per-step KL weight nu (0 with --lg-step 0: the "
     "controllers ignore the policy)"),
    ("init_var", float, "variance of the initial (momentum) controllers' actions"),
    ("lqr_history", int, "history of the LQR state"),
    ("lqr_max_iter", int, "dual (eta) iterations of each KL-constrained LQR solve"),
    ("dynamics_reg", float, "ridge added to the dynamics fits' covariance"),
    ("cost_hessian", str, "exact or psd (negative curvature of f clipped to 0)"),
    ("gmm_clusters", int, "clusters of the GMM priors (dynamics and policy linearisation)"),
    ("gmm_min_samples", int, "samples per GMM cluster, at least"),
    ("gmm_iters", int, "EM iterations of each GMM fit"),
    ("prior_strength", float, "weight of the GMM prior in the per-step fits"),
    ("policy_hidden", _comma_list(int, "50 or 100,100"),
     "hidden layer sizes of the policy's MLP, comma-separated (e.g. 50 or 100,100; empty: a "
     "linear policy)"),
    ("policy_lr", float, "Adam learning rate of the policy"),
    ("policy_weight_decay", float, "Adam weight decay of the policy"),
    ("policy_steps", int, "Adam steps per policy update"),
    ("policy_batch", int, "minibatch size of the policy updates"),
    ("momentum_lr_grid", _comma_list(float, "0.5,1"),
     "learning rates of the initial controllers' grid search, comma-separated"),
    ("momentum_grid", _comma_list(float, "0.5,0.9"),
     "momenta of the initial controllers' grid search, comma-separated"),
    ("seed", int, "seed (training conditions, sampling noise, policy init)"),
]


def add_train_parser(subparsers: Any) -> None:
    """Add ``gps`` to ``optenv train``."""
    p = subparsers.add_parser("gps", help="Guided Policy Search (BADMM as Li & Malik, or MDGPS)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="optenv/LogisticRegression-v0",
                   help="optenv env id whose TRAIN objectives are the conditions")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--algorithm", default="badmm", help="badmm (default) or mdgps")
    p.add_argument("--quick", action="store_true", help="small preset for a CPU (minutes)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core; a resumed run "
                        "keeps the count it recorded)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    authors = GPSConfig()
    for name, typ, help_ in _OPTIONS:
        default = f"default {_show(getattr(authors, name))}"
        if name in QUICK:
            default += f"; --quick {_show(QUICK[name])}"
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=f"{help_} ({default})")
    p.set_defaults(func=run)


def _show(value: Any) -> str:
    """An option's value as the flag takes it."""
    if value is None:
        return "the env's"
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def make_config(algorithm: str = "badmm", quick: bool = False, **overrides: Any) -> GPSConfig:
    """Authors' defaults, the quick preset if asked, then explicit overrides (None = unset)."""
    values: dict[str, Any] = dict(QUICK) if quick else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["algorithm"] = algorithm
    return GPSConfig(**values)


def _check_args(args: argparse.Namespace) -> None:
    if args.algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm: got {args.algorithm!r}, allowed: {', '.join(ALGORITHMS)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: got {args.threads}, allowed: an int >= 1")
    for name, _typ, _h in _OPTIONS:
        v = getattr(args, name)
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"--{name.replace('_', '-')}: got {v}, allowed: a finite number")


def train(env_id: str, out: str | os.PathLike[str], config: GPSConfig, *,
          device: str = "cpu", resume: bool = False, quiet: bool = False,
          threads: int | None = None) -> list[dict[str, Any]]:
    """Run (or resume) GPS on ``env_id``'s TRAIN objectives into ``out``; returns the log.

    The python entry point behind ``optenv train gps``; a user's family works through an id
    registered with ``optenv.register_objective``. ``threads``: torch CPU threads for the run
    (None: torch's default, or on ``resume`` the count the run recorded), restored afterwards.
    """
    from optenv.runs import run_threads, torch_threads

    try:
        threads = run_threads(out, threads, resume)
        with torch_threads(threads):
            return _train(env_id, out, config, device=device, resume=resume, quiet=quiet)
    except ValueError as err:
        if str(err).startswith("threads:"):
            raise ValueError(f"--{err}") from err
        raise


def _train(env_id: str, out: str | os.PathLike[str], config: GPSConfig, *, device: str,
           resume: bool, quiet: bool) -> list[dict[str, Any]]:
    from optenv.checkpoint import load_tagged
    from optenv.evaluate import resolve_env
    from optenv.policy import save_policy
    from optenv.runs import CHECKPOINT_FORMAT, RunDir
    from optenv.validation import parse_device

    try:
        _label, family, defaults = resolve_env(env_id)
    except ValueError as err:
        raise ValueError(f"--{err}") from err
    dev = parse_device(device, "--device")
    run_config = {"trainer": "gps", "env": env_id, "history": defaults["history"],
                  "max_step": defaults["max_step"], **config.to_dict(), "device": str(dev),
                  "threads": torch.get_num_threads(), "quiet": quiet}  # the count in effect:
    # the order of the CPU's parallel sums, and so a run's numbers, depend on it
    saved_state = None
    if resume:  # read and check the checkpoint before anything in the folder is touched
        ckpt = Path(out) / "checkpoint.pt"
        if not ckpt.exists():
            raise ValueError(f"--resume: {str(out)!r} holds no checkpoint.pt to resume")
        payload = load_tagged(ckpt, CHECKPOINT_FORMAT, "an optenv checkpoint",
                              weights_only=False)
        saved_state = payload.get("state")
        if not isinstance(saved_state, dict) or "ctrl" not in saved_state:
            raise ValueError(f"--resume: {str(ckpt)!r} is not a GPS checkpoint")
    agent = GPSAgent(family, config, history=defaults["history"],
                     max_step=defaults["max_step"], device=dev)
    if saved_state is not None:
        agent.load_state_dict(saved_state)  # ValueError on a mismatch, before any write
    rundir = RunDir(out, run_config, resume=resume, resumable_keys=RESUMABLE)
    if resume:
        _state, log = rundir.load()
    else:
        info = agent.initialise()
        log = []
        if not quiet:
            print(f"initial controller: momentum lr={info['momentum_lr']:g}, "
                  f"momentum={info['momentum']:g} (best of the grid on the "
                  f"{config.conditions} training conditions, {info['seconds']:.1f} s)",
                  file=sys.stderr)
    from tqdm.auto import tqdm

    bar = tqdm(total=config.iterations, initial=agent.iteration_count, desc="gps",
               disable=quiet, file=sys.stderr)
    while agent.iteration_count < config.iterations:
        row = agent.iteration()
        log.append(row)
        save_policy(str(rundir.path / POLICY_FILE), agent.policy,
                    extra={"env": env_id, "family": type(family).__name__, "d": family.d,
                           "history": defaults["history"], "max_step": defaults["max_step"],
                           "iteration": agent.iteration_count, "algorithm": config.algorithm})
        rundir.save(agent.state_dict(), log)
        if agent.iteration_count % PLOT_EVERY == 0 or agent.iteration_count == config.iterations:
            rundir.plot(log, PLOT_KEYS)  # ~1 s of matplotlib: not every iteration
        bar.set_postfix_str(f"cost {row['sampled_cost']:.4g} pol {row['policy_cost']:.4g} "
                            f"kl {row['kl']:.3g} mult {row['step_mult']:.3g}")
        if row["failures"]:
            bar.write(f"iteration {row['iteration']}: {row['failures']}")
        bar.update(1)
    bar.close()
    return log


def run(args: argparse.Namespace) -> int:
    """``optenv train gps`` (see the module docstring); returns the exit status."""
    _check_args(args)
    overrides = {name: getattr(args, name) for name, _t, _h in _OPTIONS}
    try:
        config = make_config(args.algorithm, args.quick, **overrides)
    except ValueError as err:  # "kl_step: got ..." -> "--kl-step: got ..."
        raise ValueError(re.sub(r"\b(" + "|".join(overrides) + r")\b",
                                lambda m: "--" + m.group(1).replace("_", "-"), str(err))) \
            from err
    # Threads: torch's default (one per core) unless --threads says otherwise. Alone on a
    # 2-core machine two threads beat one (quick LogisticRegression 99 vs 140 s, NeuralNet 56
    # vs 88 s per iteration); two runs sharing it should take --threads 1 each, since
    # oversubscribed intra-op threads made iterations 5-25x slower (measured 2026-11-26/27).
    log = train(args.env, args.out, config, device=args.device, resume=args.resume,
                quiet=args.quiet, threads=args.threads)
    if log:
        last = log[-1]
        total = sum(r["wall_s"] for r in log)
        print(f"gps: {len(log)} iterations in {args.out}, {total:.1f} s; last: sampled cost "
              f"{last['sampled_cost']:.5g}, policy cost {last['policy_cost']:.5g}; "
              f"policy: {Path(args.out) / POLICY_FILE}")
    return 0


def load_optimizer(path: str | os.PathLike[str], *, max_step: float | None = None,
                   device: str | torch.device = "cpu") -> Any:
    """The learned optimiser in a run folder (or a ``policy.pt``) as an env policy: a callable
    on batched observations returning actions (``step / max_step``). One call."""
    from optenv.policy import load_policy

    p = Path(path)
    file = p / POLICY_FILE if p.is_dir() else p
    if not file.exists():
        raise ValueError(f"path: got {str(path)!r}, which holds no {POLICY_FILE}; allowed: a GPS "
                         "run folder (optenv train gps --out DIR) or its policy.pt")
    policy, extra = load_policy(str(file), map_location=device)
    policy.to(device).eval()
    step = float(max_step if max_step is not None else extra.get("max_step", 1.0))
    return policy.as_env_policy(step)


def load_for_compare(path: str, context: dict[str, Any]) -> Any:
    """``optenv compare --methods gps:DIR`` loader: checks the policy fits the env."""
    env_policy = load_optimizer(path, max_step=context["max_step"], device=context["device"])
    policy = env_policy.policy
    family, history = context["family"], context["history"]
    from optenv.core import StateLayout

    obs_dim = StateLayout(family.d, history).obs_dim
    if policy.d != family.d or policy.obs_dim != obs_dim:
        raise ValueError(f"--methods: gps:{path} was trained for d={policy.d}, observation "
                         f"length {policy.obs_dim}; {context['env_id']} has d={family.d}, "
                         f"observation length {obs_dim}; allowed: a policy of the same family "
                         "and d (and history)")
    return env_policy
