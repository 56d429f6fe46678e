"""Per-time-step linear-Gaussian dynamics fitting, batched over conditions, with a GMM/NIW prior.

For each condition b and step t the N sampled transitions [x_t, u_t, x_{t+1}] give a joint
Gaussian; conditioning it on [x_t, u_t] yields x_{t+1} ~ N(Fm [x_t; u_t] + fv, dyn_covar)
(Levine et al. 2016, appendix; the reference code's ``DynamicsLRPrior``). With few samples the
empirical covariance is rank-deficient (N < 2 dX + dU), so it is combined with a
normal-inverse-Wishart prior (mu0, Phi, m, n0) from a GMM fitted on all transitions
(:class:`gps.prior.GMMPrior`), the MAP estimate being::

    Sigma = (N S_emp + Phi + N m / (N + m) (mu_emp - mu0)(mu_emp - mu0)^T) / (N + n0)

Then ``reg * I`` is added to the [x_t, u_t] block (the identity: the reference code adds ``reg``
to every entry of that block, which is not a ridge and can break positive definiteness).
All conditions and steps are solved with batched Cholesky factorisations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gps.prior import GMMPrior, check_transitions

__all__ = ["LinearGaussianDynamics", "condition_joint_gaussian", "fit_linear_gaussian"]


@dataclass
class LinearGaussianDynamics:
    """Fitted dynamics, shapes as :func:`gps.lqr.kl_constrained_lqr` takes them.

    Fm [B,T,dX,dX+dU], fv [B,T,dX], dyn_covar [B,T,dX,dX] (step T-1 repeats step T-2: there is
    no transition after the last step, and a copy keeps every entry well-defined), x0mu [B,dX],
    x0sigma [B,dX,dX] (diagonal: the per-coordinate variance of the initial states, floored at
    ``initial_state_var``).
    """

    Fm: Tensor
    fv: Tensor
    dyn_covar: Tensor
    x0mu: Tensor
    x0sigma: Tensor


def condition_joint_gaussian(pts: Tensor, n_in: int, prior: GMMPrior | None, reg: float
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """y ~ N(K a + k, S) from groups of joint points ``pts`` [B,S,N,D] = [a (n_in), y].

    The joint Gaussian of each group's N points — their mean and covariance, shrunk toward the
    prior's normal-inverse-Wishart estimate when ``prior`` is given — conditioned on a, with
    reg * I added to a's covariance (the reference code's ``gauss_fit_joint_prior``). Used for
    the dynamics (a = [x_t, u_t], y = x_{t+1}) and the policy's linearisation (a = x, y = u).
    Returns K [B,S,D-n_in,n_in], k [B,S,D-n_in], S [B,S,D-n_in,D-n_in] (symmetrised).
    """
    N = pts.shape[2]
    mean = pts.mean(2)
    diff = pts - mean[:, :, None, :]
    # [B,S,D,D] updated in place where the old value is not needed again: at the policy's
    # linearisation on NeuralNet (B=90, S=40, D=111) each such tensor is 355 MB, and every
    # fresh one costs an allocation and a pass; the values are the same to the bit
    sigma = (diff.mT @ diff).div_(N)
    if prior is not None:
        mu0, Phi, m, n0 = prior.eval(pts)
        dm = mean - mu0
        sigma.mul_(N).add_(Phi).add_((N * m / (N + m)) * dm[..., :, None] * dm[..., None, :])
        sigma.div_(N + n0)
    sigma = sigma.add(sigma.mT).mul_(0.5)
    eye = torch.eye(n_in, dtype=pts.dtype, device=pts.device)
    Saa = sigma[..., :n_in, :n_in] + reg * eye
    Say = sigma[..., :n_in, n_in:]
    L, info = torch.linalg.cholesky_ex(Saa)
    if bool((info == 0).all()):
        K = torch.cholesky_solve(Say, L).mT
    else:  # singular input covariance (reg = 0, no prior, N small): minimum-norm solution
        K = (torch.linalg.pinv(Saa, hermitian=True) @ Say).mT
    k = mean[..., n_in:] - (K @ mean[..., :n_in, None]).squeeze(-1)
    S = sigma[..., n_in:, n_in:] - K @ Say
    return K, k, 0.5 * (S + S.mT)


def fit_linear_gaussian(
    X: Tensor,
    U: Tensor,
    prior: GMMPrior | None = None,
    reg: float = 1e-6,
    *,
    initial_state_var: float = 1e-6,
    t_chunk: int | None = None,
) -> LinearGaussianDynamics:
    """Fit x_{t+1} ~ N(Fm[t] [x_t; u_t] + fv[t], dyn_covar[t]) for every condition and step.

    Args:
        X [B,N,T,dX], U [B,N,T,dU]: N sampled trajectories per condition.
        prior: a :class:`gps.prior.GMMPrior` (batch 1 or B) fitted on transitions, or None for the
            plain regularised maximum-likelihood fit (needs N > 1; well-posed only for
            N > dX + dU unless reg carries it).
        reg: ridge added as reg * I to the [x, u] block of the joint covariance (the reference GPS
            default is 1e-6; Li & Malik's optimiser experiments used 1e-3).
        initial_state_var: floor of the initial-state variances.
        t_chunk: time steps processed at once (bounds memory: B * t_chunk * D^2 entries); default
            all of them.
    """
    B, N, T, dX, dU = check_transitions(X, U)
    if prior is None and N < 2:
        raise ValueError(f"X has N={N} sample per condition; the fit needs N >= 2 or a prior")
    if not isinstance(reg, (int, float)) or reg < 0:
        raise ValueError(f"reg must be a float >= 0; got {reg!r}")
    if prior is not None:
        if not isinstance(prior, GMMPrior):
            raise TypeError(f"prior must be a GMMPrior or None; got {type(prior).__name__}")
        if (prior.dX, prior.dU) != (dX, dU) or prior.gmm.mu.shape[0] not in (1, B):
            raise ValueError(
                f"prior was fitted for dX={prior.dX}, dU={prior.dU}, batch "
                f"{prior.gmm.mu.shape[0]}; the data has dX={dX}, dU={dU}, B={B} (batch 1 or B)"
            )
    n = dX + dU
    dev, dt = X.device, X.dtype
    Fm = torch.empty(B, T, dX, n, dtype=dt, device=dev)
    fv = torch.empty(B, T, dX, dtype=dt, device=dev)
    dyn_covar = torch.empty(B, T, dX, dX, dtype=dt, device=dev)
    chunk = T - 1 if t_chunk is None else max(1, int(t_chunk))
    for t0 in range(0, T - 1, chunk):
        t1 = min(T - 1, t0 + chunk)
        # [B,S,N,D] points of steps t0..t1-1
        pts = torch.cat([X[:, :, t0:t1], U[:, :, t0:t1], X[:, :, t0 + 1:t1 + 1]], dim=-1)
        Fm[:, t0:t1], fv[:, t0:t1], dyn_covar[:, t0:t1] = condition_joint_gaussian(
            pts.transpose(1, 2), n, prior, reg)
    for out in (Fm, fv, dyn_covar):
        out[:, T - 1] = out[:, T - 2]
    x0 = X[:, :, 0]
    x0mu = x0.mean(1)
    var = x0.var(1, unbiased=False).clamp_min(initial_state_var)
    return LinearGaussianDynamics(Fm, fv, dyn_covar, x0mu, torch.diag_embed(var))
