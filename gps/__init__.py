"""Guided Policy Search, from scratch: batched KL-constrained LQR and dynamics fitting on torch.

The trajectory-optimisation machinery of Levine & Abbeel (2014) and Levine et al. (2016), written
to solve every condition (training objective) at once, on the GPU where one is present.

Public API of the numerical core:

* :func:`gps.lqr.kl_constrained_lqr` (and :func:`~gps.lqr.prepare_lqr`,
  :func:`~gps.lqr.lqr_backward`, :func:`~gps.lqr.lqr_forward`): the KL-constrained
  trajectory-optimisation step on the dynamics, cost and previous controller
  (:class:`~gps.dynamics.LinearGaussianDynamics`, :class:`~gps.cost.QuadraticCost`,
  :class:`~gps.controller.LinearGaussianController`), with the BADMM terms
  (:class:`~gps.lqr.PolicyTerm`, :class:`~gps.lqr.LagrangeTerm`); mirror-descent GPS passes the
  policy's linearisation as the previous controller.
* :func:`gps.dynamics.fit_linear_gaussian` with :class:`gps.prior.GMMPrior`: per-step
  linear-Gaussian dynamics with a normal-inverse-Wishart prior from a batched-EM GMM.
* The slow per-condition numpy implementation (test oracle, benchmark baseline) is not part of
  the package: ``benchmarks/reference.py`` in the repository, and ``python -m
  benchmarks.gps_bench lqr|dynamics`` (from the repository root) times one against the other.

The learner built on it:

* :class:`gps.agent.GPSAgent` with :class:`gps.config.GPSConfig` (BADMM or mirror-descent GPS),
  ``optenv train gps`` (:mod:`gps.train`), and :func:`gps.train.load_optimizer` to load a
  trained policy in one call.
"""

from gps.agent import GPSAgent
from gps.config import GPSConfig
from gps.controller import LinearGaussianController
from gps.cost import QuadraticCost
from gps.dynamics import LinearGaussianDynamics, fit_linear_gaussian
from gps.gmm import GMM, fit_gmm
from gps.lqr import (
    LagrangeTerm,
    LQRProblem,
    LQRResult,
    LQRStatus,
    PolicyTerm,
    kl_constrained_lqr,
    lqr_backward,
    lqr_forward,
    prepare_lqr,
)
from gps.prior import GMMPrior
from gps.train import load_optimizer

__all__ = [
    "GMM",
    "GMMPrior",
    "GPSAgent",
    "GPSConfig",
    "LQRProblem",
    "LQRResult",
    "LQRStatus",
    "LagrangeTerm",
    "LinearGaussianController",
    "LinearGaussianDynamics",
    "PolicyTerm",
    "QuadraticCost",
    "fit_gmm",
    "fit_linear_gaussian",
    "kl_constrained_lqr",
    "load_optimizer",
    "lqr_backward",
    "lqr_forward",
    "prepare_lqr",
]
