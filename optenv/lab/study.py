"""``optenv study``: the GPS-vs-supervised divergence study as one reproducible command.

    optenv study [--setting 2016|2017] [--quick] [--device cpu|cuda] [--out runs/study]
                 [--resume] [--seeds N] [--report-only] [--doc PAGE] [--threads N]

What it does (the plan — families, horizons, sizes — is declared in :mod:`optenv.lab.study_plan`):

1. **meta-trains** each learned method (coordinate-group GPS, Andrychowicz's BPTT LSTM, BPTT on
   GPS's own policy class) on the setting's meta-train objectives and horizon T, once per seed;
2. **tunes** the hand-designed methods by grid search on the same meta-train objectives at T
   (Li & Malik's protocol) and applies those hyper-parameters unchanged everywhere;
3. **evaluates** every method on the same held-out TEST objectives of each condition of each
   axis (same task; 10T; noisier gradients; a larger model; other families or data sets), one
   ``results.json`` per condition and seed in ``optenv compare``'s format, with the share of
   runs that diverge late added;
4. writes ``study.json`` (:mod:`optenv.lab.study_schema`), the figures and ``report.md``
   (:mod:`optenv.lab.study_report`), and prints the summary table.

The study folder (``--out``)::

    plan.json                          the plan and seed count (what --resume must match)
    train/<method>-s<seed>/            each learned method's run folder (optenv train layout)
    tuning.json                        the hand-designed methods' tuned hyper-parameters
    conditions/<condition>/seed<k>/results.json   (+ the compare figures of seed 0)
    stages/<stage>.json                one record per finished stage (its wall time)
    study.json, report.md, axis-<axis>.png/.svg, divergence.png/.svg, margin_of_victory.png/.svg

Checkpoints and resume: a stage is done when its output file is written (atomically, as every
file here). ``--resume`` skips done stages and continues an interrupted training run from its
last checkpoint (the trainers' own resume), so a resumed study computes what the uninterrupted
one would have. A folder holding a study (or anything else) is never overwritten without
``--resume``; a resumed study must have the same plan and seeds (the device may change).
``--report-only`` redraws the figures and report.md from study.json and the results files;
``--doc PAGE`` (repeatable) also regenerates the study's marked blocks of a Markdown page: the
tables in docs/results.md, the short summary in the README
(:func:`optenv.lab.study_report.update_doc`).

Across processes (``torchrun --nproc-per-node N -m optenv study ...``, :mod:`optenv.distributed`):
rank 0 claims and locks the folder and decides which stages are done (``--resume``), and tells
the others; the pending stages are dealt round-robin, first the training runs (each rank trains
whole runs: methods x seeds are independent, and GPS stays single-process inside a run) with
the tuning, then, once every rank is through, the evaluation conditions. The rank that runs a
stage writes its output and record, so whatever any rank finished is a checkpoint for
``--resume``; rank 0 alone writes study.json, the report and the figures, and prints. The
files are those of a one-process study but for run metadata (the ``wall_s`` fields, ``created``).
The study folder must be one file system all ranks see (one node, or a shared mount). A rank
that dies ends the run (torchrun stops the others); between phases a rank waits for the
others' work as long as it takes (:func:`optenv.distributed.wait_for_all`).

Threads: one torch thread by default. The study's batched problems are small, and on the shared
2-core machine torch's default of two threads made evaluation about 10x slower (momentum on
NeuralNet, 100 objectives x 400 iterations: 28.5 s against 2.8 s, 2026-12-02).

Bad arguments raise ValueError naming the flag (the CLI prints one line and exits 2).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optenv.lab.study_plan import (
    AXES,
    CHECKPOINTS,
    SETTINGS,
    Condition,
    LearnedMethod,
    StudyPlan,
    plan_for,
)

__all__ = ["add_parser", "run", "run_study"]

PLAN_FILE = "plan.json"
STUDY_FILE = "study.json"
TUNING_FILE = "tuning.json"
DEFAULT_OUT = "runs/study"


def add_parser(subparsers: Any) -> None:
    """Add the ``study`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "study", help="the GPS-vs-supervised divergence study: train, tune, evaluate, report",
        description=(
            "Meta-train coordinate-group GPS, Andrychowicz's BPTT LSTM and BPTT on GPS's policy "
            "class on the setting's meta-train objectives; tune the hand-designed methods on "
            "the same objectives; evaluate everything on held-out objectives along each axis "
            "(same task, 10x the horizon, noisier gradients, larger models, other families or "
            "data sets); write study.json, results.json per condition, figures and report.md. "
            "--quick on 2 idle CPU cores: the 2016 study in 5 minutes, the 2017 one in 8.4 "
            "(18 under load; measured 2026-12-02)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--setting", default="2016", help=f"one of {', '.join(SETTINGS)}")
    p.add_argument("--quick", action="store_true", help="the small preset (minutes on a CPU)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--out", default=DEFAULT_OUT, help="study folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out, skipping finished stages")
    p.add_argument("--seeds", type=int, default=1,
                   help="meta-training seeds per learned method (their spread is reported)")
    p.add_argument("--report-only", action="store_true",
                   help="redraw the figures and report.md from the study.json in --out")
    p.add_argument("--doc", action="append", default=None, metavar="PATH",
                   help="also regenerate the study's marked blocks of this Markdown file "
                        "(docs/results.md: the tables; README.md: the summary); repeatable")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: the study's batched problems are small, and on "
                        "a shared 2-core machine 2 threads evaluated 10x slower than 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``optenv study`` (module docstring); returns the exit status."""
    from optenv.lab.study_report import doc_block, format_summary, update_doc, write_report
    from optenv.lab.study_schema import read_study
    from optenv.validation import check_int, parse_device

    check_int("--seeds", args.seeds, 1)
    check_int("--threads", args.threads, 1)
    if args.setting not in SETTINGS:
        raise ValueError(f"--setting: got {args.setting!r}, allowed: {', '.join(SETTINGS)}")
    out = Path(args.out)
    if args.report_only:
        if not (out / STUDY_FILE).is_file():
            raise ValueError(f"--report-only: {str(out)!r} holds no {STUDY_FILE}; allowed: the "
                             "folder of a finished study")
        from optenv.locks import FolderLock

        doc = read_study(out / STUDY_FILE)
        for page in args.doc or ():
            doc_block(page, doc["setting"], doc["quick"])
        with FolderLock(out, "--out"):  # not while a study runs there
            written = write_report(doc, out)
    else:
        plan = plan_for(args.setting, args.quick)
        for page in args.doc or ():
            doc_block(page, plan.setting, plan.quick)  # a bad --doc fails now, not later
        device = str(parse_device(args.device, "--device"))
        doc, written = run_study(plan, out, seeds=args.seeds, device=device,
                                 resume=args.resume, quiet=args.quiet, threads=args.threads)
        if not doc:  # another rank of a torchrun job: rank 0 writes and reports
            return 0
    for page in args.doc or ():
        update_doc(doc, page)
    print(format_summary(doc))
    source = f"read {out / STUDY_FILE}; " if args.report_only else f"wrote {out / STUDY_FILE}, "
    print(f"{source}wrote {out / 'report.md'} and {len(written)} figure files"
          + (f"; updated {', '.join(args.doc)}" if args.doc else ""))
    return 0


@dataclass
class _Stage:
    """One checkpointed step: done when ``output`` exists; ``work`` computes and writes it."""

    name: str
    output: Path
    work: Callable[[], None]


def run_study(plan: StudyPlan, out: str | Path, *, seeds: int = 1, device: str = "cpu",
              resume: bool = False, quiet: bool = False, threads: int | None = None,
              figures: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """Run (or resume) the study ``plan`` describes into ``out``; returns (study document,
    figure files written), under torchrun ``({}, [])`` on every rank but 0. ``threads``: torch
    CPU threads for the whole study (None: as they are), restored afterwards.
    ``figures=False`` writes report.md without the per-condition compare figures (the study's
    own figures are always drawn)."""

    from optenv.distributed import init, shutdown
    from optenv.runs import torch_threads

    out = Path(out)
    world, rank_device = init(device)  # one process, or this rank of torchrun's world
    try:
        with _claimed(out, plan, seeds, resume, world), torch_threads(threads):
            return _run_stages(plan, out, seeds, device, str(rank_device), quiet, figures,
                               world)
    finally:
        shutdown()


@contextlib.contextmanager
def _claimed(out: Path, plan: StudyPlan, seeds: int, resume: bool,
             world: Any) -> Iterator[None]:
    """Rank 0 claims the folder (:func:`_claim_folder`) and holds its lock for the study; a
    refusal is raised on every rank (the others learn it from rank 0)."""
    from optenv.distributed import broadcast_object
    from optenv.locks import FolderLock

    lock, error = None, None
    if world.is_main:
        try:
            _claim_folder(out, plan, seeds, resume)
            lock = FolderLock(out, "--out")
        except ValueError as err:
            error = str(err)
    error = broadcast_object(error, world)
    if error is not None:
        raise ValueError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _run_stages(plan: StudyPlan, out: Path, seeds: int, device: str, rank_device: str,
                quiet: bool, figures: bool, world: Any) -> tuple[dict[str, Any], list[Path]]:
    """The stages this rank runs (all of them in one process), then, on rank 0, study.json
    and the report. ``device`` is the study's (recorded), ``rank_device`` this rank's."""
    from tqdm.auto import tqdm

    from optenv.distributed import broadcast_object, shard
    from optenv.lab.study_report import write_report
    from optenv.lab.study_schema import write_study

    stages = _stages(plan, out, seeds, rank_device, quiet, recorded_device=device)
    done = broadcast_object([s.output.is_file() for s in stages] if world.is_main else None,
                            world)
    pending = [s for s, d in zip(stages, done, strict=True) if not d]
    # training and tuning first (independent of each other), then the evaluations (which read
    # every trained policy and tuning.json)
    phases = ([s for s in pending if not s.name.startswith("evaluate-")],
              [s for s in pending if s.name.startswith("evaluate-")])
    bar = tqdm(total=sum(len(shard(p, world)) for p in phases), desc="study",
               disable=quiet or not world.is_main, file=sys.stderr)
    for what, phase in zip(("training and tuning", "evaluation"), phases, strict=True):
        for stage in shard(phase, world):
            bar.set_postfix_str(stage.name)
            t0 = time.perf_counter()
            stage.work()
            _write_json(out / "stages" / f"{stage.name}.json",
                        {"stage": stage.name, "wall_s": round(time.perf_counter() - t0, 3)})
            bar.update(1)
        _wait_for_ranks(world, what)
    bar.close()
    if not world.is_main:
        return {}, []
    doc = _study_document(plan, out, seeds, device)
    write_study(doc, out / STUDY_FILE)
    written = write_report(doc, out, condition_figures=figures)
    return doc, written


def _wait_for_ranks(world: Any, what: str) -> None:
    """Every rank through its share of ``what`` before the next phase, however long the
    others' training runs take (:func:`optenv.distributed.wait_for_all`); a rank that does not
    come within ``OPTENV_DIST_WAIT_TIMEOUT`` ends the study with a message saying what to do."""
    from optenv.distributed import wait_for_all, wait_timeout

    try:
        wait_for_all(world)
    except RuntimeError as err:
        raise RuntimeError(
            f"study: rank {world.rank} waited {wait_timeout().total_seconds():g} s "
            f"(OPTENV_DIST_WAIT_TIMEOUT) for the other ranks to finish {what}, in vain ({err}); "
            "the stages finished so far are saved: rerun the same command with --resume") from err


# ---------------------------------------------------------------------- the folder
def _claim_folder(out: Path, plan: StudyPlan, seeds: int, resume: bool) -> None:
    """Refuse a folder that holds something unless resuming the same study there; record the
    plan of a new study (``plan.json``) before any work."""
    record = {"plan": plan.to_dict(), "seeds": seeds}
    path = out / PLAN_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: got {str(out)!r}, which is a file; allowed: a folder")
    holds = out.is_dir() and any(out.iterdir())
    if resume and not path.is_file():  # a mistyped --out must not start a whole study
        raise ValueError(f"--resume: {str(out)!r} holds no study (no {PLAN_FILE}); allowed: "
                         "the --out of a study, or no --resume to start a new one")
    if holds and not resume:
        what = "a study" if path.is_file() else "other files"
        raise ValueError(f"--out: got {str(out)!r}, which holds {what}; allowed: --resume to "
                         "continue a study there, or a new or empty folder")
    if holds and path.is_file():
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        want = json.loads(json.dumps(record))  # as plan.json holds it
        if old != want:
            diff = [k for k in want["plan"] if old.get("plan", {}).get(k) != want["plan"][k]]
            if old.get("seeds") != seeds:
                diff.append("seeds")
            raise ValueError(f"--resume: {str(out)!r} holds a study with another "
                             f"{', '.join(diff) or 'plan'}; allowed: the same --setting, "
                             "--quick and --seeds as the study there")
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out: got {str(out)!r}, which cannot be created ({err.strerror}); "
                         "allowed: a folder you can write to") from err
    _write_json(path, record)


def _write_json(path: Path, obj: Any) -> Path:
    from optenv.lab.results import write_json

    return write_json(obj, path)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# ---------------------------------------------------------------------- stages
def _run_path(out: Path, method: LearnedMethod, seed: int) -> Path:
    return out / "train" / f"{method.name}-s{seed}"


def _condition_dir(out: Path, cond: Condition) -> Path:
    return out / "conditions" / cond.name


def _stages(plan: StudyPlan, out: Path, seeds: int, device: str,
            quiet: bool, recorded_device: str | None = None) -> list[_Stage]:
    """The study's stages in order: training (per method and seed), tuning, evaluation (per
    condition); each one's output file says it is done. ``device``: where they compute;
    ``recorded_device`` (default ``device``): what the results files say (under torchrun
    a rank computes on ``cuda:LOCAL_RANK`` of the study's ``cuda``)."""
    recorded = device if recorded_device is None else recorded_device
    stages = []
    for method in plan.learned:
        for seed in range(seeds):
            name = f"train-{method.name}-s{seed}"
            stages.append(_Stage(name, out / "stages" / f"{name}.json",
                                 lambda m=method, s=seed: _train(plan, m, s, out, device,
                                                                 quiet)))
    stages.append(_Stage("tune", out / TUNING_FILE, lambda: _tune(plan, out, device)))
    for cond in plan.conditions:
        stages.append(_Stage(f"evaluate-{cond.name}", out / "stages" / f"evaluate-{cond.name}.json",
                             lambda c=cond: _evaluate_condition(plan, c, out, seeds, device,
                                                                quiet, recorded)))
    return stages


def _train(plan: StudyPlan, method: LearnedMethod, seed: int, out: Path, device: str,
           quiet: bool) -> None:
    """Meta-train ``method`` with ``seed`` into its run folder, continuing the run there if an
    earlier study was interrupted during it (the trainer's own --resume)."""
    path = _run_path(out, method, seed)
    resume = (path / "checkpoint.pt").is_file()
    if method.trainer == "gps":
        from gps.train import make_config, train

        config = make_config("badmm", quick=plan.quick,
                             **{**dict(plan.gps), **dict(method.options),
                                "horizon": plan.horizon, "seed": seed})
        train(plan.train_env, path, config, device=device, resume=resume, quiet=quiet)
        return
    if method.trainer == "bptt":
        from baselines import bptt_train

        args = argparse.Namespace(
            env=plan.train_env, arch=None, features=None, out=str(path), quick=plan.quick,
            iterations=None, batch_size=None, horizon=plan.horizon, unroll=None, lr=None,
            second_order=None, seed=seed, device=device, resume=resume, quiet=quiet)
        vars(args).update({**dict(plan.bptt), **dict(method.options)})
        with contextlib.redirect_stdout(io.StringIO()):  # its "wrote ..." line
            bptt_train.run(args)
        return
    raise ValueError(f"plan.learned[{method.name!r}].trainer: got {method.trainer!r}, "
                     "allowed: 'gps', 'bptt'")


def _tune(plan: StudyPlan, out: Path, device: str) -> None:
    """Grid-search every hand-designed method once on the meta-train objectives at the
    training horizon; ``tuning.json`` holds the results every condition then uses."""
    from optenv.evaluate import resolve_env
    from optenv.lab.compare import tune_hand_method

    _label, family, defaults = resolve_env(plan.train_env)
    t0 = time.perf_counter()
    methods = {}
    for name in plan.hand:
        hp, record = tune_hand_method(name, family, n_train=plan.n_train, horizon=plan.horizon,
                                      seed=0, history=defaults["history"],
                                      criterion=plan.criterion, device=device)
        methods[name] = {"hyperparameters": hp, "tuning": record}
    _write_json(out / TUNING_FILE, {
        "setup": {"env_id": plan.train_env, "horizon": plan.horizon, "n_train": plan.n_train,
                  "criterion": plan.criterion, "split": "train",
                  "wall_s": round(time.perf_counter() - t0, 3)},
        "methods": methods})


def _condition_env(cond: Condition) -> Any:
    import gymnasium as gym

    return gym.make(cond.env_id, **cond.kwargs()) if cond.env_kwargs else cond.env_id


def _evaluate_condition(plan: StudyPlan, cond: Condition, out: Path, seeds: int, device: str,
                        quiet: bool, recorded_device: str | None = None) -> None:
    """Every method on the condition's held-out objectives (hand-designed ones once, learned
    ones per seed), f* of those objectives, and one results.json per seed (which records
    ``recorded_device``, default ``device``)."""
    from tqdm.auto import tqdm

    from baselines.optimizers import OPTIMIZERS
    from optenv.evaluate import evaluate, resolve_env
    from optenv.lab.compare import method_context
    from optenv.lab.methods import load_method
    from optenv.lab.reference import reference_optimum
    from optenv.lab.results import make_results, write_results
    from optenv.metrics import fraction_late_divergence

    tuning = _read_json(out / TUNING_FILE)
    env = _condition_env(cond)
    _label, family, defaults = resolve_env(env)
    horizon = cond.horizon_x * plan.horizon
    context = method_context(cond.env_id, family, defaults, device)
    run = {"n_test": plan.n_test, "horizon": horizon, "seed": 0, "split": "test",
           "device": device}
    bar = tqdm(total=len(plan.hand) + len(plan.learned) * seeds, desc=cond.name, leave=False,
               disable=quiet, file=sys.stderr)
    hand, walls = {}, {}
    for name in plan.hand:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        hp = tuning["methods"][name]["hyperparameters"]
        hand[name] = evaluate(OPTIMIZERS[name](**hp), env, name=name, **run)
        walls[name] = time.perf_counter() - t0
        bar.update(1)
    reference = (reference_optimum(family, n_test=plan.n_test, seed=0, split="test",
                                   device=device) if plan.reference else None)
    for seed in range(seeds):
        learned, paths = {}, {}
        for method in plan.learned:
            bar.set_postfix_str(f"{method.name} s{seed}")
            path = _run_path(out, method, seed)
            t0 = time.perf_counter()
            policy = load_method(method.trainer, str(path), context)
            learned[method.name] = evaluate(policy, env, name=method.name, **run)
            walls[method.name] = time.perf_counter() - t0
            paths[method.name] = str(path.resolve())
            bar.update(1)
        evaluations = {**learned, **hand}
        doc = make_results(
            evaluations, family=family, seed=0,
            device=device if recorded_device is None else recorded_device,
            tuning={k: v["tuning"] for k, v in tuning["methods"].items()},
            hyperparameters={**dict.fromkeys(learned), **{k: v["hyperparameters"] for k, v
                                                          in tuning["methods"].items()}},
            wall_s=walls, tuning_setup=tuning["setup"], reference=reference, paths=paths)
        for name, ev in evaluations.items():
            doc["methods"][name]["fraction_late_divergence"] = fraction_late_divergence(ev.f)
        write_results(doc, _condition_dir(out, cond) / f"seed{seed}" / "results.json")
    bar.close()


# ---------------------------------------------------------------------- study.json
def _study_document(plan: StudyPlan, out: Path, seeds: int, device: str) -> dict[str, Any]:
    """study.json's content, from plan.json's plan, the stage records, tuning.json and the
    results files (optenv.lab.study_schema)."""
    from optenv.lab.results import read_results
    from optenv.lab.study_schema import condition_entry, make_study

    tuning = _read_json(out / TUNING_FILE)
    stage_wall = {p.stem: _read_json(p)["wall_s"] for p in (out / "stages").glob("*.json")}
    methods: dict[str, Any] = {}
    for m in plan.learned:
        methods[m.name] = {
            "kind": "learned", "description": m.description, "hyperparameters": None,
            "tuning_score": None,
            "runs": [{"seed": s, "path": str(_run_path(out, m, s).relative_to(out)),
                      "wall_s": stage_wall.get(f"train-{m.name}-s{s}")} for s in range(seeds)]}
    for name, t in tuning["methods"].items():
        methods[name] = {"kind": "hand", "description": "hand-designed, tuned on the meta-train "
                         "objectives" if t["tuning"] else "hand-designed, defaults",
                         "runs": None, "hyperparameters": t["hyperparameters"],
                         "tuning_score": (t["tuning"] or {}).get("score")}
    conditions = {}
    for cond in plan.conditions:
        files = [_condition_dir(out, cond) / f"seed{s}" / "results.json" for s in range(seeds)]
        docs = [read_results(f) for f in files]
        conditions[cond.name] = {
            "axis": cond.axis, "env_id": cond.env_id, "env_kwargs": cond.kwargs(),
            "horizon": cond.horizon_x * plan.horizon, "n_test": plan.n_test,
            "wall_s": stage_wall.get(f"evaluate-{cond.name}"),
            "results": [str(f.relative_to(out)) for f in files],
            "methods": condition_entry(docs, plan.horizon, CHECKPOINTS)}
    axes = {a: {"description": AXES[a], "conditions": [c.name for c in conds]}
            for a, conds in plan.axes().items()}
    wall = {"train": sum(v for k, v in stage_wall.items() if k.startswith("train-")),
            "tune": stage_wall.get("tune", tuning["setup"]["wall_s"]),
            "evaluate": sum(v for k, v in stage_wall.items() if k.startswith("evaluate-"))}
    return make_study(plan=plan.to_dict(), seeds=seeds, device=device, methods=methods,
                      tuning=tuning["setup"], axes=axes,
                      not_applicable=dict(plan.not_applicable), conditions=conditions,
                      checkpoints=CHECKPOINTS, wall_s=wall)
