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

Extra cost terms for the GPS variants (all optional, all folded into the same passes):

* **BADMM** (Levine et al. 2016): a KL-to-policy term with per-step weight nu_t
  (``policy_K, policy_k, policy_covar, policy_weight``: the linearised neural-network policy
  ``pi(u|x) = N(policy_K x + policy_k, policy_covar)``) and the Lagrange multipliers of the
  policy-trajectory agreement constraint (``lagrange_K, lagrange_k``), which shift the cost by
  ``-u^T lagrange_K x - u^T lagrange_k``. The per-step cost becomes, as in the reference code's
  ``AlgorithmBADMM.compute_costs``::

      (l_t - u^T lagrange_K x - u^T lagrange_k - eta log p_prev - nu_t log pi)
          / (eta + nu_t + max_ent)

  and the value function of step t+1 is rescaled by ``w_{t+1} / w_t`` (``w_t = eta + nu_t +
  max_ent``) because each step's cost is divided by its own weight. (The reference code leaves
  ``max_ent`` out of that ratio, which is inconsistent when ``max_ent != 0``; it is included here.)
* **Mirror-descent GPS** (Montgomery & Levine 2016) needs no extra term: its C-step is this same
  KL-constrained problem with the *linearised global policy* passed as the previous controller
  (``K_prev, k_prev, pol_covar_prev``), exactly as the reference code's ``AlgorithmMDGPS``.
* ``max_ent``: the reference code's ``max_ent_traj`` entropy bonus weight (0 by default).

Failures never raise for the whole batch and never produce NaN: a condition with non-finite inputs,
a non-positive-definite previous (or policy) covariance, or a Q_uu that stays indefinite up to
max_eta is reported in ``status`` / ``reason`` and gets the best controller found so far (the
previous controller if none: that is the eta -> infinity solution of the plain problem).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import IntEnum

import torch
from torch import Tensor

from optenv.cuda_graphs import capture, warm_up

__all__ = [
    "LQRBackward",
    "LQRMarginals",
    "LQRResult",
    "LQRStatus",
    "clear_graph_cache",
    "kl_constrained_lqr",
    "lqr_backward",
    "lqr_forward",
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
        "pol_covar_prev is not positive definite at some step, so KL(new || prev) is undefined; "
        "returning the previous controller"
    ),
    LQRStatus.BAD_POLICY_COVAR: (
        "policy_covar is not positive definite at some step, so the KL-to-policy term is "
        "undefined; returning the previous controller"
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


# --------------------------------------------------------------------------------- validation

_FLOATS = (torch.float32, torch.float64)


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
            f"{name} has dtype {x.dtype} but Fm has {ref.dtype}; all tensors must share one dtype "
            "(torch.float32 or torch.float64)"
        )
    if ref is not None and x.device != ref.device:
        raise ValueError(
            f"{name} is on device {x.device} but Fm is on {ref.device}; all tensors must share "
            "one device"
        )
    return x


def _dims(Fm: object) -> tuple[int, int, int, int]:
    if not isinstance(Fm, Tensor):
        raise TypeError(f"Fm must be a torch.Tensor [B,T,dX,dX+dU]; got {type(Fm).__name__}")
    if Fm.dim() != 4 or Fm.shape[3] <= Fm.shape[2] or min(Fm.shape) < 1:
        raise ValueError(
            "Fm must be a 4-D tensor [B,T,dX,dX+dU] with dX >= 1, dU >= 1 (last dim larger than "
            f"the third); got shape {list(Fm.shape)}"
        )
    if Fm.dtype not in _FLOATS:
        raise ValueError(f"Fm has dtype {Fm.dtype}; allowed: torch.float32 or torch.float64")
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


# ------------------------------------------------------------------------------------ problem


