"""Batched KL-constrained LQR: the trajectory-optimisation step of Guided Policy Search.

For every condition b (all solved at once, in lock-step) this minimises the expected cost of a
time-varying linear-Gaussian controller ``u_t ~ N(K_t x_t + k_t, S_t)`` under linear-Gaussian
dynamics, subject to ``KL(new || previous) <= kl_step * T`` measured under the new state marginals
(Levine & Abbeel 2014). It uses the dual method of the reference GPS code:

* For a dual variable eta the Lagrangian is minimised by one backward Riccati pass on the cost
  ``(l(x,u) - eta log p_prev(u|x)) / eta`` plus the entropy of the new controller, whose minimiser
  has covariance ``S_t = Q_uu^-1`` (:func:`_backward_pass`).
* A forward pass propagates the state marginals and sums the per-step KL (:func:`_forward_pass`).
* eta is found by a bracketed log-space search: bracket [min_eta, max_eta] = [1e-8, 1e16], each
  move capped at x10 or /10, at most 50 iterations, converged when
  ``|KL - kl_step*T| < 0.1 * kl_step*T``. A non-positive-definite Q_uu raises that condition's eta
  (``eta = eta_start + delta``, delta doubling from 1e-4) and retries.
* One departure from the reference code (``stop_when_inactive``, default on): a condition whose
  KL is still below the bound at ``eta <= 2 * min_eta`` stops there (status KL_BOUND_INACTIVE).
  The bound does not bind; the reference code keeps halving log(eta / min_eta) until its 50
  iterations are spent, and in lock-step one such condition holds the whole batch for all 50.
  Measured at the authors' sizes, every solve of a GPS iteration ran 50 passes for that reason.

Why batched and masked: the reference code does this one condition and one time step at a time
in numpy (~0.6 s per condition at T=100, dX=100, dU=10). Here each condition has its own eta,
bracket, retry counter and status, kept in tensors and updated with ``torch.where``; one
"evaluation" (backward pass, forward pass, KL, state update) advances every unfinished condition
by exactly the step the sequential algorithm would take, so each condition follows the same
sequence of etas as the per-condition loop (the numpy reference ``benchmarks/reference.py``,
outside the package, checks this to 1e-8). Finished conditions are masked, not removed, so shapes
stay static: there is no host synchronisation inside the T-step passes (``cholesky_ex`` instead
of ``cholesky``, masks instead of ``if``), and on CUDA the whole evaluation is captured once as a
CUDA graph and replayed. The host reads one flag per evaluation to stop when every condition is
finished.

Very many small problems (the coordinatewise GPS of Li & Malik 2017: dU = 1, dX about 10-80,
B in the thousands to tens of thousands): with one action dimension the passes switch to
:func:`_backward_pass_du1` / :func:`_forward_pass_du1` (homogeneous coordinates, so the affine
terms ride in the two matrix products of a step; Q_uu a scalar), the same equations with other
rounding (``DU1_FAST_PATH``; the tests pin them against the general passes and the numpy
reference). ``max_batch`` solves the batch in chunks with bit-identical results, to bound memory.

Extra cost terms for the GPS variants (all optional, all folded into the same passes):

* **BADMM** (Levine et al. 2016): a KL-to-policy term with per-step weight nu_t
  (``policy=PolicyTerm(linearised, weight)``: the linearised neural-network policy
  ``pi(u|x) = N(K_pi x + k_pi, S_pi)`` and nu) and the Lagrange multipliers of the
  policy-trajectory agreement constraint (``lagrange=LagrangeTerm(k, K)``), which shift the cost
  by ``-u^T lagrange_K x - u^T lagrange_k``. The per-step cost becomes, as in the reference code's
  ``AlgorithmBADMM.compute_costs``::

      (l_t - u^T lagrange_K x - u^T lagrange_k - eta log p_prev - nu_t log pi)
          / (eta + nu_t + max_ent)

  and the value function of step t+1 is rescaled by ``w_{t+1} / w_t`` (``w_t = eta + nu_t +
  max_ent``) because each step's cost is divided by its own weight. (The reference code leaves
  ``max_ent`` out of that ratio, which is inconsistent when ``max_ent != 0``; it is included here.)
* **Mirror-descent GPS** (Montgomery & Levine 2016) needs no extra term: its C-step is this same
  KL-constrained problem with the *linearised global policy* passed as the previous controller
  (``prev``), exactly as the reference code's ``AlgorithmMDGPS``.
* ``max_ent``: the reference code's ``max_ent_traj`` entropy bonus weight (0 by default).

Interface: :func:`kl_constrained_lqr` takes the containers the agent already has -- the dynamics
(:class:`gps.dynamics.LinearGaussianDynamics`), the cost (:class:`gps.cost.QuadraticCost`), the
previous controller (:class:`gps.controller.LinearGaussianController`) -- and the optional
:class:`PolicyTerm` and :class:`LagrangeTerm`; it checks them once (errors name the argument,
e.g. ``cost.Cm``). :func:`prepare_lqr` is that check plus the eta-independent precomputation, and
:func:`lqr_backward` / :func:`lqr_forward` run the two passes on their own.

Failures never raise for the whole batch and never produce NaN: a condition with non-finite inputs,
a non-positive-definite previous (or policy) covariance, or a Q_uu that stays indefinite up to
max_eta is reported in ``status`` / ``reason`` and gets the best controller found so far (the
previous controller if none: that is the eta -> infinity solution of the plain problem).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import astuple, dataclass, replace
from enum import IntEnum

import torch
from torch import Tensor

from gps.controller import LinearGaussianController
from gps.cost import QuadraticCost
from gps.dynamics import LinearGaussianDynamics
from optenv.cuda_graphs import capture, warm_up

__all__ = [
    "LQRBackward",
    "LQRMarginals",
    "LQRProblem",
    "LQRResult",
    "LQRStatus",
    "LagrangeTerm",
    "PolicyTerm",
    "clear_graph_cache",
    "kl_constrained_lqr",
    "lqr_backward",
    "lqr_forward",
    "prepare_lqr",
]


class LQRStatus(IntEnum):
    """Per-condition outcome of :func:`kl_constrained_lqr`."""

    RUNNING = -1
    CONVERGED = 0
    MAX_ITER_KL_BELOW = 1
    MAX_ITER_KL_ABOVE = 2
    PD_FAILURE = 3
    NONFINITE_INPUT = 4
    BAD_PREV_COVAR = 5
    BAD_POLICY_COVAR = 6
    KL_BOUND_INACTIVE = 7


_REASONS = {
    LQRStatus.RUNNING: "eta search did not finish (evaluation cap reached)",
    LQRStatus.CONVERGED: "converged: |KL - kl_step*T| < tol*kl_step*T",
    LQRStatus.KL_BOUND_INACTIVE: (
        "converged: KL below the bound even at eta <= 2*min_eta, so the bound does not bind; the "
        "controller is the (nearly) unconstrained optimum"
    ),
    LQRStatus.MAX_ITER_KL_BELOW: (
        "eta search reached max_iter with KL below the bound (the constraint is not active or the "
        "bracket is exhausted); the controller is feasible but the step is smaller than allowed"
    ),
    LQRStatus.MAX_ITER_KL_ABOVE: (
        "eta search reached max_iter with KL above the bound; the controller violates the "
        "trust region"
    ),
    LQRStatus.PD_FAILURE: (
        "Failed to find PD solution: Q_uu not positive definite even at eta >= max_eta (check "
        "that dynamics and cost are well conditioned); returning the best controller found"
    ),
    LQRStatus.NONFINITE_INPUT: (
        "non-finite (NaN/inf) values in this condition's inputs; returning the previous controller"
    ),
    LQRStatus.BAD_PREV_COVAR: (
        "prev.covar is not positive definite at some step, so KL(new || prev) is undefined; "
        "returning the previous controller"
    ),
    LQRStatus.BAD_POLICY_COVAR: (
        "policy.linearised.covar is not positive definite at some step, so the KL-to-policy "
        "term is undefined; returning the previous controller"
    ),
}


@dataclass
class LQRResult:
    """Result of :func:`kl_constrained_lqr` (tensors in the input dtype, on the input device).

    K [B,T,dU,dX], k [B,T,dU], pol_covar [B,T,dU,dU]: the new controller. inv_pol_covar: its
    precision (= the eta-scaled Q_uu), which the next GPS iteration needs. eta [B]: the dual
    variable that produced the returned controller (max_eta where none was computed). kl [B]:
    total KL(new || prev) over the T steps. converged [B]: status CONVERGED or KL_BOUND_INACTIVE.
    status [B] (int64, :class:`LQRStatus` codes) and reason (one string per condition) say why a
    condition did not converge. iterations [B]: dual iterations per condition. n_evaluations:
    backward passes run for the whole batch (lock-step, PD retries included).
    """

    K: Tensor
    k: Tensor
    pol_covar: Tensor
    inv_pol_covar: Tensor
    eta: Tensor
    kl: Tensor
    converged: Tensor
    status: Tensor
    iterations: Tensor
    reason: list[str]
    n_evaluations: int
    used_cuda_graph: bool


@dataclass
class LQRBackward:
    """Result of one backward pass (:func:`lqr_backward`) at a fixed eta."""

    K: Tensor
    k: Tensor
    pol_covar: Tensor
    inv_pol_covar: Tensor
    failed: Tensor  # [B] bool: Q_uu not positive definite (or non-finite) at some step


@dataclass
class LQRMarginals:
    """State-action marginals of a controller (:func:`lqr_forward`)."""

    mu: Tensor  # [B,T,dX+dU]
    sigma: Tensor  # [B,T,dX+dU,dX+dU]
    kl: Tensor | None  # [B,T] per-step KL(controller || previous), when a previous one was given


# ---------------------------------------------------------------------------- optional terms


@dataclass
class PolicyTerm:
    """BADMM's KL-to-policy cost term ``nu_t * KL(p || pi)`` (Levine et al. 2016).

    ``linearised``: the neural-network policy's local linear-Gaussian fit
    ``pi(u|x) = N(K x + k, covar)``, shaped as the controllers (K [B,T,dU,dX], k [B,T,dU],
    covar [B,T,dU,dU]). ``weight``: nu, a float, a [B] or a [B,T] tensor, >= 0 (the agent's
    per-step weights are [B,T]). One object, because the term needs both.
    """

    linearised: LinearGaussianController
    weight: float | Tensor


@dataclass
class LagrangeTerm:
    """BADMM's Lagrange multipliers of the policy-trajectory agreement constraint: they add
    ``-u^T K x - u^T k`` to the cost. k [B,T,dU]; K [B,T,dU,dX], or None for no state-dependent
    part (the agent's dual steps act on the mean actions only, so it passes none)."""

    k: Tensor
    K: Tensor | None = None


# --------------------------------------------------------------------------------- validation

_FLOATS = (torch.float32, torch.float64)


def _check_type(name: str, value: object, cls: type, *, optional: bool = False) -> None:
    """TypeError naming the argument unless ``value`` is a ``cls`` (or None when optional)."""
    if (value is None and optional) or isinstance(value, cls):
        return
    allowed = f"{cls.__module__}.{cls.__qualname__}" + (" or None" if optional else "")
    raise TypeError(f"{name} must be a {allowed}; got {type(value).__name__}")


def _check(name: str, x: object, shape: tuple[int, ...], dims: str, ref: Tensor | None) -> Tensor:
    """Validate one tensor argument; errors name the argument, what was given, what is allowed."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {dims} = {list(shape)}; got {type(x).__name__}"
        )
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} has dtype {x.dtype}; allowed: torch.float32 or torch.float64")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {dims} = {list(shape)}; got {list(x.shape)}")
    if ref is not None and x.dtype != ref.dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype} but dyn.Fm has {ref.dtype}; all tensors must share one "
            "dtype (torch.float32 or torch.float64)"
        )
    if ref is not None and x.device != ref.device:
        raise ValueError(
            f"{name} is on device {x.device} but dyn.Fm is on {ref.device}; all tensors must "
            "share one device"
        )
    return x


def _dims(Fm: object) -> tuple[int, int, int, int]:
    """B, T, dX, dU from the dynamics matrix ``dyn.Fm`` [B,T,dX,dX+dU]: every other shape
    follows from it."""
    if not isinstance(Fm, Tensor):
        raise TypeError(f"dyn.Fm must be a torch.Tensor [B,T,dX,dX+dU]; got {type(Fm).__name__}")
    if Fm.dim() != 4 or Fm.shape[3] <= Fm.shape[2] or min(Fm.shape) < 1:
        raise ValueError(
            "dyn.Fm must be a 4-D tensor [B,T,dX,dX+dU] with dX >= 1, dU >= 1 (last dim larger "
            f"than the third); got shape {list(Fm.shape)}"
        )
    if Fm.dtype not in _FLOATS:
        raise ValueError(f"dyn.Fm has dtype {Fm.dtype}; allowed: torch.float32 or torch.float64")
    B, T, dX, n = Fm.shape
    return B, T, dX, n - dX


def _per_condition(name: str, value: object, B: int, ref: Tensor, positive: bool) -> Tensor:
    """A float or a [B] tensor (e.g. kl_step, eta0) as a [B] tensor of ref's dtype/device."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(B)
        if tuple(value.shape) != (B,):
            raise ValueError(f"{name} must be a float or a tensor of shape [B] = [{B}]; "
                             f"got shape {list(value.shape)}")
        out = value.to(device=ref.device, dtype=ref.dtype)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = torch.full((B,), float(value), dtype=ref.dtype, device=ref.device)
    else:
        raise TypeError(f"{name} must be a float or a [B] tensor; got {type(value).__name__}")
    if positive and not bool(torch.all(torch.isfinite(out) & (out > 0))):
        raise ValueError(f"{name} must be finite and > 0; got {value!r}")
    return out


def _default_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """fp64 on CPU (cheap there, and the Riccati recursion over eta in [1e-8, 1e16] wants it);
    the input dtype elsewhere (the caller chose it for the accelerator)."""
    return torch.float64 if device.type == "cpu" else dtype


def _controller_specs(name: str, c: LinearGaussianController, B: int, T: int, dX: int,
                      dU: int) -> list[tuple[str, object, tuple[int, ...], str]]:
    """The shape specs of a controller's three tensors, named ``name.K`` etc."""
    return [
        (f"{name}.K", c.K, (B, T, dU, dX), "[B,T,dU,dX]"),
        (f"{name}.k", c.k, (B, T, dU), "[B,T,dU]"),
        (f"{name}.covar", c.covar, (B, T, dU, dU), "[B,T,dU,dU]"),
    ]


def _validate(dyn: LinearGaussianDynamics, cost: QuadraticCost, prev: LinearGaussianController,
              policy: PolicyTerm | None, lagrange: LagrangeTerm | None
              ) -> tuple[int, int, int, int]:
    """Check the containers' types (callers may pass anything), then every tensor's shape, dtype
    and device against dyn.Fm's; returns B, T, dX, dU. Errors name the argument (``cost.Cm``,
    ``prev.covar``...)."""
    _check_type("dyn", dyn, LinearGaussianDynamics)
    _check_type("cost", cost, QuadraticCost)
    _check_type("prev", prev, LinearGaussianController)
    _check_type("policy", policy, PolicyTerm, optional=True)
    _check_type("lagrange", lagrange, LagrangeTerm, optional=True)
    B, T, dX, dU = _dims(dyn.Fm)
    n = dX + dU
    specs = [
        ("dyn.fv", dyn.fv, (B, T, dX), "[B,T,dX]"),
        ("dyn.dyn_covar", dyn.dyn_covar, (B, T, dX, dX), "[B,T,dX,dX]"),
        ("dyn.x0mu", dyn.x0mu, (B, dX), "[B,dX]"),
        ("dyn.x0sigma", dyn.x0sigma, (B, dX, dX), "[B,dX,dX]"),
        ("cost.Cm", cost.Cm, (B, T, n, n), "[B,T,dX+dU,dX+dU]"),
        ("cost.cv", cost.cv, (B, T, n), "[B,T,dX+dU]"),
        *_controller_specs("prev", prev, B, T, dX, dU),
    ]
    if policy is not None:
        _check_type("policy.linearised", policy.linearised, LinearGaussianController)
        specs += _controller_specs("policy.linearised", policy.linearised, B, T, dX, dU)
    if lagrange is not None:
        specs.append(("lagrange.k", lagrange.k, (B, T, dU), "[B,T,dU]"))
        if lagrange.K is not None:
            specs.append(("lagrange.K", lagrange.K, (B, T, dU, dX), "[B,T,dU,dX]"))
    for name, x, shape, dims in specs:
        _check(name, x, shape, dims, dyn.Fm)
    return B, T, dX, dU


def _compute_dtype(dtype: object, max_ent: object, ref: Tensor) -> torch.dtype:
    """Check ``dtype`` and ``max_ent``; the dtype the passes run in."""
    if not isinstance(max_ent, (int, float)) or not math.isfinite(max_ent) or max_ent < 0:
        raise ValueError(f"max_ent must be a finite float >= 0; got {max_ent!r}")
    if dtype is not None and dtype not in _FLOATS:
        raise ValueError(f"dtype must be None, torch.float32 or torch.float64; got {dtype}")
    return dtype or _default_dtype(ref.device, ref.dtype)  # type: ignore[return-value]


def _policy_weight(policy: PolicyTerm | None, B: int, T: int, Fm_in: Tensor, ref: Tensor
                   ) -> Tensor:
    """nu [B,T] in the compute dtype (ref's): the policy term's weight per condition and step
    (zeros without a policy term, so one pass serves every variant). A [B,T] weight must match
    the inputs' dtype and device (Fm_in, the caller's dyn.Fm), as every other tensor."""
    if policy is None:
        return torch.zeros(B, T, dtype=ref.dtype, device=ref.device)
    weight = policy.weight
    if isinstance(weight, Tensor) and weight.dim() == 2:
        nu = _check("policy.weight", weight, (B, T), "[B,T]", Fm_in).to(ref.dtype)
    else:
        nu = _per_condition("policy.weight", weight, B, ref, positive=False)
        nu = nu[:, None].expand(B, T)
    if not bool(torch.all(torch.isfinite(nu) & (nu >= 0))):
        raise ValueError("policy.weight must be finite and >= 0")
    return nu


# ------------------------------------------------------------------------------------ problem


@dataclass
class LQRProblem:
    """A validated problem in the compute dtype, its eta-independent parts precomputed.

    Built once per solve by :func:`prepare_lqr` (validation and its host synchronisation stay
    outside the passes); every backward and forward pass reads it. The fields are the solver's
    internal form, not a user format: Cm/cv already contain the Lagrange shift and
    nu_t * (-log pi) (BADMM); G/PG/g encode -log p_prev(u|x) = 1/2 z^T G^T P G z + z^T g + const
    with G = [-K_prev, I], z = [x; u]. ``bad`` [B] holds the status of conditions that cannot be
    solved (RUNNING = fine); ``out_dtype`` is the inputs' dtype, in which results come back.
    """

    Fm: Tensor
    fv: Tensor
    dyn_covar: Tensor
    x0mu: Tensor
    x0sigma: Tensor
    Cm: Tensor
    cv: Tensor
    K_prev: Tensor
    k_prev: Tensor
    pol_covar_prev: Tensor
    prec_prev: Tensor
    logdet_prev: Tensor  # [B,T]
    G: Tensor  # [B,T,dU,n]
    PG: Tensor  # [B,T,dU,n]
    g: Tensor  # [B,T,n]
    nu: Tensor  # [B,T] (zeros without a policy term)
    max_ent: float
    bad: Tensor  # [B] int64 status for conditions that cannot be solved (RUNNING = fine)
    out_dtype: torch.dtype

    def tensors(self) -> dict[str, Tensor]:
        """The tensor fields by name (the CUDA-graph cache copies them into static buffers)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}

    def conditions(self, lo: int, hi: int) -> LQRProblem:
        """Conditions lo..hi-1 as a problem of their own (views: every field is [B, ...])."""
        return replace(self, **{k: v[lo:hi] for k, v in self.tensors().items()})


def _chol_inverse(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse, log-determinant and a not-PD flag of SPD matrices [..., d, d], without a sync."""
    L, info = torch.linalg.cholesky_ex(A)
    bad = (info != 0) | ~torch.isfinite(L).all(-1).all(-1)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    L = torch.where(bad[..., None, None], eye, L)
    inv = torch.cholesky_solve(eye.expand_as(A).contiguous(), L)
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (inv + inv.mT), logdet, bad


def _gaussian_quadratic(K: Tensor, k: Tensor, prec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """G = [-K, I], P G and g = -G^T P k: -log N(u; Kx+k, P^-1) = 1/2 z^T G^T P G z + z^T g + c."""
    dU = K.shape[-2]
    eye = torch.eye(dU, dtype=K.dtype, device=K.device).expand(*K.shape[:-2], dU, dU)
    G = torch.cat([-K, eye], dim=-1)
    PG = prec @ G
    g = -(G.mT @ (prec @ k.unsqueeze(-1))).squeeze(-1)
    return G, PG, g


def _finite_rows(*xs: Tensor) -> Tensor:
    """[B] bool: every entry of every tensor finite for this condition."""
    ok = torch.ones(xs[0].shape[0], dtype=torch.bool, device=xs[0].device)
    for x in xs:
        ok &= torch.isfinite(x).reshape(x.shape[0], -1).all(1)
    return ok


def _sanitise(x: Tensor, ok: Tensor, spd: bool) -> Tensor:
    """Replace the rows of bad conditions by zeros (or identities), so nothing NaN flows."""
    fill = torch.zeros_like(x)
    if spd:
        fill = fill + torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), x, fill)


