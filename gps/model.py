"""GPS's local models, batched over conditions: dynamics in the LQR state and the quadratic cost.

Dynamics. Of the LQR state's coordinates only s = [CUR_LOC, CUR_GRAD, newest objective delta]
(2d + 1 of them) move in a way that depends on the objective; every other coordinate is a known
shift of a history buffer (the oldest entry drops out, the newest is s or the action), and
CUR_LOC' = CUR_LOC + u exactly. So we fit ``fit_linear_gaussian`` (with its GMM/NIW prior) to
s' ~ N(F [s; u] + f, W) only, and lift the fit into the LQR state with the exact shift rows.
Why not fit the whole state, as the reference code does: with dX = 233 and 20 samples the joint
Gaussian of [x, u, x'] has 470 dimensions and 20 points per step; the prior must then invent almost
all of it, including the shift structure that is known exactly, and the GMM over 470-dim points is
the iteration's biggest cost. The lifted model is exact where the truth is known and spends the
samples on the 2d + 1 coordinates that need them.

Cost. Li & Malik's cost is the objective at the iterate. The cost of step t is f(x_t + u_t), the
objective at the iterate the step produces (the env's reward is −f after the step), expanded to
second order in (z, u) from f's exact gradient and Hessian at the sampled mean of x_t + u_t,
as the authors' code does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from gps.controller import LinearGaussianController, LQRStateMap
from gps.cost import QuadraticCost
from gps.dynamics import LinearGaussianDynamics, fit_linear_gaussian
from gps.gmm import GMM
from gps.lqr import lqr_forward
from gps.prior import GMMPrior
from optenv.distributed import Shard
from optenv.families.base import ObjectiveFamily
from optenv.validation import check_choice

# QuadraticCost is declared in gps.cost (gps.lqr takes it, and this module uses gps.lqr); it is
# exported here too, beside expand_cost, which builds it
__all__ = ["COST_HESSIANS", "QuadraticCost", "data_by_iteration", "expand_cost", "expected_cost",
           "fit_dynamics", "quadratic_in_state"]


def fit_dynamics(Z: Tensor, U: Tensor, smap: LQRStateMap, *, reg: float = 1e-3,
                 prior: bool = True, max_clusters: int = 20, min_samples_per_cluster: int = 20,
                 strength: float = 1.0, gmm_iters: int = 100,
                 generator: torch.Generator | None = None, init: GMM | None = None,
                 shared_prior: bool = False, prior_samples: Tensor | None = None,
                 shard: Shard | None = None
                 ) -> tuple[LinearGaussianDynamics, Tensor, GMM | None]:
    """Linear-Gaussian dynamics of the LQR state for every condition and step.

    Z [M,N,T,dX] LQR states, U [M,N,T,dU] actions. Returns the dynamics (shapes as
    :func:`gps.lqr.kl_constrained_lqr` takes them) and the per-condition relative residual [M]
    of the fitted coordinates on the samples (sum of squared one-step prediction errors over the
    sum of squared deviations from their mean: 0 = perfect, 1 = no better than the mean), and
    the prior's mixture (None without a prior). ``init`` warm-starts the mixture's EM from a
    previous fit (the reference code's default across GPS iterations: from a warm start EM
    converges in a few iterations instead of running to ``gmm_iters``). ``shared_prior``: one
    mixture over all conditions' transitions instead of one per condition (the coordinatewise
    agent's prior per coordinate group). ``prior_samples``: the indices of the samples (along
    N) the mixture is fitted on (default all; the per-step fits always use all of them).
    ``shard``: the M conditions are this rank's share (:class:`optenv.distributed.Shard`) of
    a run split across processes; per-condition mixtures then draw their random start for the
    whole batch, and a shared mixture is fitted, on every rank alike, to every rank's prior
    samples gathered in condition order: either way the fit is the one of a single process.
    """
    idx = smap.core_index().to(Z.device)
    S = Z[..., idx]
    gmm_prior = None
    if prior:
        few = slice(None) if prior_samples is None else prior_samples.to(Z.device)
        S_p, U_p = S[:, few], U[:, few]
        if shared_prior and shard is not None:
            S_p, U_p = shard.gather(S_p), shard.gather(U_p)
        gmm_prior = GMMPrior.fit(S_p, U_p, max_clusters=max_clusters,
                                 min_samples_per_cluster=min_samples_per_cluster,
                                 strength=strength, generator=generator, max_iter=gmm_iters,
                                 init=init, shared=shared_prior, shard=shard)
    fit = fit_linear_gaussian(S, U, gmm_prior, reg=reg)
    residual = _relative_residual(fit, S, U, smap.layout.d)
    dyn = _lift(fit, Z, U.shape[-1], smap, idx)
    return dyn, residual, None if gmm_prior is None else gmm_prior.gmm


def _relative_residual(fit: LinearGaussianDynamics, S: Tensor, U: Tensor, d: int) -> Tensor:
    """[M] sum of squared one-step prediction errors of the fitted coordinates (gradient and
    objective delta: s[d:]) over their spread about the mean, on the samples S [M,N,T,2d+1],
    U [M,N,T,dU]: the fit's quality in a number the report can show."""
    su = torch.cat([S[:, :, :-1], U[:, :, :-1]], -1)
    pred = torch.einsum("mtij,mntj->mnti", fit.Fm[:, :-1], su) + fit.fv[:, None, :-1]
    target = S[:, :, 1:, d:]
    err = (target - pred[..., d:]).pow(2).sum((1, 2, 3))
    spread = (target - target.mean(1, keepdim=True)).pow(2).sum((1, 2, 3))
    return err / spread.clamp_min(1e-30)