@dataclass
class _Problem:
    """Everything the passes read, in the compute dtype; eta-independent parts precomputed.

    Cm/cv already contain the Lagrange shift and nu_t * (-log pi) (BADMM); G/PG/g encode
    -log p_prev(u|x) = 1/2 z^T G^T P G z + z^T g + const with G = [-K_prev, I], z = [x; u].
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
    target: Tensor  # [B] = kl_step * T
    bad: Tensor  # [B] int64 status for conditions that cannot be solved (RUNNING = fine)

    def tensors(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}


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


def _prepare(
    Fm: Tensor,
    fv: Tensor,
    dyn_covar: Tensor | None,
    x0mu: Tensor | None,
    x0sigma: Tensor | None,
    Cm: Tensor,
    cv: Tensor,
    K_prev: Tensor,
    k_prev: Tensor,
    pol_covar_prev: Tensor,
    kl_step: float | Tensor,
    policy_K: Tensor | None,
    policy_k: Tensor | None,
    policy_covar: Tensor | None,
    policy_weight: float | Tensor | None,
    lagrange_K: Tensor | None,
    lagrange_k: Tensor | None,
    max_ent: float,
    dtype: torch.dtype | None,
) -> tuple[_Problem, torch.dtype]:
    """Validate arguments and build the :class:`_Problem` (one sync, outside the passes)."""
    B, T, dX, dU = _dims(Fm)
    n = dX + dU
    specs: list[tuple[str, object, tuple[int, ...], str]] = [
        ("fv", fv, (B, T, dX), "[B,T,dX]"),
        ("Cm", Cm, (B, T, n, n), "[B,T,dX+dU,dX+dU]"),
        ("cv", cv, (B, T, n), "[B,T,dX+dU]"),
        ("K_prev", K_prev, (B, T, dU, dX), "[B,T,dU,dX]"),
        ("k_prev", k_prev, (B, T, dU), "[B,T,dU]"),
        ("pol_covar_prev", pol_covar_prev, (B, T, dU, dU), "[B,T,dU,dU]"),
    ]
    if dyn_covar is not None:
        specs += [
            ("dyn_covar", dyn_covar, (B, T, dX, dX), "[B,T,dX,dX]"),
            ("x0mu", x0mu, (B, dX), "[B,dX]"),
            ("x0sigma", x0sigma, (B, dX, dX), "[B,dX,dX]"),
        ]
    pol_args = (policy_K, policy_k, policy_covar, policy_weight)
    if any(a is not None for a in pol_args) and not all(a is not None for a in pol_args):
        raise ValueError(
            "policy_K, policy_k, policy_covar and policy_weight must be given together (the BADMM "
            f"KL-to-policy term); got {[a is not None for a in pol_args]} for them"
        )
    if (lagrange_K is None) != (lagrange_k is None):
        raise ValueError("lagrange_K and lagrange_k must be given together; got only one of them")
    if policy_K is not None:
        specs += [
            ("policy_K", policy_K, (B, T, dU, dX), "[B,T,dU,dX]"),
            ("policy_k", policy_k, (B, T, dU), "[B,T,dU]"),
            ("policy_covar", policy_covar, (B, T, dU, dU), "[B,T,dU,dU]"),
        ]
    if lagrange_K is not None:
        specs += [
            ("lagrange_K", lagrange_K, (B, T, dU, dX), "[B,T,dU,dX]"),
            ("lagrange_k", lagrange_k, (B, T, dU), "[B,T,dU]"),
        ]
    for name, x, shape, dims in specs:
        _check(name, x, shape, dims, Fm)
    if not isinstance(max_ent, (int, float)) or not math.isfinite(max_ent) or max_ent < 0:
        raise ValueError(f"max_ent must be a finite float >= 0; got {max_ent!r}")
    if dtype is not None and dtype not in _FLOATS:
        raise ValueError(f"dtype must be None, torch.float32 or torch.float64; got {dtype}")
    cdt = dtype or _default_dtype(Fm.device, Fm.dtype)
    dev = Fm.device

    def cv_(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.to(cdt)

    Fm_, fv_, Cm_, cv__ = cv_(Fm), cv_(fv), cv_(Cm), cv_(cv)
    Kp, kp, Sp = cv_(K_prev), cv_(k_prev), cv_(pol_covar_prev)
    if dyn_covar is None:
        W = torch.zeros(B, T, dX, dX, dtype=cdt, device=dev)
        m0 = torch.zeros(B, dX, dtype=cdt, device=dev)
        S0 = torch.zeros(B, dX, dX, dtype=cdt, device=dev)
    else:
        W, m0, S0 = cv_(dyn_covar), cv_(x0mu), cv_(x0sigma)
    if policy_weight is not None:
        if isinstance(policy_weight, Tensor) and policy_weight.dim() == 2:
            nu = _check("policy_weight", policy_weight, (B, T), "[B,T]", Fm).to(cdt)
        else:
            nu = _per_condition("policy_weight", policy_weight, B, Fm_, positive=False)
            nu = nu[:, None].expand(B, T)
        if not bool(torch.all(torch.isfinite(nu) & (nu >= 0))):
            raise ValueError("policy_weight must be finite and >= 0")
    else:
        nu = torch.zeros(B, T, dtype=cdt, device=dev)
    target = _per_condition("kl_step", kl_step, B, Fm_, positive=True) * T

    pol = [cv_(policy_K), cv_(policy_k), cv_(policy_covar)] if policy_K is not None else []
    lag = [cv_(lagrange_K), cv_(lagrange_k)] if lagrange_K is not None else []
    ok = _finite_rows(Fm_, fv_, W, m0, S0, Cm_, cv__, Kp, kp, Sp, nu, *pol, *lag)
    bad = torch.full((B,), int(LQRStatus.RUNNING), dtype=torch.int64, device=dev)
    if not bool(ok.all()):
        Fm_, fv_, W, m0, S0 = (_sanitise(Fm_, ok, False), _sanitise(fv_, ok, False),
                               _sanitise(W, ok, True), _sanitise(m0, ok, False),
                               _sanitise(S0, ok, True))
        Cm_, cv__ = _sanitise(Cm_, ok, True), _sanitise(cv__, ok, False)
        Kp, kp, Sp = _sanitise(Kp, ok, False), _sanitise(kp, ok, False), _sanitise(Sp, ok, True)
        nu = _sanitise(nu, ok, False)
        if pol:
            pol = [_sanitise(pol[0], ok, False), _sanitise(pol[1], ok, False),
                   _sanitise(pol[2], ok, True)]
        lag = [_sanitise(x, ok, False) for x in lag]
        bad = torch.where(ok, bad, int(LQRStatus.NONFINITE_INPUT))

    prec_prev, logdet_prev, bad_prev = _chol_inverse(Sp)
    bad_prev = bad_prev.any(1)
    bad = torch.where((bad == LQRStatus.RUNNING) & bad_prev, int(LQRStatus.BAD_PREV_COVAR), bad)
    G, PG, g = _gaussian_quadratic(Kp, kp, prec_prev)

    if lag:
        Cm_ = Cm_.clone()
        cv__ = cv__.clone()
        cv__[..., dX:] -= lag[1]
        Cm_[..., dX:, :dX] -= lag[0]
        Cm_[..., :dX, dX:] -= lag[0].mT
    if pol:
        prec_pol, _, bad_pol = _chol_inverse(pol[2])
        bad = torch.where((bad == LQRStatus.RUNNING) & bad_pol.any(1),
                          int(LQRStatus.BAD_POLICY_COVAR), bad)
        Gq, PGq, gq = _gaussian_quadratic(pol[0], pol[1], prec_pol)
        Cm_ = Cm_ + nu[..., None, None] * (Gq.mT @ PGq)
        cv__ = cv__ + nu[..., None] * gq

    prob = _Problem(
        Fm=Fm_, fv=fv_, dyn_covar=W, x0mu=m0, x0sigma=S0, Cm=Cm_, cv=cv__, K_prev=Kp, k_prev=kp,
        pol_covar_prev=Sp, prec_prev=prec_prev, logdet_prev=logdet_prev, G=G, PG=PG, g=g, nu=nu,
        max_ent=float(max_ent), target=target, bad=bad,
    )
    return prob, cdt


# ------------------------------------------------------------------------- the shared passes


def _backward_pass(p: _Problem, eta: Tensor, K: Tensor, k: Tensor, S: Tensor, prec: Tensor,
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
    eye = torch.eye(dU, dtype=eta.dtype, device=eta.device).expand(B, dU, dU)
    failed = torch.zeros(B, dtype=torch.bool, device=eta.device)
    V = v = None
    w_next = None
    for t in range(T - 1, -1, -1):
        w = eta + p.nu[:, t] + p.max_ent
        # in place where a fresh tensor is not needed: these [B,n,n] element-wise passes are
        # memory-bound, and fresh outputs cost the CPU more (B=90, dX=99, n=111, 2 threads,
        # 3 alternating runs: 1.34-1.41 s per evaluation against 1.44-1.63 s); the values are
        # the same to the bit
        Q = torch.baddbmm(p.Cm[:, t], p.G[:, t].mT, p.PG[:, t] * eta[:, None, None])
        Q.div_(w[:, None, None])
        q = (p.cv[:, t] + eta[:, None] * p.g[:, t]) / w[:, None]
        if V is not None and v is not None and w_next is not None:
            F = p.Fm[:, t]
            Vs = V.mul_((w_next / w)[:, None, None])  # V is not used again
            Q.baddbmm_(F.mT, Vs @ F)
            vs = v * (w_next / w)[:, None] + (Vs @ p.fv[:, t, :, None]).squeeze(-1)
            q = q + (F.mT @ vs[..., None]).squeeze(-1)
        Q = Q.add(Q.mT).mul_(0.5)
        Quu = Q[:, dX:, dX:]
        L, info = torch.linalg.cholesky_ex(Quu)
        bad = (info != 0) | ~torch.isfinite(L).all(-1).all(-1)
        L = torch.where(bad[:, None, None], eye, L)
        rhs = torch.cat([eye, Q[:, dX:, :dX], q[:, dX:, None]], dim=-1)
        Z = torch.linalg.solve_triangular(L, rhs, upper=False)
        Z = torch.linalg.solve_triangular(L.mT, Z, upper=True)
        S_t = Z[..., :dU]
        K_t = -Z[..., dU:dU + dX]
        k_t = -Z[..., -1]
        Qxu = Q[:, :dX, dX:]
        V = Q[:, :dX, :dX] + Qxu @ K_t
        V = V.add(V.mT).mul_(0.5)
        v = q[:, :dX] + (Qxu @ k_t[..., None]).squeeze(-1)
        # a failed condition's remaining steps are discarded; zero its value function so that
        # nothing overflows on the way (conditions never mix, this only keeps numbers tidy)
        V.masked_fill_(bad[:, None, None], 0.0)
        v = torch.where(bad[:, None], 0.0, v)
        K[:, t] = K_t
        k[:, t] = k_t
        S[:, t] = 0.5 * (S_t + S_t.mT)
        prec[:, t] = Quu
        logdet[:, t] = -2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        failed = failed | bad
        w_next = w
    return failed


def _forward_pass(p: _Problem, K: Tensor, k: Tensor, S: Tensor, logdet: Tensor,
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


# ---------------------------------------------------------------------------- the dual search

INACTIVE_FACTOR = 2.0
"""A KL still below the bound at eta <= INACTIVE_FACTOR * min_eta ends a condition's search."""