#: The inputs that are covariances (or costs' Hessians): a bad condition's rows become identities.
_SPD_INPUTS = frozenset({"dyn_covar", "x0sigma", "Cm", "pol_covar_prev", "policy_covar"})


def _inputs_in(cdt: torch.dtype, dyn: LinearGaussianDynamics, cost: QuadraticCost,
               prev: LinearGaussianController, policy: PolicyTerm | None,
               lagrange: LagrangeTerm | None) -> dict[str, Tensor]:
    """Every input tensor in the compute dtype, by its internal name (policy_*, lagrange_* only
    when given). ``.to`` returns the caller's own tensor when the dtype already fits: later steps
    must not write into these in place."""
    x = {"Fm": dyn.Fm, "fv": dyn.fv, "dyn_covar": dyn.dyn_covar, "x0mu": dyn.x0mu,
         "x0sigma": dyn.x0sigma, "Cm": cost.Cm, "cv": cost.cv, "K_prev": prev.K,
         "k_prev": prev.k, "pol_covar_prev": prev.covar}
    if policy is not None:
        lin = policy.linearised
        x.update(policy_K=lin.K, policy_k=lin.k, policy_covar=lin.covar)
    if lagrange is not None:
        if lagrange.K is not None:
            x["lagrange_K"] = lagrange.K
        x["lagrange_k"] = lagrange.k
    return {name: v.to(cdt) for name, v in x.items()}