def _known_transitions(smap: LQRStateMap, M: int, T: int, dX: int, dU: int,
                       dtype: torch.dtype, device: torch.device) -> Tensor:
    """Fm [M,T,dX,dX+dU] with the rows the state layout fixes exactly: CUR_LOC' = CUR_LOC + u,
    and the history buffers shifted by one, PAST_GRADS taking the current gradient and
    PAST_LOC_DELTAS the action as their newest entry. The rows of CUR_GRAD and of the newest
    objective delta stay zero: they are fitted."""
    lay = smap.layout
    sl = lay.state_slices
    h, d = lay.history, lay.d
    n = dX + dU
    Fm = torch.zeros(M, T, dX, n, dtype=dtype, device=device)
    eye_d = torch.eye(d, dtype=dtype, device=device)
    x = sl["CUR_LOC"]
    Fm[:, :, x, x] = eye_d
    Fm[:, :, x, dX:] = eye_d
    p0 = sl["PAST_OBJ_VAL_DELTAS"].start
    g0 = sl["PAST_GRADS"].start
    s0 = sl["PAST_LOC_DELTAS"].start
    rows = torch.cat([torch.arange(p0, p0 + h - 1), torch.arange(g0, g0 + h * d),
                      torch.arange(s0, s0 + (h - 1) * d)]).to(device)
    cols = torch.cat([torch.arange(p0 + 1, p0 + h), torch.arange(g0 + d, g0 + d + h * d),
                      torch.arange(s0 + d, s0 + h * d)]).to(device)
    Fm[:, :, rows, cols] = 1.0
    Fm[:, :, s0 + (h - 1) * d:s0 + h * d, dX:] = eye_d
    return Fm


def _lift(fit: LinearGaussianDynamics, Z: Tensor, dU: int, smap: LQRStateMap, idx: Tensor
          ) -> LinearGaussianDynamics:
    """The fit of s (coordinates ``idx`` of the LQR state) lifted into the whole LQR state: the
    known rows, then the fitted rows and noise of CUR_GRAD and the newest objective delta
    (CUR_LOC's row is exact, so its fit is dropped); the initial state from the samples Z."""
    M, _N, T, dX = Z.shape
    d = smap.layout.d
    n = dX + dU
    dev, dt = Z.device, Z.dtype
    Fm = _known_transitions(smap, M, T, dX, dU, dt, dev)
    out_rows = idx[d:]
    in_cols = torch.cat([idx, torch.arange(dX, n, device=dev)])
    Fm[:, :, out_rows[:, None], in_cols[None, :]] = fit.Fm[:, :, d:, :]
    fv = torch.zeros(M, T, dX, dtype=dt, device=dev)
    fv[:, :, out_rows] = fit.fv[:, :, d:]
    W = torch.zeros(M, T, dX, dX, dtype=dt, device=dev)
    W[:, :, out_rows[:, None], out_rows[None, :]] = fit.dyn_covar[:, :, d:, d:]
    x0 = Z[:, :, 0]
    var = x0.var(1, unbiased=False).clamp_min(1e-6)
    return LinearGaussianDynamics(Fm, fv, W, x0.mean(1), torch.diag_embed(var))


#: How :func:`expand_cost` treats f's Hessian (the first is the default).
COST_HESSIANS = ("exact", "psd")


