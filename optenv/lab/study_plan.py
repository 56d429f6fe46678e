"""What ``optenv study`` runs: each setting's training, tuning and evaluation, declared once.

A :class:`StudyPlan` holds everything a study computes — the meta-train objective(s) and
horizon T, the learned methods and how each is trained, the hand-designed methods and their
tuning, and the held-out evaluation conditions grouped into axes — so that the orchestration
(:mod:`optenv.lab.study`) holds no numbers of its own, the plan is recorded in the study folder
(``plan.json``, which ``--resume`` checks), and tests inject tiny plans.

The three learned methods (Li & Malik 2017's question: does the training method, not the policy,
decide whether a learned optimiser keeps converging past its training horizon?):

* ``gps``: coordinate-group GPS (BADMM) training :class:`optenv.policy.CoordinatewisePolicy`
  (MLP cell) on the 2016 per-coordinate rows;
* ``bptt-lstm``: Andrychowicz et al.'s coordinatewise LSTM on each coordinate's gradient,
  meta-trained by truncated BPTT (``optenv train bptt --arch lstm``);
* ``bptt-same``: BPTT on the SAME policy class and features as ``gps``
  (``--arch coordinatewise-mlp``): the training method is the only difference.

Hand-designed methods are tuned once, on the meta-train objectives at the training horizon, and
applied unchanged on every axis, as Li & Malik did; ``cg-fixed`` and ``lbfgs-fixed`` are their
fixed-step baselines, ``cg`` and ``lbfgs`` (Wolfe line search) the strong references.

Axes (a condition = one env variant at one horizon, evaluated on ``n_test`` TEST objectives):
``same`` (the training family at T), ``horizon`` (the training family at 10T; the tables read it
at T, 2T, 5T, 10T), ``noise`` (noisier gradients), ``architecture`` (a larger model), ``datasets``
(other objective families / data sets). The 2016 setting trains on LogisticRegression; its
families are full-batch, so it has no noise axis (recorded under ``not_applicable``).

Why the quick 2016 sizes are what they are (2 CPU cores shared with other jobs; target: the whole
study within 20 minutes): GPS's ``--quick`` preset as it is (90 conditions x 10 samples x 10
iterations: 121 s for the coordinatewise policy on LogisticRegression in the measured study,
one torch thread, 2026-12-02), BPTT's quick preset (100 meta-iterations of 32 objectives: 11 s
per arch), 90 tuning objectives (the grid search is cheap), 100 test objectives per condition,
every condition but ``same`` at 10T = 400 iterations: 298 s in all (docs/study.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AXES", "CHECKPOINTS", "HAND_METHODS", "SETTINGS", "Condition", "LearnedMethod",
           "StudyPlan", "plan_for"]

#: Axis name → what it varies (in the order tables and figures show them).
AXES: dict[str, str] = {
    "same": "the training family, at the training horizon T",
    "horizon": "the training family, 10x the training horizon (read at T, 2T, 5T, 10T)",
    "noise": "noisier gradients (smaller minibatches)",
    "architecture": "a larger model of the training family",
    "datasets": "other objective families / data sets",
}
#: The hand-designed methods every study tunes and evaluates (baselines.optimizers names).
HAND_METHODS = ("gd", "momentum", "nesterov", "adam", "adagrad", "rmsprop", "cg", "lbfgs",
                "cg-fixed", "lbfgs-fixed")
#: Multiples of T at which the tables read mean f (those within a condition's horizon).
CHECKPOINTS = (1, 2, 5, 10)
SETTINGS = ("2016", "2017")


@dataclass(frozen=True)
class Condition:
    """One held-out evaluation: ``env_id`` made with ``env_kwargs``, run for ``horizon_x`` times
    the training horizon; ``name`` is its folder and table label."""

    name: str
    axis: str
    env_id: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    horizon_x: int = 10

    def kwargs(self) -> dict[str, Any]:
        return dict(self.env_kwargs)


@dataclass(frozen=True)
class LearnedMethod:
    """A meta-trained method: ``trainer`` "gps" (``gps.train.train`` with ``options`` as
    :class:`gps.config.GPSConfig` overrides) or "bptt" (``optenv train bptt`` with ``options``
    as its flags, ``arch`` among them)."""

    name: str
    trainer: str
    description: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study computes (module docstring). ``gps`` and ``bptt`` are overrides of
    each trainer's config applied to every learned method of that trainer (the presets' sizes);
    ``reference``: compute f* per condition (the suboptimality figures)."""

    setting: str
    quick: bool
    train_env: str
    horizon: int
    learned: tuple[LearnedMethod, ...]
    conditions: tuple[Condition, ...]
    gps: tuple[tuple[str, Any], ...] = ()
    bptt: tuple[tuple[str, Any], ...] = ()
    hand: tuple[str, ...] = HAND_METHODS
    n_train: int = 90
    criterion: str = "mean"
    n_test: int = 100
    reference: bool = True
    not_applicable: tuple[tuple[str, str], ...] = ()

    def axes(self) -> dict[str, list[Condition]]:
        """Axis → its conditions, in :data:`AXES` order (axes without conditions left out)."""
        out: dict[str, list[Condition]] = {}
        for axis in AXES:
            conds = [c for c in self.conditions if c.axis == axis]
            if conds:
                out[axis] = conds
        return out

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON data (``plan.json``; tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> StudyPlan:
        return dataclasses.replace(self, **changes)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


_LEARNED_2016 = (
    LearnedMethod("gps", "gps", "coordinate-group GPS (BADMM), CoordinatewisePolicy (MLP cell)",
                  (("policy", "coordinatewise"),)),
    LearnedMethod("bptt-lstm", "bptt", "BPTT, Andrychowicz et al.'s coordinatewise LSTM",
                  (("arch", "lstm"),)),
    LearnedMethod("bptt-same", "bptt", "BPTT, the same CoordinatewisePolicy (MLP cell) as gps",
                  (("arch", "coordinatewise-mlp"),)),
)

_CONDITIONS_2016 = (
    Condition("same", "same", "optenv/LogisticRegression-v0", horizon_x=1),
    Condition("horizon-10x", "horizon", "optenv/LogisticRegression-v0"),
    Condition("dim-20", "architecture", "optenv/LogisticRegression-v0", (("dim", 20),)),
    Condition("dim-100", "architecture", "optenv/LogisticRegression-v0", (("dim", 100),)),
    Condition("quadratic", "datasets", "optenv/Quadratic-v0"),
    Condition("robust-regression", "datasets", "optenv/RobustRegression-v0"),
    Condition("neural-net", "datasets", "optenv/NeuralNet-v0"),
)


def _plan_2016(quick: bool) -> StudyPlan:
    return StudyPlan(
        setting="2016", quick=quick, train_env="optenv/LogisticRegression-v0", horizon=40,
        learned=_LEARNED_2016, conditions=_CONDITIONS_2016,
        not_applicable=(("noise", "the 2016 families are full-batch: their gradients are "
                                  "exact"),))


_PSI = ("features", "li-malik-2017-psi")
_LEARNED_2017 = (
    LearnedMethod("gps", "gps", "coordinate-group GPS (BADMM), CoordinatewisePolicy (MLP cell) "
                  "on Li & Malik 2017's features", (("policy", "coordinatewise"), _PSI)),
    LearnedMethod("bptt-lstm", "bptt", "BPTT, Andrychowicz et al.'s coordinatewise LSTM",
                  (("arch", "lstm"),)),
    LearnedMethod("bptt-same", "bptt", "BPTT, the same CoordinatewisePolicy (MLP cell) and "
                  "features as gps", (("arch", "coordinatewise-mlp"), _PSI)),
)

_CONDITIONS_2017 = (
    Condition("same", "same", "optenv/MLPClassifier-v0", horizon_x=1),
    Condition("horizon-10x", "horizon", "optenv/MLPClassifier-v0"),
    Condition("noisy", "noise", "optenv/MLPClassifierNoisy-v0", horizon_x=2),
    Condition("large", "architecture", "optenv/MLPClassifierLarge-v0", horizon_x=2),
    Condition("mnist1d", "datasets", "optenv/MLPClassifierMNIST1D-v0", horizon_x=2),
)


def _plan_2017(quick: bool) -> StudyPlan:
    """Li & Malik 2017: meta-train on the 48-48-10 net on digits (minibatches of 64), T = 400;
    meta-test on minibatches of 10, a 100-200 net, MNIST-1D (at 2T, the paper's 800) and on
    the training net at 10T. ``quick``: T = 20, small GPS and BPTT runs, 10 tuning and 10 test
    objectives, no f* (the numerical reference of d = 2 842 nets is the costly part)."""
    plan = StudyPlan(setting="2017", quick=quick, train_env="optenv/MLPClassifier-v0",
                     horizon=400, learned=_LEARNED_2017, conditions=_CONDITIONS_2017)
    if not quick:
        return plan
    return plan.replace(
        horizon=20, n_train=10, n_test=10, reference=False,
        gps=(("conditions", 6), ("samples", 3), ("iterations", 3)),
        bptt=(("iterations", 30), ("batch_size", 8)))


def plan_for(setting: str, quick: bool) -> StudyPlan:
    """The declared plan of ``setting`` ("2016" or "2017"), full or ``quick``; ValueError
    naming ``--setting`` otherwise."""
    if setting == "2016":
        return _plan_2016(quick)
    if setting == "2017":
        return _plan_2017(quick)
    raise ValueError(f"--setting: got {setting!r}, allowed: {', '.join(SETTINGS)}")
