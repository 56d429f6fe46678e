"""The hyper-parameters of a GPS run, declared once: default, help text and ``--quick`` value.

:class:`GPSConfig`'s defaults are Li & Malik's settings (from the authors' released code:
90 conditions, 20 samples, T = 40, kl_step 0.2, BADMM with 4 inner iterations, Adam lr 1e-4
with weight decay 0.005); where the authors' value is not known, the reference GPS code's
default is used (min/max step multipliers, lg_step, init_pol_wt, GMM sizes). Each field also
carries its help text and, where the ``--quick`` preset changes it, its quick value;
``optenv train gps`` generates its flags from these fields (:mod:`optenv.flags`), so the flag,
its help, its default and its preset are one declaration.

Why the quick preset is what it is (sized to learn something real on 2 CPU cores in minutes):

* lg_step 0.05 (reference default 10): the objective's scale is small (f ~ 0.2 on logistic
  regression, curvature ~0.1), so ν_t += 10·KL_t makes the KL-to-policy term dominate the cost
  within two iterations and the trajectories stop improving (measured: policy cost on the
  training conditions stuck at 0.211 vs 0.2015 after 5 iterations with 0.05).
* 90 conditions x 10 samples x 10 iterations (measured on 100 TEST objectives, horizon 40):
  the number of training objectives is what makes the policy generalise. 20 x 10 x 15 (97 s)
  was below momentum's mean curve at 25% of iterations; 90 x 10 x 10 (about 3 min) and
  90 x 20 x 30 (42 min) both at 95%; 200 x 10 x 10 no better. Fixing ν (lg_step 0) fits the
  training conditions better (policy cost 0.213 vs 0.218) and generalises worse (28%).
* cost_hessian "psd": on non-convex families the exact Hessian's negative curvature makes the
  LQR crawl through PD retries (RobustRegression quick, 2026-11-26: 1 367 s exact vs 198 s psd;
  exact learns a somewhat better optimiser, 0.5303 vs 0.5340 mean f at iteration 40). Convex
  families: equal.
* a 3-step LQR history (see :mod:`gps.controller`), 2 inner iterations, and fewer, larger Adam
  steps (400 at lr 1e-3 on minibatches of 256) keep an iteration to a minute or two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from gps.model import COST_HESSIANS
from optenv.features import DEFAULT_FEATURES, FEATURE_SETS
from optenv.flags import option
from optenv.validation import check_choice, check_int, check_number, check_tuple

__all__ = ["ALGORITHMS", "POLICIES", "GPSConfig"]

ALGORITHMS = ("badmm", "mdgps")
#: The policy classes GPS trains: Li & Malik 2016's flat MLP (gps.agent) or 2017's
#: coordinatewise policy with per-coordinate, group-shared local models (gps.coordinatewise).
POLICIES = ("flat", "coordinatewise")

#: Smallest value of each int field.
_INT_LOWS = {"conditions": 1, "samples": 2, "horizon": 2, "iterations": 0, "inner_iterations": 1,
             "lqr_max_iter": 1, "gmm_clusters": 1, "gmm_min_samples": 1, "gmm_iters": 1,
             "policy_steps": 1, "policy_batch": 1, "seed": 0,
             "hessian_exact_max": 1, "hessian_probes": 1, "gmm_max_samples": 1}
_POSITIVE = ("kl_step", "min_step_mult", "max_step_mult", "init_var", "policy_lr",
             "prior_strength")
_NON_NEGATIVE = ("policy_dual_rate", "lg_step", "init_pol_wt", "dynamics_reg",
                 "policy_weight_decay")


@dataclass
class GPSConfig:
    """Hyper-parameters of a GPS run (module docstring: the defaults are the authors', each
    field's ``quick`` metadata is the ``--quick`` preset). Checked on construction: a bad value
    is a ValueError naming the field."""

    algorithm: str = option(
        "badmm", choices=ALGORITHMS,
        help="badmm (Li & Malik's BADMM GPS) or mdgps (mirror-descent GPS)")
    policy: str = option(
        "flat", choices=POLICIES,
        help="flat (Li & Malik 2016: one MLP on the whole observation, tied to d) or "
             "coordinatewise (2017: one net per coordinate row, any d; per-coordinate GPS)")
    features: str = option(
        DEFAULT_FEATURES, choices=tuple(FEATURE_SETS),
        help="coordinatewise: the per-coordinate features the policy reads (li-malik-2016: "
             "the 2016 state's row; li-malik-2017-psi: Li & Malik 2017's observation "
             "features; li-malik-2017: their averaged state features, history >= 132)")
    conditions: int = option(90, quick=90, help="training objectives (conditions) M")
    samples: int = option(20, quick=10, help="samples per condition per iteration N")
    horizon: int = option(40, help="trajectory length T")
    iterations: int = option(20, quick=10, help="GPS iterations to run in total")
    kl_step: float = option(
        0.2, help="KL step (mean per-step KL bound of the trajectory update)")
    min_step_mult: float = option(0.01, help="smallest multiplier of the KL step")
    max_step_mult: float = option(10.0, help="largest multiplier of the KL step")
    inner_iterations: int = option(4, quick=2, help="BADMM inner iterations")
    policy_dual_rate: float = option(0.2, help="BADMM step size of the Lagrange multipliers")
    lg_step: float = option(10.0, quick=0.05,
                            help="BADMM step size of the per-step KL weights nu")
    init_pol_wt: float = option(
        0.01, help="BADMM's initial per-step KL weight nu (0 with --lg-step 0: the controllers "
                   "ignore the policy)")
    init_var: float = option(
        0.01, help="variance of the initial (momentum) controllers' actions")
    lqr_history: int | None = option(  # None = the env's history (the full state)
        None, quick=3, shown="the env's", help="history of the LQR state")
    lqr_max_iter: int = option(
        50, quick=20, help="dual (eta) iterations of each KL-constrained LQR solve")
    dynamics_reg: float = option(1e-3, help="ridge added to the dynamics fits' covariance")
    cost_hessian: str = option(  # see gps.model.expand_cost
        "exact", quick="psd", choices=COST_HESSIANS,
        help="exact or psd (negative curvature of f clipped to 0)")
    hessian_exact_max: int = option(
        64, help="coordinatewise: the largest d whose cost uses the exact Hessian diagonal "
                 "(above it, a Hutchinson estimate)")
    hessian_probes: int = option(
        8, help="coordinatewise: Rademacher probes of the Hutchinson Hessian-diagonal estimate")
    gmm_max_samples: int = option(
        20, help="coordinatewise: pooled coordinate trajectories per condition and group that "
                 "the group's GMM prior is fitted on, at most (evenly spaced; all of them feed "
                 "the per-step fits)")
    gmm_clusters: int = option(
        20, help="clusters of the GMM priors (dynamics and policy linearisation)")
    gmm_min_samples: int = option(20, help="samples per GMM cluster, at least")
    gmm_iters: int = option(100, quick=30, help="EM iterations of each GMM fit")
    prior_strength: float = option(1.0, help="weight of the GMM prior in the per-step fits")
    policy_hidden: tuple[int, ...] = option(
        (50,), help="hidden layer sizes of the policy's MLP, comma-separated (e.g. 50 or "
                    "100,100; empty: a linear policy)")
    policy_lr: float = option(1e-4, quick=1e-3, help="Adam learning rate of the policy")
    policy_weight_decay: float = option(0.005, help="Adam weight decay of the policy")
    policy_steps: int = option(4000, quick=400, help="Adam steps per policy update")
    policy_batch: int = option(25, quick=256, help="minibatch size of the policy updates")
    momentum_lr_grid: tuple[float, ...] = option(
        default_factory=lambda: tuple(2.0**k for k in range(-10, 5)),
        help="learning rates of the initial controllers' grid search, comma-separated")
    momentum_grid: tuple[float, ...] = option(
        (0.5, 0.7, 0.9, 0.95, 0.99),
        help="momenta of the initial controllers' grid search, comma-separated")
    seed: int = option(0, help="seed (training conditions, sampling noise, policy init)")

    def __post_init__(self) -> None:
        check_choice("cost_hessian", self.cost_hessian, COST_HESSIANS)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        check_choice("policy", self.policy, POLICIES)
        check_choice("features", self.features, tuple(FEATURE_SETS))
        if self.policy == "flat" and self.features != DEFAULT_FEATURES:
            raise ValueError(f"features: got {self.features!r} with policy 'flat', allowed: "
                             f"{DEFAULT_FEATURES!r} (the flat policy reads the 2016 "
                             "observation; other feature sets need policy 'coordinatewise')")
        for name, low in _INT_LOWS.items():
            check_int(name, getattr(self, name), low)
        for name in _POSITIVE:
            check_number(name, getattr(self, name))
        for name in _NON_NEGATIVE:
            check_number(name, getattr(self, name), strict=False)
        if self.min_step_mult > self.max_step_mult:
            raise ValueError(f"min_step_mult: got {self.min_step_mult} > max_step_mult "
                             f"{self.max_step_mult}, allowed: min <= max")
        self.policy_hidden = check_tuple(
            "policy_hidden", self.policy_hidden, int, lambda h: h >= 1,
            "a sequence of ints >= 1 (empty: a linear policy)", allow_empty=True)
        self.momentum_lr_grid = check_tuple(
            "momentum_lr_grid", self.momentum_lr_grid, float,
            lambda v: math.isfinite(v) and v > 0, "a non-empty sequence of finite numbers > 0")
        self.momentum_grid = check_tuple(
            "momentum_grid", self.momentum_grid, float, lambda v: 0 <= v < 1,
            "a non-empty sequence of numbers in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPSConfig:
        """The config of a run folder's ``config.json`` (keys that are not fields, such as
        ``env`` or ``device``, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                      if k in names})