def data_by_iteration(family: ObjectiveFamily, data: Mapping[str, Tensor], T: int
                      ) -> dict[str, Tensor]:
    """The problem data of M conditions for their M·T cost expansion points, [M·T, ...], row
    m·T + t holding condition m's data as the core has them when it evaluates iterate t + 1 —
    the point cost_t = f(x_t + u_t) is expanded at.

    Why: a minibatch family (:class:`~optenv.families.MLPClassifier`) keeps its minibatch
    counter in the data, and the samples' cost at step t was f̂ on minibatch t + 1; expanding
    every step on one minibatch (the counter where sampling left it) fitted the LQR's cost to
    a different objective than the one the samples saw. The counter is set by the family's own
    ``rewind`` and ``advance``, as the core does; for exact families the rows are copies.
    ``data`` is not changed.
    """
    cur = {k: v.clone() for k, v in data.items()}
    out = {k: v.new_empty((v.shape[0], T, *v.shape[1:])) for k, v in data.items()}
    family.rewind(cur)
    for t in range(T):
        family.advance(cur)
        for k, v in cur.items():
            out[k][:, t] = v
    return {k: v.flatten(0, 1) for k, v in out.items()}


def expand_cost(family: ObjectiveFamily, data: Mapping[str, Tensor], Z: Tensor, U: Tensor,
                smap: LQRStateMap, *, hessian: str = "exact") -> QuadraticCost:
    """Second-order expansion of cost_t = f(x_t + u_t) at the sampled mean of x_t + u_t.

    Z [M,N,T,dX], U [M,N,T,dU]; ``data`` holds the M conditions' problem data. One batched
    value/gradient/Hessian call for all M·T expansion points.

    ``hessian``: "exact" (default, as the authors' code) uses f's Hessian as it is; "psd" clips
    its negative eigenvalues to 0. On a convex family the two agree. On a non-convex one
    (RobustRegression, NeuralNet) an indefinite cost makes Q_uu indefinite, and the LQR's dual
    search then raises η by doubling retries until it is PD. Measured with the quick preset on
    RobustRegression (2026-11-26, before the LQR's inactive-bound stop): "exact" took 1 367 s
    and "psd" 198 s, and "exact" learned the better optimiser (mean f at iteration 40 on
    held-out objectives 0.5303 vs 0.5340).
    """
    check_choice("hessian", hessian, COST_HESSIANS)
    M, _N, T, dX = Z.shape
    d = U.shape[-1]
    x = smap.layout.state_slices["CUR_LOC"]
    y = (Z[..., x] + U).mean(1)  # [M,T,d]
    flat = y.reshape(M * T, d)
    rep = data_by_iteration(family, data, T)
    f, g = family.value_and_grad(flat, rep)
    Hs = family.hessian(flat, rep)
    Hs = 0.5 * (Hs + Hs.mT)
    f, g, Hs = f.reshape(M, T).detach(), g.reshape(M, T, d).detach(), Hs.reshape(M, T, d, d)
    Hs = Hs.detach()
    if hessian == "psd":
        w, V = torch.linalg.eigh(Hs)
        Hs = (V * w.clamp_min(0.0)[..., None, :]) @ V.mT
    return quadratic_in_state(f, g, Hs, y, x, dX)


def quadratic_in_state(f: Tensor, g: Tensor, Hs: Tensor, y: Tensor, x: slice, dX: int
                       ) -> QuadraticCost:
    """The quadratic f + g·(y − ȳ) + ½ (y − ȳ)ᵀ Hs (y − ȳ) of the next iterate y = x + u,
    written in the LQR's [z; u] (x = z[``x``], u the last dU = d entries): f [B,T], g [B,T,d],
    Hs [B,T,d,d], ȳ = ``y`` [B,T,d]. Shared by :func:`expand_cost` and the per-coordinate cost
    of :mod:`gps.coordinatewise` (there d = 1)."""
    d = y.shape[-1]
    n = dX + d
    P = torch.zeros(n, d, dtype=y.dtype, device=y.device)  # y = P^T [z; u]
    P[x] = torch.eye(d, dtype=y.dtype, device=y.device)
    P[dX:] = torch.eye(d, dtype=y.dtype, device=y.device)
    Cm = P @ Hs @ P.T
    lin = g - (Hs @ y[..., None]).squeeze(-1)
    cv = lin @ P.T
    c0 = f - (g * y).sum(-1) + 0.5 * (y * (Hs @ y[..., None]).squeeze(-1)).sum(-1)
    return QuadraticCost(Cm, cv, c0)


def expected_cost(cost: QuadraticCost, dyn: LinearGaussianDynamics, K: Tensor, k: Tensor,
                  covar: Tensor) -> Tensor:
    """E[sum_t cost_t] [M] of the controller (K, k, covar) under ``dyn``'s Gaussian marginals
    (the Laplace estimate that step-size adaptation compares)."""
    marg = lqr_forward(dyn, LinearGaussianController(K, k, covar))
    mu, sigma = marg.mu, marg.sigma
    quad = 0.5 * ((cost.Cm * sigma).sum((-2, -1))
                  + (mu * (cost.Cm @ mu[..., None]).squeeze(-1)).sum(-1))
    return (quad + (cost.cv * mu).sum(-1) + cost.c0).sum(-1)