class _DualSearch:
    """Per-condition eta search state, updated in place (so a CUDA graph can capture a step)."""

    def __init__(self, p: _Problem, eta0: Tensor, min_eta: float, max_eta: float, max_iter: int,
                 tol: float, del0: float, stop_when_inactive: bool) -> None:
        self.p = p
        self.min_eta, self.max_eta, self.max_iter = min_eta, max_eta, max_iter
        self.tol, self.del0 = tol, del0
        self.inactive_eta = INACTIVE_FACTOR * min_eta if stop_when_inactive else -math.inf
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
        self.reset(eta0)

    def load(self, p: _Problem, eta0: Tensor) -> None:
        """Copy a new problem of the same shapes into this search's (static) buffers."""
        mine = self.p.tensors()
        for name, x in p.tensors().items():
            mine[name].copy_(x)
        self.p.max_ent = p.max_ent
        self.reset(eta0)

    def reset(self, eta0: Tensor) -> None:
        p = self.p
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
        test convergence and move eta within the bracket.
        """
        p = self.p
        failed = _backward_pass(p, self.eta, self.cK, self.ck, self.cS, self.cprec, self.clogdet)
        kl = _forward_pass(p, self.cK, self.ck, self.cS, self.clogdet).sum(1)
        failed = failed | ~torch.isfinite(kl) | ~_finite_rows(self.cK, self.ck)
        active = ~self.done
        retry = active & failed
        ok = active & ~failed
        eta = self.eta.clone()

        # PD retry: eta = start + delta, delta doubling; give up at max_eta
        bumped = self.base + self.delta
        dead = retry & (bumped >= self.max_eta)
        new_eta = torch.where(retry, bumped, eta)
        new_delta = torch.where(retry, 2.0 * self.delta, self.delta)

        # commit the successful evaluations
        m4 = ok[:, None, None, None]
        self.K.copy_(torch.where(m4, self.cK, self.K))
        self.k.copy_(torch.where(ok[:, None, None], self.ck, self.k))
        self.S.copy_(torch.where(m4, self.cS, self.S))
        self.prec.copy_(torch.where(m4, self.cprec, self.prec))
        self.eta_out.copy_(torch.where(ok, eta, self.eta_out))
        self.kl_out.copy_(torch.where(ok, kl, self.kl_out))
        iters = self.iters + ok.long()

        # convergence test and bracket move (as the reference code)
        con = kl - p.target
        conv = ok & (con.abs() < self.tol * p.target)
        too_big = con < 0
        inactive = ok & ~conv & too_big & (eta <= self.inactive_eta)
        last = ok & ~conv & ~inactive & (iters >= self.max_iter)
        move = ok & ~conv & ~inactive & ~last
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
        self.iters.copy_(iters)

        status = self.status
        status = torch.where(conv, int(LQRStatus.CONVERGED), status)
        status = torch.where(inactive, int(LQRStatus.KL_BOUND_INACTIVE), status)
        status = torch.where(last & too_big, int(LQRStatus.MAX_ITER_KL_BELOW), status)
        status = torch.where(last & ~too_big, int(LQRStatus.MAX_ITER_KL_ABOVE), status)
        status = torch.where(dead, int(LQRStatus.PD_FAILURE), status)
        self.status.copy_(status)
        self.done.copy_(self.done | conv | inactive | last | dead)

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


def _run(p: _Problem, eta0: Tensor, min_eta: float, max_eta: float, max_iter: int, tol: float,
         del0: float, stop_when_inactive: bool, use_cuda_graph: bool
         ) -> tuple[_DualSearch, int, bool]:
    """Drive the search: eager steps, or graph replays from a cache keyed on shapes and options.

    The host reads ``done.all()`` once per evaluation (not inside the T-step passes).
    """
    args = (min_eta, max_eta, max_iter, tol, del0, stop_when_inactive)
    if not use_cuda_graph:
        return _drive(_DualSearch(p, eta0, *args), 0, None)
    key = (p.Fm.device, p.Fm.dtype, tuple(p.Fm.shape), *args, p.max_ent)
    cached = _GRAPH_CACHE.get(key)
    if cached is not None:
        _GRAPH_CACHE.move_to_end(key)
        cached.search.load(p, eta0)
        return _drive(cached.search, 0, cached.graph)
    # the graph reads fixed addresses: give it its own copy of the problem, refilled by load()
    static = replace(p, **{name: x.clone() for name, x in p.tensors().items()})
    graphed = _GraphedSearch(_DualSearch(static, eta0, *args))
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


def kl_constrained_lqr(
    Fm: Tensor,
    fv: Tensor,
    dyn_covar: Tensor,
    x0mu: Tensor,
    x0sigma: Tensor,
    Cm: Tensor,
    cv: Tensor,
    K_prev: Tensor,
    k_prev: Tensor,
    pol_covar_prev: Tensor,
    kl_step: float | Tensor,
    *,
    eta0: float | Tensor = 1.0,
    policy_K: Tensor | None = None,
    policy_k: Tensor | None = None,
    policy_covar: Tensor | None = None,
    policy_weight: float | Tensor | None = None,
    lagrange_K: Tensor | None = None,
    lagrange_k: Tensor | None = None,
    max_ent: float = 0.0,
    min_eta: float = 1e-8,
    max_eta: float = 1e16,
    max_iter: int = 50,
    tol: float = 0.1,
    del0: float = 1e-4,
    stop_when_inactive: bool = True,
    dtype: torch.dtype | None = None,
    use_cuda_graph: bool | None = None,
) -> LQRResult:
    """Solve min E[sum_t cost] s.t. KL(new || prev) <= kl_step*T for B conditions at once.

    Shapes (B conditions, T steps; torch, any device, float32 or float64, all alike)::

        Fm [B,T,dX,dX+dU]  fv [B,T,dX]  dyn_covar [B,T,dX,dX]
            x_{t+1} ~ N(Fm[t] [x_t; u_t] + fv[t], dyn_covar[t])
        x0mu [B,dX]  x0sigma [B,dX,dX]                             initial state distribution
        Cm [B,T,dX+dU,dX+dU]  cv [B,T,dX+dU]                       cost 1/2 z^T Cm z + z^T cv
        K_prev [B,T,dU,dX]  k_prev [B,T,dU]  pol_covar_prev [B,T,dU,dU]   u ~ N(K x + k, S)
        kl_step: float or [B]: bound on the mean per-step KL (total bound kl_step*T)

    (Fm[:, T-1] is never used: there is no step after the last.)

    Keyword arguments:
        eta0: starting dual variable, float or [B] (warm-start with the previous iteration's eta).
        policy_K [B,T,dU,dX], policy_k [B,T,dU], policy_covar [B,T,dU,dU], policy_weight
            (float, [B] or [B,T], >= 0): BADMM's KL-to-policy term nu_t * KL(p || pi).
        lagrange_K [B,T,dU,dX], lagrange_k [B,T,dU]: BADMM's Lagrange multipliers; they add
            -u^T lagrange_K x - u^T lagrange_k to the cost.
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

    Mirror-descent GPS: pass the linearised global policy as K_prev, k_prev, pol_covar_prev.

    Returns an :class:`LQRResult`; per-condition failures are in ``status`` / ``reason``.
    """
    B = _dims(Fm)[0]
    for name, val in (("min_eta", min_eta), ("max_eta", max_eta), ("tol", tol), ("del0", del0)):
        if not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0:
            raise ValueError(f"{name} must be a finite float > 0; got {val!r}")
    if min_eta >= max_eta:
        raise ValueError(f"min_eta must be < max_eta; got min_eta={min_eta}, max_eta={max_eta}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1; got {max_iter!r}")
    if use_cuda_graph is None:
        use_cuda_graph = Fm.device.type == "cuda"
    if use_cuda_graph and Fm.device.type != "cuda":
        raise ValueError(f"use_cuda_graph=True needs CUDA tensors; got tensors on {Fm.device}")
    p, _ = _prepare(Fm, fv, dyn_covar, x0mu, x0sigma, Cm, cv, K_prev, k_prev, pol_covar_prev,
                    kl_step, policy_K, policy_k, policy_covar, policy_weight, lagrange_K,
                      lagrange_k, max_ent, dtype)
    eta_start = _per_condition("eta0", eta0, B, p.Fm, positive=True)
    search, n_eval, graphed = _run(p, eta_start, float(min_eta), float(max_eta), max_iter,
                                   float(tol), float(del0), bool(stop_when_inactive),
                                   use_cuda_graph)
    status = search.status.clone()
    # a condition still running after the evaluation cap (not expected) is reported as such
    codes = status.tolist()
    out = Fm.dtype
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


def lqr_backward(
    Fm: Tensor,
    fv: Tensor,
    Cm: Tensor,
    cv: Tensor,
    K_prev: Tensor,
    k_prev: Tensor,
    pol_covar_prev: Tensor,
    eta: float | Tensor,
    *,
    policy_K: Tensor | None = None,
    policy_k: Tensor | None = None,
    policy_covar: Tensor | None = None,
    policy_weight: float | Tensor | None = None,
    lagrange_K: Tensor | None = None,
    lagrange_k: Tensor | None = None,
    max_ent: float = 0.0,
    dtype: torch.dtype | None = None,
) -> LQRBackward:
    """One backward pass of the eta-scaled KL-augmented problem at a fixed eta (float or [B]).

    The same pass :func:`kl_constrained_lqr` runs inside its search (shapes and keyword
    arguments as there). ``failed[b]`` is True when Q_uu was not positive definite at some step;
    that condition's outputs are then meaningless (but finite).
    """
    B = _dims(Fm)[0]
    p, _ = _prepare(Fm, fv, None, None, None, Cm, cv, K_prev, k_prev, pol_covar_prev, 1.0,
                    policy_K, policy_k, policy_covar, policy_weight, lagrange_K, lagrange_k,
                    max_ent, dtype)
    eta_t = _per_condition("eta", eta, B, p.Fm, positive=True)
    K, k = torch.empty_like(p.K_prev), torch.empty_like(p.k_prev)
    S, prec = torch.empty_like(p.pol_covar_prev), torch.empty_like(p.pol_covar_prev)
    logdet = torch.empty_like(p.logdet_prev)
    failed = _backward_pass(p, eta_t, K, k, S, prec, logdet)
    out = Fm.dtype
    return LQRBackward(K.to(out), k.to(out), S.to(out), prec.to(out), failed)


def lqr_forward(
    Fm: Tensor,
    fv: Tensor,
    dyn_covar: Tensor,
    x0mu: Tensor,
    x0sigma: Tensor,
    K: Tensor,
    k: Tensor,
    pol_covar: Tensor,
    K_prev: Tensor | None = None,
    k_prev: Tensor | None = None,
    pol_covar_prev: Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> LQRMarginals:
    """State-action marginals mu [B,T,dX+dU], sigma [B,T,dX+dU,dX+dU] of the controller (K, k,
    pol_covar) under the dynamics, and the per-step KL to (K_prev, k_prev, pol_covar_prev) when
    given. The same forward pass :func:`kl_constrained_lqr` uses for its KL."""
    B, T, dX, dU = _dims(Fm)
    n = dX + dU
    has_prev = K_prev is not None
    if has_prev and (k_prev is None or pol_covar_prev is None):
        raise ValueError("K_prev, k_prev and pol_covar_prev must be given together")
    Kp = K_prev if has_prev else K
    kp = k_prev if k_prev is not None else k
    Sp = pol_covar_prev if pol_covar_prev is not None else pol_covar
    _check("K", K, (B, T, dU, dX), "[B,T,dU,dX]", Fm)
    _check("k", k, (B, T, dU), "[B,T,dU]", Fm)
    _check("pol_covar", pol_covar, (B, T, dU, dU), "[B,T,dU,dU]", Fm)
    zeros_cost = torch.zeros(1, dtype=Fm.dtype, device=Fm.device).expand(B, T, n, n)
    p, cdt = _prepare(Fm, fv, dyn_covar, x0mu, x0sigma, zeros_cost, zeros_cost[..., 0], Kp, kp,
                      Sp, 1.0, None, None, None, None, None, None, 0.0, dtype)
    _, logdet, _ = _chol_inverse(pol_covar.to(cdt))
    mu = torch.empty(B, T, n, dtype=cdt, device=Fm.device)
    sigma = torch.empty(B, T, n, n, dtype=cdt, device=Fm.device)
    kl = _forward_pass(p, K.to(cdt), k.to(cdt), pol_covar.to(cdt), logdet, mu, sigma)
    out = Fm.dtype
    return LQRMarginals(mu.to(out), sigma.to(out), kl.to(out) if has_prev else None)