def _sanitise_nonfinite(x: dict[str, Tensor], nu: Tensor) -> tuple[dict[str, Tensor], Tensor,
                                                                    Tensor]:
    """Conditions with a NaN/inf anywhere get status NONFINITE_INPUT and finite stand-ins (zeros,
    identities for covariances), so the batch goes on without them; returns the inputs, nu and
    the [B] status (RUNNING = fine)."""
    ok = _finite_rows(*x.values(), nu)
    B = nu.shape[0]
    bad = torch.full((B,), int(LQRStatus.RUNNING), dtype=torch.int64, device=nu.device)
    if bool(ok.all()):
        return x, nu, bad
    x = {name: _sanitise(v, ok, name in _SPD_INPUTS) for name, v in x.items()}
    return x, _sanitise(nu, ok, False), torch.where(ok, bad, int(LQRStatus.NONFINITE_INPUT))


def _badmm_cost(x: dict[str, Tensor], nu: Tensor, dX: int, bad: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Fold BADMM's terms into the cost: the Lagrange shift -u^T lagrange_K x - u^T lagrange_k,
    then nu_t * (-log pi(u|x)) (a policy covariance that is not PD marks its condition
    BAD_POLICY_COVAR). Returns Cm, cv and the status; the plain cost when neither term is
    given."""
    Cm, cv = x["Cm"], x["cv"]
    if "lagrange_k" in x:
        cv = cv.clone()
        cv[..., dX:] -= x["lagrange_k"]
    if "lagrange_K" in x:
        lam_K = x["lagrange_K"]
        Cm = Cm.clone()
        Cm[..., dX:, :dX] -= lam_K
        Cm[..., :dX, dX:] -= lam_K.mT
    if "policy_K" in x:
        prec_pol, _, bad_pol = _chol_inverse(x["policy_covar"])
        bad = torch.where((bad == LQRStatus.RUNNING) & bad_pol.any(1),
                          int(LQRStatus.BAD_POLICY_COVAR), bad)
        Gq, PGq, gq = _gaussian_quadratic(x["policy_K"], x["policy_k"], prec_pol)
        Cm = Cm + nu[..., None, None] * (Gq.mT @ PGq)
        cv = cv + nu[..., None] * gq
    return Cm, cv, bad


def prepare_lqr(
    dyn: LinearGaussianDynamics,
    cost: QuadraticCost,
    prev: LinearGaussianController,
    *,
    policy: PolicyTerm | None = None,
    lagrange: LagrangeTerm | None = None,
    max_ent: float = 0.0,
    dtype: torch.dtype | None = None,
) -> LQRProblem:
    """Validate a problem and precompute what does not depend on eta, once.

    Arguments as :func:`kl_constrained_lqr`, which calls it. Call it yourself to run
    :func:`lqr_backward` many times on one problem (the benchmark times the backward pass alone
    this way). Steps: check every argument (errors name it); convert to the compute dtype; give
    conditions with non-finite inputs finite stand-ins and a status; invert the previous
    controller's covariance (status BAD_PREV_COVAR where it is not PD) and build its quadratic
    form; fold in BADMM's terms. One host synchronisation, outside the passes.
    """
    B, T, dX, _ = _validate(dyn, cost, prev, policy, lagrange)
    cdt = _compute_dtype(dtype, max_ent, dyn.Fm)
    x = _inputs_in(cdt, dyn, cost, prev, policy, lagrange)
    nu = _policy_weight(policy, B, T, dyn.Fm, x["Fm"])
    x, nu, bad = _sanitise_nonfinite(x, nu)
    prec_prev, logdet_prev, bad_prev = _chol_inverse(x["pol_covar_prev"])
    bad = torch.where((bad == LQRStatus.RUNNING) & bad_prev.any(1),
                      int(LQRStatus.BAD_PREV_COVAR), bad)
    G, PG, g = _gaussian_quadratic(x["K_prev"], x["k_prev"], prec_prev)
    Cm, cv, bad = _badmm_cost(x, nu, dX, bad)
    return LQRProblem(
        Fm=x["Fm"], fv=x["fv"], dyn_covar=x["dyn_covar"], x0mu=x["x0mu"], x0sigma=x["x0sigma"],
        Cm=Cm, cv=cv, K_prev=x["K_prev"], k_prev=x["k_prev"], pol_covar_prev=x["pol_covar_prev"],
        prec_prev=prec_prev, logdet_prev=logdet_prev, G=G, PG=PG, g=g, nu=nu,
        max_ent=float(max_ent), bad=bad, out_dtype=dyn.Fm.dtype,
    )


# ------------------------------------------------------------------------- the shared passes


def _backward_pass(p: LQRProblem, eta: Tensor, K: Tensor, k: Tensor, S: Tensor, prec: Tensor,
                   logdet: Tensor) -> Tensor:
    """Backward Riccati pass at per-condition eta [B], writing K, k, S (=Q_uu^-1), prec (=Q_uu)
    and logdet S into the given buffers. Returns a [B] bool "failed" flag (Q_uu not PD or
    non-finite at some step). No host synchronisation: cholesky_ex plus masks.

    Per step (z = [x; u], w_t = eta + nu_t + max_ent)::

        Q_t = (Cm_t + eta G_t^T P_t G_t) / w_t + (w_{t+1}/w_t) F_t^T V_{t+1} F_t
        q_t = (cv_t + eta g_t) / w_t + (w_{t+1}/w_t) F_t^T (v_{t+1} + V_{t+1} f_t)
        K_t = -Q_uu^-1 Q_ux,  k_t = -Q_uu^-1 q_u,  S_t = Q_uu^-1
        V_t = Q_xx + Q_xu K_t,  v_t = q_x + Q_xu k_t
    """
    B, T, dX, n = p.Fm.shape
    dU = n - dX
    if dU == 1 and DU1_FAST_PATH:
        return _backward_pass_du1(p, eta, K, k, S, prec, logdet)
    eye = torch.eye(dU, dtype=eta.dtype, device=eta.device).expand(B, dU, dU)
    failed = torch.zeros(B, dtype=torch.bool, device=eta.device)
    after: tuple[Tensor, Tensor, Tensor] | None = None  # V, v and w of step t+1
    for t in range(T - 1, -1, -1):
        w = eta + p.nu[:, t] + p.max_ent
        Q, q = _q_function(p, t, eta, w, after)
        L, bad, S_t, K_t, k_t = _controller_from_q(Q, q, dX, eye)
        V, v = _value_function(Q, q, K_t, k_t, bad, dX)
        K[:, t] = K_t
        k[:, t] = k_t
        S[:, t] = 0.5 * (S_t + S_t.mT)
        prec[:, t] = Q[:, dX:, dX:]
        logdet[:, t] = -2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        failed = failed | bad
        after = (V, v, w)
    return failed


def _q_function(p: LQRProblem, t: int, eta: Tensor, w: Tensor,
                after: tuple[Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """Q_t [B,n,n] (symmetrised) and q_t [B,n] of step t: the eta-scaled KL-augmented cost over
    w_t, plus step t+1's value (V, v, w_{t+1} in ``after``; None at the last step) pushed
    through the dynamics and rescaled by w_{t+1}/w_t. ``after``'s V is overwritten."""
    # in place where a fresh tensor is not needed: these [B,n,n] element-wise passes are
    # memory-bound, and fresh outputs cost the CPU more (B=90, dX=99, n=111, 2 threads,
    # 3 alternating runs: 1.34-1.41 s per evaluation against 1.44-1.63 s); the values are
    # the same to the bit
    Q = torch.baddbmm(p.Cm[:, t], p.G[:, t].mT, p.PG[:, t] * eta[:, None, None])
    Q.div_(w[:, None, None])
    q = (p.cv[:, t] + eta[:, None] * p.g[:, t]) / w[:, None]
    if after is not None:
        V, v, w_next = after
        F = p.Fm[:, t]
        Vs = V.mul_((w_next / w)[:, None, None])  # V is not used again
        Q.baddbmm_(F.mT, Vs @ F)
        vs = v * (w_next / w)[:, None] + (Vs @ p.fv[:, t, :, None]).squeeze(-1)
        q = q + (F.mT @ vs[..., None]).squeeze(-1)
    return Q.add(Q.mT).mul_(0.5), q


def _controller_from_q(Q: Tensor, q: Tensor, dX: int, eye: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The step's controller from one Cholesky factorisation of Q_uu and two triangular solves
    with every right-hand side at once: S_t = Q_uu^-1 (not yet symmetrised),
    K_t = -Q_uu^-1 Q_ux, k_t = -Q_uu^-1 q_u. A Q_uu that is not PD (or not finite) flags its
    condition in ``bad`` and is factored as the identity, so nothing syncs and nothing is NaN.
    Returns L, bad, S_t, K_t, k_t."""
    dU = eye.shape[-1]
    L, info = torch.linalg.cholesky_ex(Q[:, dX:, dX:])
    bad = (info != 0) | ~torch.isfinite(L).all(-1).all(-1)
    L = torch.where(bad[:, None, None], eye, L)
    rhs = torch.cat([eye, Q[:, dX:, :dX], q[:, dX:, None]], dim=-1)
    Z = torch.linalg.solve_triangular(L, rhs, upper=False)
    Z = torch.linalg.solve_triangular(L.mT, Z, upper=True)
    return L, bad, Z[..., :dU], -Z[..., dU:dU + dX], -Z[..., -1]


def _value_function(Q: Tensor, q: Tensor, K_t: Tensor, k_t: Tensor, bad: Tensor, dX: int
                    ) -> tuple[Tensor, Tensor]:
    """V_t = Q_xx + Q_xu K_t (symmetrised) and v_t = q_x + Q_xu k_t, the value the step before
    plans with."""
    Qxu = Q[:, :dX, dX:]
    V = Q[:, :dX, :dX] + Qxu @ K_t
    V = V.add(V.mT).mul_(0.5)
    v = q[:, :dX] + (Qxu @ k_t[..., None]).squeeze(-1)
    # a failed condition's remaining steps are discarded; zero its value function so that
    # nothing overflows on the way (conditions never mix, this only keeps numbers tidy)
    V.masked_fill_(bad[:, None, None], 0.0)
    v = torch.where(bad[:, None], 0.0, v)
    return V, v


def _forward_pass(p: LQRProblem, K: Tensor, k: Tensor, S: Tensor, logdet: Tensor,
                  mu_out: Tensor | None = None, sigma_out: Tensor | None = None) -> Tensor:
    """Forward pass of the state marginals under the controller; returns the per-step
    KL(new || prev) [B,T] under those marginals (optionally storing the state-action marginals).

    KL in its conditional-Gaussian form (no cancellation between large joint quadratic forms)::

        KL_t = 1/2 [tr(P_prev S_t) - dU + logdet S_prev - logdet S_t
                    + d^T P_prev d + tr(dK^T P_prev dK Sigma_x)],
        dK = K_t - K_prev,  d = dK mu_x + k_t - k_prev

    clamped at 0 per step like the reference code. State covariance via the closed loop
    A = F_x + F_u K: Sigma' = A Sigma A^T + F_u S F_u^T + W.
    """
    T, dX, n = p.Fm.shape[1:]
    dU = n - dX
    if dU == 1 and DU1_FAST_PATH and mu_out is None and sigma_out is None:
        return _forward_pass_du1(p, K, k, S, logdet)
    mx, Sx = p.x0mu, p.x0sigma
    kls = []
    for t in range(T):
        Kt, kt, St = K[:, t], k[:, t], S[:, t]
        mu_u = (Kt @ mx[..., None]).squeeze(-1) + kt
        dK = Kt - p.K_prev[:, t]
        d = mu_u - (p.K_prev[:, t] @ mx[..., None]).squeeze(-1) - p.k_prev[:, t]
        Pp = p.prec_prev[:, t]
        dKS = dK @ Sx
        quad = (d * (Pp @ d[..., None]).squeeze(-1)).sum(-1) + ((Pp @ dK) * dKS).sum((-2, -1))
        kl_t = 0.5 * ((Pp * St).sum((-2, -1)) - dU + p.logdet_prev[:, t] - logdet[:, t] + quad)
        kls.append(torch.clamp(kl_t, min=0.0))
        if mu_out is not None and sigma_out is not None:
            mu_out[:, t, :dX] = mx
            mu_out[:, t, dX:] = mu_u
            sigma_out[:, t, :dX, :dX] = Sx
            KSx = Kt @ Sx
            sigma_out[:, t, dX:, :dX] = KSx
            sigma_out[:, t, :dX, dX:] = KSx.mT
            sigma_out[:, t, dX:, dX:] = Kt @ Sx @ Kt.mT + St
        if t < T - 1:
            F = p.Fm[:, t]
            Fu = F[:, :, dX:]
            A = F[:, :, :dX] + Fu @ Kt
            mx = (F @ torch.cat([mx, mu_u], -1)[..., None]).squeeze(-1) + p.fv[:, t]
            Sx = (A @ Sx @ A.mT).add_(Fu @ St @ Fu.mT).add_(p.dyn_covar[:, t])
            Sx = Sx.add(Sx.mT).mul_(0.5)
    return torch.stack(kls, dim=1)


# ------------------------------------------------------------- the dU = 1 passes (one action)

DU1_FAST_PATH = True
"""Use :func:`_backward_pass_du1` / :func:`_forward_pass_du1` when dU = 1 (tests switch it off
to compare them with the general passes)."""


def _backward_pass_du1(p: LQRProblem, eta: Tensor, K: Tensor, k: Tensor, S: Tensor,
                       prec: Tensor, logdet: Tensor) -> Tensor:
    """:func:`_backward_pass` for one action dimension (dU = 1), in homogeneous coordinates.

    Why: the coordinatewise GPS of Li & Malik 2017 solves very many small problems with dU = 1
    (B in the tens of thousands, dX about 10 to 80). There the general pass spends its time in
    many small batched products -- seven matrix-vector products per step, which torch runs as one
    BLAS call per condition, and a rank-1 "matrix product" with inner dimension 1 -- and in
    element-wise passes over [B,n,n]. Here:

    * the affine parts ride along in the two matrix products per step: with z~ = [1; x; u] and
      the value function of [1; x] as one matrix V~ = [[c, v^T], [v, V]], the dynamics
      F~ = [[1, 0], [fv, Fm]] give Q~ = C~ / w_t + (w_{t+1}/w_t) F~^T V~ F~ with
      C~ = [[0, cv'^T], [cv', Cm']] (cv', Cm': cost plus eta times the KL-to-prev term), so
      q_t is Q~'s first column and no matrix-vector product is left;
    * Q_uu is a scalar: its Cholesky factor is sqrt(Q_uu), the two triangular solves are two
      divisions by it (as the general pass: (x / L) / L), the KL term's outer product and
      Q_xu K_t are element-wise outer products;
    * Q is not symmetrised as a whole: only its u-row (averaged with its u-column) is used, and
      V~ = sym(Q~_xx + Q~_xu K~) is symmetrised as before.

    The same equations as the general pass; the rounding differs (relative differences of order
    1e-13 in float64, pinned by the tests against the general pass and the numpy reference).
    """
    B, T, dX, n = p.Fm.shape
    m = n + 1  # [1; x; u]
    dev, dt = eta.device, eta.dtype
    Qb = torch.empty(B, m, m, dtype=dt, device=dev)
    Fb = torch.zeros(B, dX + 1, m, dtype=dt, device=dev)
    Fb[:, 0, 0] = 1.0
    VF = torch.empty(B, dX + 1, m, dtype=dt, device=dev)
    Vb = torch.empty(B, dX + 1, dX + 1, dtype=dt, device=dev)
    failed = torch.zeros(B, dtype=torch.bool, device=dev)
    w_next: Tensor | None = None
    for t in range(T - 1, -1, -1):
        w = eta + p.nu[:, t] + p.max_ent
        cost = Qb[:, 1:, 1:]
        torch.addcmul(p.Cm[:, t], p.G[:, t].mT, p.PG[:, t] * eta[:, None, None], out=cost)
        cost.div_(w[:, None, None])
        q = (p.cv[:, t] + eta[:, None] * p.g[:, t]) / w[:, None]
        Qb[:, 0, 1:] = q
        Qb[:, 1:, 0] = q
        Qb[:, 0, 0] = 0.0
        if w_next is not None:
            Vb.mul_((0.5 * w_next / w)[:, None, None])  # 0.5: the symmetrisation of V~
            Fb[:, 1:, 0] = p.fv[:, t]
            Fb[:, 1:, 1:] = p.Fm[:, t]
            torch.bmm(Vb, Fb, out=VF)
            Qb.baddbmm_(Fb.mT, VF)
        r = 0.5 * (Qb[:, n] + Qb[:, :, n])  # the u-row of sym(Q~): [q_u, Q_ux, Q_uu]
        quu = r[:, n]
        bad = ~((quu > 0) & (quu < math.inf))  # as cholesky_ex: not PD, NaN or inf
        L = torch.where(bad, 1.0, torch.sqrt(quu))[:, None]
        gains = -(r[:, :n] / L) / L  # [k_t, K_t]
        K[:, t, 0] = gains[:, 1:]
        k[:, t, 0] = gains[:, 0]
        S[:, t, 0, 0] = (1.0 / L[:, 0]) / L[:, 0]
        prec[:, t, 0, 0] = quu
        logdet[:, t] = -2.0 * torch.log(L[:, 0])
        failed = failed | bad
        if t > 0:  # V~ of this step (2 x sym: the 0.5 is applied at the next step)
            Vn = torch.addcmul(Qb[:, :n, :n], r[:, :n, None], gains[:, None, :])
            torch.add(Vn, Vn.mT, out=Vb)
            Vb.masked_fill_(bad[:, None, None], 0.0)
        w_next = w
    return failed


def _forward_pass_du1(p: LQRProblem, K: Tensor, k: Tensor, S: Tensor, logdet: Tensor
                      ) -> Tensor:
    """:func:`_forward_pass` (the per-step KL only) for dU = 1, with the products merged.

    The closed-loop matrix A = F_x + F_u K_t and the KL's dK = K_t - K_prev are stacked as one
    [dX+1, dX] matrix and multiplied with [Sigma_x | mu_x] in one product, which gives A Sigma_x,
    A mu_x, dK Sigma_x and dK mu_x at once; P_prev, S_t and the other dU x dU quantities are
    scalars. The same equations as the general pass (rounding differs, see
    :func:`_backward_pass_du1`).
    """
    B, T, dX = p.Fm.shape[:3]
    dev, dt = K.device, K.dtype
    SM = torch.empty(B, dX, dX + 1, dtype=dt, device=dev)  # [Sigma_x | mu_x]
    SM[:, :, :dX] = p.x0sigma
    SM[:, :, dX] = p.x0mu
    Ab = torch.empty(B, dX + 1, dX, dtype=dt, device=dev)  # [A; dK]
    Y = torch.empty(B, dX + 1, dX + 1, dtype=dt, device=dev)
    kls = []
    for t in range(T):
        Kt, kt, St = K[:, t, 0], k[:, t, 0], S[:, t, 0, 0]
        Kp, Pp = p.K_prev[:, t, 0], p.prec_prev[:, t, 0, 0]
        Fu = p.Fm[:, t, :, dX]
        torch.addcmul(p.Fm[:, t, :, :dX], Fu[:, :, None], Kt[:, None, :], out=Ab[:, :dX])
        dK = Kt - Kp
        Ab[:, dX] = dK
        torch.bmm(Ab, SM, out=Y)
        d = Y[:, dX, dX] + kt - p.k_prev[:, t, 0]  # dK mu_x + k_t - k_prev
        quad = Pp * (d * d + (Y[:, dX, :dX] * dK).sum(-1))
        kl_t = 0.5 * (Pp * St - 1.0 + p.logdet_prev[:, t] - logdet[:, t] + quad)
        kls.append(torch.clamp(kl_t, min=0.0))
        if t < T - 1:
            mx = Y[:, :dX, dX] + Fu * kt[:, None] + p.fv[:, t]
            Sx = torch.baddbmm(p.dyn_covar[:, t], Y[:, :dX, :dX], Ab[:, :dX].mT)
            Sx.addcmul_(Fu[:, :, None], (Fu * St[:, None])[:, None, :])
            Sxs = SM[:, :, :dX]
            torch.add(Sx, Sx.mT, out=Sxs)
            Sxs.mul_(0.5)
            SM[:, :, dX] = mx
    return torch.stack(kls, dim=1)


# ---------------------------------------------------------------------------- the dual search

INACTIVE_FACTOR = 2.0
"""A KL still below the bound at eta <= INACTIVE_FACTOR * min_eta ends a condition's search."""


@dataclass(frozen=True)
class _SearchOptions:
    """The eta search's constants (defaults: the reference code's). Part of the CUDA-graph cache
    key: a captured step has them baked in."""

    min_eta: float = 1e-8
    max_eta: float = 1e16
    max_iter: int = 50
    tol: float = 0.1
    del0: float = 1e-4
    stop_when_inactive: bool = True

    @classmethod
    def checked(cls, min_eta: float, max_eta: float, max_iter: int, tol: float, del0: float,
                stop_when_inactive: bool) -> _SearchOptions:
        """The options as given by a caller, or a ValueError naming the first bad one."""
        floats = {"min_eta": min_eta, "max_eta": max_eta, "tol": tol, "del0": del0}
        for name, val in floats.items():
            if not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0:
                raise ValueError(f"{name} must be a finite float > 0; got {val!r}")
        if min_eta >= max_eta:
            raise ValueError(f"min_eta must be < max_eta; got min_eta={min_eta}, "
                             f"max_eta={max_eta}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1; got {max_iter!r}")
        return cls(float(min_eta), float(max_eta), max_iter, float(tol), float(del0),
                   bool(stop_when_inactive))


class _DualSearch:
    """Per-condition eta search state, updated in place (so a CUDA graph can capture a step).

    ``target`` [B] is the KL bound kl_step * T; it lives here, not in the problem, so one
    prepared problem serves any bound (and a cached graph gets a new one with :meth:`load`).
    """

    def __init__(self, p: LQRProblem, eta0: Tensor, target: Tensor,
                 opts: _SearchOptions) -> None:
        self.p = p
        self.opts = opts
        self.min_eta, self.max_eta, self.max_iter = opts.min_eta, opts.max_eta, opts.max_iter
        self.tol, self.del0 = opts.tol, opts.del0
        self.inactive_eta = (INACTIVE_FACTOR * opts.min_eta if opts.stop_when_inactive
                             else -math.inf)
        B, T, dX, n = p.Fm.shape
        dU = n - dX
        z = p.K_prev.new_zeros
        self.cK, self.ck = z(B, T, dU, dX), z(B, T, dU)
        self.cS, self.cprec, self.clogdet = z(B, T, dU, dU), z(B, T, dU, dU), z(B, T)
        self.eta, self.base, self.delta = z(B), z(B), z(B)
        self.lo, self.hi = z(B), z(B)
        self.iters = torch.zeros(B, dtype=torch.int64, device=eta0.device)
        self.status = torch.zeros_like(self.iters)
        self.done = torch.zeros(B, dtype=torch.bool, device=eta0.device)
        self.K, self.k, self.S, self.prec = z(B, T, dU, dX), z(B, T, dU), z(B, T, dU, dU), z(
            B, T, dU, dU)
        self.eta_out, self.kl_out = z(B), z(B)
        self.target = z(B)
        self.reset(eta0, target)

    def load(self, p: LQRProblem, eta0: Tensor, target: Tensor) -> None:
        """Copy a new problem of the same shapes into this search's (static) buffers."""
        mine = self.p.tensors()
        for name, x in p.tensors().items():
            mine[name].copy_(x)
        self.p.max_ent = p.max_ent
        self.reset(eta0, target)

    def reset(self, eta0: Tensor, target: Tensor) -> None:
        """Start the search from eta0 [B] towards the KL bound target [B], in place."""
        p = self.p
        self.target.copy_(target)
        self.eta.copy_(eta0)
        self.base.copy_(eta0)
        self.delta.fill_(self.del0)
        self.lo.fill_(self.min_eta)
        self.hi.fill_(self.max_eta)
        self.iters.zero_()
        self.status.copy_(p.bad)
        self.done.copy_(p.bad != LQRStatus.RUNNING)
        self.K.copy_(p.K_prev)
        self.k.copy_(p.k_prev)
        self.S.copy_(p.pol_covar_prev)
        self.prec.copy_(p.prec_prev)
        self.eta_out.fill_(self.max_eta)
        self.kl_out.zero_()

    def step(self) -> None:
        """One evaluation for every unfinished condition, then its search-state update.

        Mirrors one pass of the per-condition algorithm: on a failed backward pass retry at
        base + delta (delta doubling); otherwise commit the controller, count the iteration,
        test convergence and move eta within the bracket. Everything is updated in place and
        nothing reads a value on the host, so a CUDA graph can capture this method.
        """
        failed, kl = self._evaluate()
        active = ~self.done
        retry, ok = active & failed, active & ~failed
        eta = self.eta.clone()
        self._commit(ok, eta, kl)
        iters = self.iters + ok.long()
        conv, inactive, last, too_big = self._verdicts(ok, eta, kl, iters)
        dead = self._next_eta(eta, retry, ok & ~conv & ~inactive & ~last, too_big)
        self.iters.copy_(iters)
        self._finish(conv, inactive, last & too_big, last & ~too_big, dead)

    def _evaluate(self) -> tuple[Tensor, Tensor]:
        """Backward and forward pass at the current etas into the candidate buffers. Returns
        failed [B] (Q_uu not PD, or a non-finite KL or controller) and the total KL [B]."""
        p = self.p
        failed = _backward_pass(p, self.eta, self.cK, self.ck, self.cS, self.cprec, self.clogdet)
        kl = _forward_pass(p, self.cK, self.ck, self.cS, self.clogdet).sum(1)
        return failed | ~torch.isfinite(kl) | ~_finite_rows(self.cK, self.ck), kl

    def _commit(self, ok: Tensor, eta: Tensor, kl: Tensor) -> None:
        """Keep the candidate controller, its eta and its KL where the evaluation succeeded."""
        m4 = ok[:, None, None, None]
        self.K.copy_(torch.where(m4, self.cK, self.K))
        self.k.copy_(torch.where(ok[:, None, None], self.ck, self.k))
        self.S.copy_(torch.where(m4, self.cS, self.S))
        self.prec.copy_(torch.where(m4, self.cprec, self.prec))
        self.eta_out.copy_(torch.where(ok, eta, self.eta_out))
        self.kl_out.copy_(torch.where(ok, kl, self.kl_out))

    def _verdicts(self, ok: Tensor, eta: Tensor, kl: Tensor, iters: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Which successful evaluations end their search (as the reference code): converged,
        bound inactive (KL below it at eta <= inactive_eta), out of iterations; and too_big:
        KL below the bound, so eta should come down."""
        con = kl - self.target
        conv = ok & (con.abs() < self.tol * self.target)
        too_big = con < 0
        inactive = ok & ~conv & too_big & (eta <= self.inactive_eta)
        last = ok & ~conv & ~inactive & (iters >= self.max_iter)
        return conv, inactive, last, too_big

    def _next_eta(self, eta: Tensor, retry: Tensor, move: Tensor, too_big: Tensor) -> Tensor:
        """Set the next eta. A failed pass retries at base + delta, delta doubling (``dead``, the
        returned [B] flag, once that reaches max_eta); a search that goes on narrows its bracket
        and moves to the geometric mean, at most x10 or /10 per move (as the reference code)."""
        bumped = self.base + self.delta
        dead = retry & (bumped >= self.max_eta)
        new_eta = torch.where(retry, bumped, eta)
        new_delta = torch.where(retry, 2.0 * self.delta, self.delta)
        hi = torch.where(move & too_big, eta, self.hi)
        lo = torch.where(move & ~too_big, eta, self.lo)
        geo = torch.sqrt(lo) * torch.sqrt(hi)
        moved = torch.where(too_big, torch.maximum(geo, 0.1 * hi), torch.minimum(geo, 10.0 * lo))
        new_eta = torch.where(move, moved, new_eta)
        self.base.copy_(torch.where(move, moved, self.base))
        self.delta.copy_(torch.where(move, torch.full_like(new_delta, self.del0), new_delta))
        self.eta.copy_(new_eta)
        self.hi.copy_(hi)
        self.lo.copy_(lo)
        return dead

    def _finish(self, conv: Tensor, inactive: Tensor, last_below: Tensor, last_above: Tensor,
                dead: Tensor) -> None:
        """Record the status of the conditions whose search ended in this step."""
        status = self.status
        status = torch.where(conv, int(LQRStatus.CONVERGED), status)
        status = torch.where(inactive, int(LQRStatus.KL_BOUND_INACTIVE), status)
        status = torch.where(last_below, int(LQRStatus.MAX_ITER_KL_BELOW), status)
        status = torch.where(last_above, int(LQRStatus.MAX_ITER_KL_ABOVE), status)
        status = torch.where(dead, int(LQRStatus.PD_FAILURE), status)
        self.status.copy_(status)
        self.done.copy_(self.done | conv | inactive | last_below | last_above | dead)

    def max_evaluations(self) -> int:
        """Upper bound on evaluations: each iteration retries at most until delta >= max_eta."""
        retries = math.ceil(math.log2(max(self.max_eta / self.del0, 2.0))) + 2
        return self.max_iter * retries


class _GraphedSearch:
    """A :class:`_DualSearch` whose :meth:`step` is captured once as a CUDA graph and replayed."""

    def __init__(self, search: _DualSearch) -> None:
        self.search = search
        self.graph: torch.cuda.CUDAGraph | None = None

    def first_step_and_capture(self) -> bool:
        """Run a real first step eagerly on a side stream (warm-up), then capture. False if the
        capture fails (then the caller continues eagerly)."""
        device = self.search.p.Fm.device
        warm_up(self.search.step, device)
        self.graph = capture(self.search.step, "the LQR step", "running eagerly", device)
        return self.graph is not None


_GRAPH_CACHE: OrderedDict[tuple, _GraphedSearch] = OrderedDict()
_GRAPH_CACHE_SIZE = 2


def clear_graph_cache() -> None:
    """Free the cached CUDA graphs and their static buffers (each holds a copy of a problem)."""
    _GRAPH_CACHE.clear()


def _run(p: LQRProblem, eta0: Tensor, target: Tensor, opts: _SearchOptions,
         use_cuda_graph: bool) -> tuple[_DualSearch, int, bool]:
    """Drive the search: eager steps, or graph replays from a cache keyed on shapes and options.

    The host reads ``done.all()`` once per evaluation (not inside the T-step passes).
    """
    if not use_cuda_graph:
        return _drive(_DualSearch(p, eta0, target, opts), 0, None)
    # DU1_FAST_PATH is part of the key: a captured graph has the passes it ran baked in
    key = (p.Fm.device, p.Fm.dtype, tuple(p.Fm.shape), *astuple(opts), p.max_ent,
           DU1_FAST_PATH)
    cached = _GRAPH_CACHE.get(key)
    if cached is not None:
        _GRAPH_CACHE.move_to_end(key)
        cached.search.load(p, eta0, target)
        return _drive(cached.search, 0, cached.graph)
    # the graph reads fixed addresses: give it its own copy of the problem, refilled by load()
    static = replace(p, **{name: x.clone() for name, x in p.tensors().items()})
    graphed = _GraphedSearch(_DualSearch(static, eta0, target, opts))
    if graphed.first_step_and_capture():
        _GRAPH_CACHE[key] = graphed
        while len(_GRAPH_CACHE) > _GRAPH_CACHE_SIZE:
            _GRAPH_CACHE.popitem(last=False)
    return _drive(graphed.search, 1, graphed.graph)


def _drive(search: _DualSearch, n_eval: int,
           graph: torch.cuda.CUDAGraph | None) -> tuple[_DualSearch, int, bool]:
    cap = search.max_evaluations()
    while n_eval < cap and not bool(search.done.all()):
        if graph is not None:
            graph.replay()
        else:
            search.step()
        n_eval += 1
    return search, n_eval, graph is not None


# ---------------------------------------------------------------------------- public functions


def _use_cuda_graph(use_cuda_graph: bool | None, device: torch.device) -> bool:
    """The ``use_cuda_graph`` option resolved: default on exactly for CUDA tensors."""
    if use_cuda_graph is None:
        return device.type == "cuda"
    if use_cuda_graph and device.type != "cuda":
        raise ValueError(f"use_cuda_graph=True needs CUDA tensors; got tensors on {device}")
    return bool(use_cuda_graph)


def _result(search: _DualSearch, n_eval: int, graphed: bool, out: torch.dtype) -> LQRResult:
    """The finished search as an :class:`LQRResult` in the inputs' dtype (copies: the search's
    buffers may belong to a cached CUDA graph that the next call overwrites)."""
    status = search.status.clone()
    # a condition still running after the evaluation cap (not expected) is reported as such
    codes = status.tolist()
    return LQRResult(
        K=search.K.to(out, copy=True),
        k=search.k.to(out, copy=True),
        pol_covar=search.S.to(out, copy=True),
        inv_pol_covar=search.prec.to(out, copy=True),
        eta=search.eta_out.to(out, copy=True),
        kl=search.kl_out.to(out, copy=True),
        converged=(status == LQRStatus.CONVERGED) | (status == LQRStatus.KL_BOUND_INACTIVE),
        status=status,
        iterations=search.iters.clone(),
        reason=[_REASONS[LQRStatus(c)] for c in codes],
        n_evaluations=n_eval,
        used_cuda_graph=graphed,
    )


def kl_constrained_lqr(
    dyn: LinearGaussianDynamics,
    cost: QuadraticCost,
    prev: LinearGaussianController,
    kl_step: float | Tensor,
    *,
    eta0: float | Tensor = 1.0,
    policy: PolicyTerm | None = None,
    lagrange: LagrangeTerm | None = None,
    max_ent: float = 0.0,
    min_eta: float = 1e-8,
    max_eta: float = 1e16,
    max_iter: int = 50,
    tol: float = 0.1,
    del0: float = 1e-4,
    stop_when_inactive: bool = True,
    dtype: torch.dtype | None = None,
    use_cuda_graph: bool | None = None,
    max_batch: int | None = None,
) -> LQRResult:
    """Solve min E[sum_t cost] s.t. KL(new || prev) <= kl_step*T for B conditions at once.

    Arguments (B conditions, T steps; torch tensors on one device, all float32 or all float64)::

        dyn   gps.dynamics.LinearGaussianDynamics: x_{t+1} ~ N(Fm[t] [x_t; u_t] + fv[t],
              dyn_covar[t]); Fm [B,T,dX,dX+dU], fv [B,T,dX], dyn_covar [B,T,dX,dX] (step T-1
              unused); the initial state x_0 ~ N(x0mu [B,dX], x0sigma [B,dX,dX])
        cost  gps.cost.QuadraticCost: 1/2 z^T Cm z + z^T cv with z = [x; u];
              Cm [B,T,dX+dU,dX+dU], cv [B,T,dX+dU] (its c0 does not move the solution)
        prev  gps.controller.LinearGaussianController: u ~ N(K x + k, covar), the controller
              the KL is measured to (mirror-descent GPS: the linearised global policy);
              K [B,T,dU,dX], k [B,T,dU], covar [B,T,dU,dU]
        kl_step  float or [B]: bound on the mean per-step KL (total bound kl_step*T)

    Keyword arguments:
        eta0: starting dual variable, float or [B] (warm-start with the previous iteration's eta).
        policy: BADMM's KL-to-policy term nu_t * KL(p || pi), a :class:`PolicyTerm` (the
            linearised policy and its weight nu: float, [B] or [B,T], >= 0).
        lagrange: BADMM's Lagrange multipliers, a :class:`LagrangeTerm`: cost - u^T K x - u^T k.
        max_ent: entropy-bonus weight (reference code's max_ent_traj).
        min_eta, max_eta, max_iter, tol, del0: the search constants (defaults: the reference's).
        stop_when_inactive: stop a condition whose KL is below the bound at eta <= 2*min_eta
            (status KL_BOUND_INACTIVE) instead of spending its remaining iterations there, as
            the reference code does (False).
        dtype: compute dtype (default: float64 on CPU, the input dtype on CUDA); results come back
            in the input dtype.
        use_cuda_graph: capture the evaluation as a CUDA graph (default: True on CUDA tensors,
            and it must be False elsewhere). Graphs and static copies of the inputs are cached for
            the last two shape/option combinations; :func:`clear_graph_cache` frees them.
        max_batch: solve the conditions in consecutive chunks of at most this many, each with
            its own lock-step search (default None: all B at once). The conditions never
            interact, so every condition's result is the same as in one batch (bit for bit on
            the CPU, which the tests check); ``n_evaluations`` is the largest of the chunks',
            which is the count of the single batch. What it is for: memory. The passes' working
            buffers and, on CUDA, the graph's static copy of the whole problem (as large as the
            inputs) then hold one chunk instead of B conditions. (On the CPU, cache-sized chunks
            were measured and did not speed the solve up at B = 1024-4096, dX = 10-30, dU = 1.)

    Returns an :class:`LQRResult`; per-condition failures are in ``status`` / ``reason``.
    """
    opts = _SearchOptions.checked(min_eta, max_eta, max_iter, tol, del0, stop_when_inactive)
    p = prepare_lqr(dyn, cost, prev, policy=policy, lagrange=lagrange, max_ent=max_ent,
                    dtype=dtype)
    graph = _use_cuda_graph(use_cuda_graph, p.Fm.device)
    B, T = p.Fm.shape[:2]
    target = _per_condition("kl_step", kl_step, B, p.Fm, positive=True) * T
    eta_start = _per_condition("eta0", eta0, B, p.Fm, positive=True)
    chunk = _max_batch(max_batch, p)
    if chunk >= B:
        search, n_eval, graphed = _run(p, eta_start, target, opts, graph)
        return _result(search, n_eval, graphed, p.out_dtype)
    parts = []
    for lo in range(0, B, chunk):
        hi = min(lo + chunk, B)
        search, n_eval, graphed = _run(p.conditions(lo, hi), eta_start[lo:hi], target[lo:hi],
                                       opts, graph)
        parts.append(_result(search, n_eval, graphed, p.out_dtype))
    return _concat(parts)


def _max_batch(max_batch: object, p: LQRProblem) -> int:
    """``max_batch`` checked, or its default for this problem."""
    if max_batch is None:
        return p.Fm.shape[0]
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be None or an int >= 1; got {max_batch!r}")
    return max_batch


def _concat(parts: list[LQRResult]) -> LQRResult:
    """The chunks' results as one (conditions in order)."""
    def cat(name: str) -> Tensor:
        return torch.cat([getattr(r, name) for r in parts])

    return LQRResult(
        K=cat("K"), k=cat("k"), pol_covar=cat("pol_covar"), inv_pol_covar=cat("inv_pol_covar"),
        eta=cat("eta"), kl=cat("kl"), converged=cat("converged"), status=cat("status"),
        iterations=cat("iterations"), reason=[x for r in parts for x in r.reason],
        n_evaluations=max(r.n_evaluations for r in parts),
        used_cuda_graph=all(r.used_cuda_graph for r in parts),
    )


def lqr_backward(problem: LQRProblem, eta: float | Tensor) -> LQRBackward:
    """One backward pass of the eta-scaled KL-augmented problem at a fixed eta (float or [B]).

    The same pass :func:`kl_constrained_lqr` runs inside its search, on a problem from
    :func:`prepare_lqr`: prepare once, then call this as often as needed (the benchmark times
    the pass alone this way). ``failed[b]`` is True when Q_uu was not positive definite at some
    step; that condition's outputs are then meaningless (but finite). Results come back in the
    inputs' dtype.
    """
    _check_type("problem", problem, LQRProblem)
    p = problem
    eta_t = _per_condition("eta", eta, p.Fm.shape[0], p.Fm, positive=True)
    K, k = torch.empty_like(p.K_prev), torch.empty_like(p.k_prev)
    S, prec = torch.empty_like(p.pol_covar_prev), torch.empty_like(p.pol_covar_prev)
    logdet = torch.empty_like(p.logdet_prev)
    failed = _backward_pass(p, eta_t, K, k, S, prec, logdet)
    out = p.out_dtype
    return LQRBackward(K.to(out), k.to(out), S.to(out), prec.to(out), failed)


def lqr_forward(
    dyn: LinearGaussianDynamics,
    ctrl: LinearGaussianController,
    prev: LinearGaussianController | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> LQRMarginals:
    """State-action marginals mu [B,T,dX+dU], sigma [B,T,dX+dU,dX+dU] of the controller ``ctrl``
    under the dynamics ``dyn``, and the per-step KL to ``prev`` when given (shapes as
    :func:`kl_constrained_lqr`). The same forward pass :func:`kl_constrained_lqr` uses for its
    KL."""
    _check_type("dyn", dyn, LinearGaussianDynamics)
    _check_type("ctrl", ctrl, LinearGaussianController)
    _check_type("prev", prev, LinearGaussianController, optional=True)
    B, T, dX, dU = _dims(dyn.Fm)
    n = dX + dU
    for name, x, shape, dims in _controller_specs("ctrl", ctrl, B, T, dX, dU):
        _check(name, x, shape, dims, dyn.Fm)
    # the forward pass reads no cost: a zero one (broadcast, no memory) completes the problem
    zero = torch.zeros(1, dtype=dyn.Fm.dtype, device=dyn.Fm.device).expand(B, T, n, n)
    p = prepare_lqr(dyn, QuadraticCost(zero, zero[..., 0], zero[..., 0, 0]),
                    ctrl if prev is None else prev, dtype=dtype)
    cdt = p.Fm.dtype
    _, logdet, _ = _chol_inverse(ctrl.covar.to(cdt))
    mu = torch.empty(B, T, n, dtype=cdt, device=p.Fm.device)
    sigma = torch.empty(B, T, n, n, dtype=cdt, device=p.Fm.device)
    kl = _forward_pass(p, ctrl.K.to(cdt), ctrl.k.to(cdt), ctrl.covar.to(cdt), logdet, mu, sigma)
    out = p.out_dtype
    return LQRMarginals(mu.to(out), sigma.to(out), kl.to(out) if prev is not None else None)
