"""``optenv compare``: tune optimisers on TRAIN objectives, evaluate on TEST ones, report.

The package's main job. For one env id it grid-searches each hand-designed optimiser's
hyper-parameters on ``--n-train`` training objectives (Li & Malik's protocol), runs every method
on the same ``--n-test`` held-out objectives for ``--horizon`` iterations, computes a reference
optimum f* of each objective (:mod:`optenv.lab.reference`; reused from an earlier results.json
in ``--out`` when it is of the same objectives), prints a table, and writes ``results.json``
(schema in :mod:`optenv.lab.results`) and the figures of :mod:`optenv.lab.figures` (PNG and
SVG: suboptimality f − f* on a log axis, mean f, margin of victory) into ``--out``.

Methods (``--methods``, comma-separated): the hand-designed optimisers and ``PREFIX:DIR`` specs
for saved learned optimisers, resolved by :mod:`optenv.lab.methods`.

Variants of an id (``--env-kwargs KEY=VALUE,...``): family arguments (``dim=20`` on
LogisticRegression) and the env's ``observation``, ``features``, ``history`` and ``max_step``,
so that one learned optimiser can be evaluated on larger models or other feature sets without
registering a new id. Values are read as int, float, bool (true/false) or else str.

Across processes (``torchrun --nproc-per-node N -m optenv compare ...``): the ranks share the
work through :mod:`optenv.distributed` — each hand-designed method's grid points (the tuning is
most of a default comparison's time), its test objectives, and the numerical f* runs, rank r
taking items r, r + size, ...; a method whose numbers are not bit-for-bit the same on a
smaller batch (:func:`batch_invariant`: every learned optimiser, and a hand-designed one that
declares ``batch_invariant = False``, such as adam) is evaluated whole on one rank, such
methods dealt round-robin.
Every result is gathered back in order, and rank 0 alone writes the files and prints: the
output is the one-process output, bit for bit on the CPU, but for the run metadata
(:data:`RUN_METADATA`). gloo on the CPU, NCCL on CUDA (rank r on ``cuda:LOCAL_RANK``).

User errors raise ValueError naming the argument (the CLI prints that one line and exits 2).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from baselines.tuning import grid_search
from optenv.distributed import World, broadcast_object, init, shutdown
from optenv.evaluate import evaluate, resolve_env
from optenv.families import FAMILIES
from optenv.lab.figures import remove_stale_figures, write_figures
from optenv.lab.methods import HAND_OPTIMIZERS, load_method, method_choices, parse_methods
from optenv.lab.reference import reference_optimum
from optenv.lab.results import make_results, write_results
from optenv.validation import parse_device

__all__ = ["DEFAULT_ENV", "DEFAULT_METHODS", "ENV_ARGUMENTS", "RUN_METADATA", "add_parser",
           "batch_invariant", "fixed_width",
           "format_reference", "format_table", "method_context", "parse_env_kwargs", "run",
           "tune_hand_method"]

DEFAULT_ENV = "optenv/LogisticRegression-v0"
DEFAULT_METHODS = "gd,momentum,nesterov,cg,lbfgs,adam,adagrad,rmsprop"
#: Env arguments ``--env-kwargs`` may set besides the family's own (the split, horizon, device and
#: dtype are compare's own flags).
ENV_ARGUMENTS = ("observation", "features", "history", "max_step")
#: Fields of results.json that describe the run rather than its numbers — when it was written,
#: seconds spent, versions — and so differ between two runs of the same comparison (one
#: process or N); everything else is the same.
RUN_METADATA = ("created", "optenv_version", "torch_version", "methods.*.wall_s",
                "reference.wall_s")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each option's help, but not "(default: None)": an
    option without a default says what it falls back to in its own words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_parser(subparsers: Any) -> None:
    """Add the ``compare`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "compare",
        help="tune optimisers on train objectives, compare them on held-out test objectives",
        description=(
            "Grid-search each hand-designed optimiser's hyper-parameters on TRAIN objectives, "
            "evaluate every method on the same held-out TEST objectives, print a table and "
            "write results.json and figures (PNG and SVG): suboptimality f - f* on a log "
            "axis (f* in closed form or from long L-BFGS runs), mean f and margin of "
            "victory. With no arguments: "
            f"{DEFAULT_ENV}, all hand-designed methods, 100 test objectives, horizon 40 "
            "(well under two minutes on a CPU)."),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--env", default=DEFAULT_ENV, help="optenv env id")
    p.add_argument("--env-kwargs", default=None, metavar="KEY=VALUE,...",
                   help="family or env arguments for the id, e.g. dim=20 or "
                        "observation=coordinatewise,features=li-malik-2017 (values read as "
                        "int, float, bool or str); allowed keys: the family's arguments and "
                        + ", ".join(ENV_ARGUMENTS))
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated, of: " + ", ".join(method_choices())
                        + " (DIR: a learned optimiser's run folder; NAME: a shipped one)")
    p.add_argument("--n-test", type=int, default=100, help="held-out test objectives")
    p.add_argument("--n-train", type=int, default=90,
                   help="training objectives for the hyper-parameter grid search")
    p.add_argument("--horizon", type=int, default=None,
                   help="iterations per run (default: the env's, 40 for the built-in ids)")
    p.add_argument("--seed", type=int, default=0,
                   help="first seed of the test (and train) objectives")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="objectives to evaluate on: held-out TEST, or TRAIN (the ones GPS "
                        "trains on and the grid search tunes on: a learned optimiser's "
                        "training-set figures, to set against its test figures)")
    p.add_argument("--criterion", choices=("mean", "final"), default="mean",
                   help="tuning score: mean f over the horizon, or final f")
    p.add_argument("--no-tune", action="store_true",
                   help="use each method's default hyper-parameters")
    p.add_argument("--out", default=None,
                   help="output directory (default: runs/compare/<env name>, with "
                        "-<env kwargs> appended for a variant)")
    p.add_argument("--no-plots", action="store_true",
                   help="write the JSON only (f* is still computed: it is in the JSON)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_value(text: str) -> Any:
    """A value of ``--env-kwargs``: bool (true/false, any case), int, float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    """``"dim=20,lam=1e-3,observation=coordinatewise"`` → {"dim": 20, "lam": 0.001,
    "observation": "coordinatewise"}; None → {}. ValueError naming ``--env-kwargs`` for an
    entry that is not KEY=VALUE or a key given twice."""
    if text is None:
        return {}
    out: dict[str, Any] = {}
    for raw in text.split(","):
        key, sep, value = (part.strip() for part in raw.partition("="))
        if not sep or not key.isidentifier() or not value:
            raise ValueError(f"--env-kwargs: got {raw.strip()!r} in {text!r}, allowed: "
                             "KEY=VALUE pairs separated by commas, e.g. dim=20")
        if key in out:
            raise ValueError(f"--env-kwargs: got {key!r} twice, allowed: each key once")
        out[key] = _parse_value(value)
    return out


def _env_variant(env_id: str, kwargs: dict[str, Any]) -> Any:
    """The env ``env_id`` made with ``kwargs`` (keys checked first: the family's arguments and
    :data:`ENV_ARGUMENTS`), to evaluate on; ValueError naming ``--env-kwargs`` otherwise."""
    import gymnasium as gym

    family = gym.spec(env_id).kwargs["family"]
    params = inspect.signature(FAMILIES[family]).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [k for k in params if params[k].kind is not inspect.Parameter.VAR_KEYWORD]
    allowed += list(ENV_ARGUMENTS)
    unknown = [k for k in kwargs if k not in allowed and not open_ended]
    if unknown:
        raise ValueError(f"--env-kwargs: got unknown key(s) {', '.join(map(repr, unknown))} "
                         f"for {env_id}, allowed: {', '.join(allowed)}")
    try:
        return gym.make(env_id, **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--env-kwargs: {err}") from err


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"--out: got {str(out)!r}, which is not a writable directory "
                         f"({err.strerror or err}); allowed: a directory you can write to") \
            from err


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--n-test", args.n_test, 1), ("--n-train", args.n_train, 1),
                             ("--seed", args.seed, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{flag}: got {value!r}, allowed: an int >= {low}")
    if args.horizon is not None and (not isinstance(args.horizon, int) or args.horizon < 1):
        raise ValueError(f"--horizon: got {args.horizon!r}, allowed: an int >= 1")
    if args.threads is not None and (not isinstance(args.threads, int) or args.threads < 1):
        raise ValueError(f"--threads: got {args.threads!r}, allowed: an int >= 1")


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or not np.isfinite(v):
        return "inf" if v is not None and v > 0 else "n/a"
    return f"{v:.{digits}g}"


def format_table(doc: dict[str, Any]) -> str:
    """A fixed-width text table of a results document (one row per method)."""
    t = doc["horizon"]
    head = ["method", f"mean f@{t} [95% CI]", f"median f@{t}", "mean f (1..T)", f"MoV@{t}",
            "diverged", "extra evals", "hyper-parameters"]
    rows = []
    for name, m in doc["methods"].items():
        mean = m["mean_f"][-1]
        ci = f"{_fmt(mean)} [{_fmt(m['mean_f_low'][-1])}, {_fmt(m['mean_f_high'][-1])}]"
        per_iter = [v for v in m["mean_f"][1:] if v is not None]
        auc = float(np.mean(per_iter)) if per_iter else None
        mov = m["margin_of_victory"][-1] if m["margin_of_victory"] else None
        hyper = m["hyperparameters"] or {}
        keys = list((m.get("tuning") or {}).get("grid") or {}) or [
            k for k in _TUNED_KEYS if k in hyper]
        shown = {k: hyper[k] for k in keys if k in hyper}
        rows.append([
            name, ci, _fmt(m["median_f"][-1]), _fmt(auc),
            "n/a" if mov is None else f"{mov:+.3g}",
            f"{100 * m['fraction_diverged']:.0f}%",
            f"{m['extra_evals_mean'] / t:.2f}/it",
            " ".join(f"{k}={v:g}" for k, v in shown.items()) or "-",
        ])
    out = fixed_width([head, *rows], rule=True)
    out += _format_beats(doc, "beats", f"share of iterations 1..{t} where the row's mean margin "
                         "over the column is positive:")
    if any(m["extra_evals_mean"] > 0 for m in doc["methods"].values()):
        out += _format_beats(doc, "beats_by_evals", f"the same at equal f/grad evaluation budgets "
                             f"1..{t} (line searches spend more than one per iteration):")
    return "\n".join(out)


def _format_beats(doc: dict[str, Any], key: str, title: str) -> list[str]:
    """A pairwise matrix: row's mean margin over column > 0 at this share of iterations."""
    names = [k for k, m in doc["methods"].items() if m.get(key)]
    if len(names) < 2:
        return []
    head = ["row beats column at", *names]
    rows = [[a, *("-" if a == b else f"{100 * doc['methods'][a][key].get(b, 0.0):.0f}%"
                  for b in names)] for a in names]
    return ["", title, *fixed_width([head, *rows])]


def fixed_width(rows: list[list[str]], *, rule: bool = False) -> list[str]:
    """Rows of cells as lines, each column padded to its widest cell (``rule``: a line of
    dashes under the first row)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


#: hyper-parameters worth showing in the table (the tuned ones; the rest are library defaults).
_TUNED_KEYS = ("lr", "momentum", "beta1", "alpha", "history_size")


@dataclass
class _Plan:
    """What the arguments resolve to, all checked before any method runs (a bad flag fails in
    a second, not after minutes of tuning)."""

    label: str
    env: Any  # the env id, or the variant --env-kwargs made
    family: Any
    defaults: dict[str, Any]
    methods: list[tuple[str, str | None]]
    horizon: int
    out: Path
    device: Any  # torch.device
    tune: bool  # not --no-tune


@dataclass
class _Runs:
    """Per method label: its evaluation, tuning record, hyper-parameters and seconds spent
    evaluating (the results document's inputs)."""

    evaluations: dict[str, Any] = field(default_factory=dict)
    tuned: dict[str, Any] = field(default_factory=dict)
    hyper: dict[str, Any] = field(default_factory=dict)
    walls: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)  # learned: absolute run folder


def run(args: argparse.Namespace) -> int:
    """Run the comparison ``args`` describe; returns the exit status (0).

    Four steps: resolve and check every argument, tune (hand-designed methods, on TRAIN) and
    evaluate (every method, on the same held-out objectives), the reference optimum f* of those
    objectives, then report (results.json, the figures, the table).
    """
    plan = _plan(args)
    world, device = init(plan.device)  # one process, or this rank of torchrun's world
    try:
        runs = _tune_and_evaluate(args, plan, world, device)
        reference = reference_optimum(plan.family, n_test=args.n_test, seed=args.seed,
                                      split=args.split, device=device,
                                      previous=_previous_results(plan.out / "results.json"),
                                      world=world)
        if world.is_main:
            _report(args, plan, runs, reference)
    finally:
        shutdown()
    return 0


def _previous_results(path: Path) -> Any:
    """The results document already in ``--out`` (its reference f* may be reused), or None
    when there is none or it does not parse: it is only a cache, and is overwritten."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _plan(args: argparse.Namespace) -> _Plan:
    """Check the arguments and resolve the env, methods, horizon, output directory and device;
    sets the torch thread count if asked."""
    import torch

    _check_args(args)
    env_kwargs = parse_env_kwargs(getattr(args, "env_kwargs", None))
    try:
        label, family, defaults = resolve_env(args.env)
    except ValueError as err:
        raise ValueError(f"--{err}") from err  # "env: got ..." → "--env: got ..."
    env: Any = args.env
    variant = ",".join(f"{k}={v}" for k, v in env_kwargs.items())
    if env_kwargs:
        env = _env_variant(args.env, env_kwargs)
        _, family, defaults = resolve_env(env)
        label = f"{label} with {variant}"
    methods = parse_methods(args.methods)
    horizon = args.horizon or defaults["horizon"]
    env_name = args.env.split("/")[-1] + (f"-{variant}" if variant else "")
    out = Path(args.out) if args.out is not None else Path("runs") / "compare" / env_name
    _check_out_dir(out)
    device = parse_device(args.device, "--device")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return _Plan(label, env, family, defaults, methods, horizon, out, device, not args.no_tune)


def _tune_and_evaluate(args: argparse.Namespace, plan: _Plan, world: World | None = None,
                       device: Any = None) -> _Runs:
    """Each method in turn: a hand-designed one is tuned (or takes its defaults) and built, a
    saved learned one is loaded; then it runs on the held-out objectives, timed. Under torchrun
    (``world``) the ranks share each hand-designed method's grid points and objectives, and
    each method that is not :func:`batch_invariant` runs whole on one rank (module docstring);
    every rank ends with all the runs."""
    from tqdm.auto import tqdm

    world = world or World()
    device = plan.device if device is None else device
    runs = _Runs()
    context = method_context(args.env, plan.family, plan.defaults, device)
    bar = tqdm(total=len(plan.methods), desc="compare", disable=args.quiet or not world.is_main,
               file=sys.stderr)
    n_whole = 0  # methods run whole on one rank so far (dealt round-robin)
    for name, path in plan.methods:
        label_m = name if path is None else f"{name}:{path}"
        run = {"n_test": args.n_test, "horizon": plan.horizon, "seed": args.seed,
               "split": args.split, "device": device, "name": label_m}
        if path is None:
            bar.set_postfix_str(f"{name}: tuning" if plan.tune else name)
            method: Any = _hand_method(name, label_m, args, plan, runs, world, device)
        else:
            method = load_method(name, path, context)  # on every rank: a bad one fails on all
            runs.hyper[label_m] = None
            runs.paths[label_m] = str(Path(path).resolve())
        bar.set_postfix_str(f"{label_m}: evaluating")
        if batch_invariant(method):
            t0 = time.perf_counter()
            runs.evaluations[label_m] = evaluate(method, plan.env, world=world, **run)
            runs.walls[label_m] = time.perf_counter() - t0
        else:
            owner, n_whole = n_whole % world.size, n_whole + 1
            t0 = time.perf_counter()
            mine = (evaluate(method, plan.env, **run), time.perf_counter() - t0) \
                if world.rank == owner else None
            runs.evaluations[label_m], runs.walls[label_m] = broadcast_object(mine, world, owner)
        bar.update(1)
    bar.close()
    return runs


def batch_invariant(method: Any) -> bool:
    """Whether ``method``'s per-objective numbers are bit-for-bit the same on any batch, so
    that the ranks of torchrun may share its objectives: the one rule, read from the method's
    ``batch_invariant`` attribute (:class:`baselines.optimizers.HandOptimizer` declares it per
    optimiser). Anything without one — a learned optimiser, whose batched network is not the
    same to the last bit on a smaller batch — is taken as not invariant and runs whole."""
    return bool(getattr(method, "batch_invariant", False))


def _hand_method(
    name: str, label: str, args: argparse.Namespace, plan: _Plan, runs: _Runs,
    world: World | None = None, device: Any = None,
) -> Any:
    """A hand-designed optimiser with its hyper-parameters grid-searched on the TRAIN
    objectives (as Li & Malik tuned theirs), or its defaults under ``--no-tune`` or when it has
    no grid; records the hyper-parameters (and the tuning) in ``runs``."""
    hp, tuning = tune_hand_method(name, plan.family, tune=plan.tune, n_train=args.n_train,
                                  horizon=plan.horizon, seed=args.seed,
                                  history=plan.defaults["history"], criterion=args.criterion,
                                  device=plan.device if device is None else device,
                                  world=world)
    if tuning is not None:
        runs.tuned[label] = tuning
    runs.hyper[label] = hp
    return HAND_OPTIMIZERS[name](**hp)


def tune_hand_method(
    name: str, family: Any, *, tune: bool = True, n_train: int, horizon: int, seed: int,
    history: int, criterion: str = "mean", device: Any = "cpu", world: World | None = None,
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """(hyper-parameters, tuning record) of the hand-designed optimiser ``name``: the best
    point of its grid on TRAIN objectives ``seed .. seed + n_train − 1`` of ``family`` at
    ``horizon`` (Li & Malik's protocol), or its defaults (record None) when ``tune`` is off or
    it has no grid. The study tunes once on its meta-train objectives and applies the result
    unchanged on every axis; compare tunes on the family it evaluates. ``world``: the ranks of
    a process group share the grid points (:func:`optenv.tuning.search_grid`)."""
    cls = HAND_OPTIMIZERS[name]
    if tune and cls.default_grid:
        tr = grid_search(name, family, n_train=n_train, horizon=horizon, seed=seed,
                         history=history, criterion=criterion, device=device, world=world)
        return dict(tr.best), tr.to_dict()
    return {k: float(v) for k, v in cls.defaults.items()}, None


def method_context(env: Any, family: Any, defaults: dict[str, Any], device: Any
                   ) -> dict[str, Any]:
    """The ``context`` a saved optimiser's loader checks the target env against
    (:mod:`optenv.lab.methods`): the env, its family, history, step bound, device and what it
    observes."""
    return {"env_id": env, "family": family, "history": defaults["history"],
            "max_step": defaults["max_step"], "device": str(device),
            "observation": defaults["observation"], "features": defaults["features"]}


def _report(args: argparse.Namespace, plan: _Plan, runs: _Runs,
            reference: dict[str, Any]) -> None:
    """Write results.json (and the figures unless ``--no-plots``), then print the set-up line,
    the table, how f* was obtained and the files written."""
    doc = make_results(
        runs.evaluations, family=plan.family, seed=args.seed, device=str(plan.device),
        tuning=runs.tuned, hyperparameters=runs.hyper, wall_s=runs.walls,
        tuning_setup={"split": "train", "n_train": args.n_train, "criterion": args.criterion}
        if plan.tune else None, reference=reference, paths=runs.paths)
    written = [write_results(doc, plan.out / "results.json")]
    if not args.no_plots:
        written += write_figures(doc, plan.out)
    # an earlier run's figures that this one did not redraw no longer match results.json
    removed = remove_stale_figures(plan.out, written)
    print(f"{plan.label}: {args.n_test} {args.split} objectives, horizon {plan.horizon}"
          + (f", tuned on {args.n_train} train objectives" if plan.tune
             else ", default settings"))
    print(format_table(doc))
    print(format_reference(doc["reference"]))
    print("wrote " + ", ".join(str(p) for p in written))
    if removed:
        print("removed stale " + ", ".join(str(p) for p in removed))


def format_reference(ref: dict[str, Any]) -> str:
    """One line: how f* was obtained, what it cost, and where a method went below it."""
    cost = "reused from the previous results.json" if ref["cached"] else \
        f"{ref['wall_s']:.1f} s"
    below = ref["below_reference"]
    line = f"f*: {ref['how']} ({cost})"
    if below["objectives"]:
        by = ", ".join(f"{k} {v}" for k, v in below["by"].items())
        line += (f"; methods reached lower f on {len(below['objectives'])} objective(s) "
                 f"(by up to {below['largest']:.2g}: {by}), taken as f* there")
    return line
