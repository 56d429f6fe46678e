"""Slow, per-condition numpy implementation of the GPS numerics: the test oracle and the baseline.

It lives in ``benchmarks/``, outside the installed packages, so the wheel ships no test oracle;
the tests import it as :mod:`benchmarks.reference` (pytest puts the repository root on the path).

Written straight from the equations, one condition and one time step at a time, in the structure of
the reference GPS code (``traj_opt_lqr_python.py``, ``algorithm_badmm.compute_costs``,
``dynamics_lr_prior.py``, ``gmm.py``). It is deliberately *not* shared with the batched torch code
in :mod:`gps.lqr`, :mod:`gps.dynamics` and :mod:`gps.gmm`: the two are independent derivations, so
agreement to 1e-8 in float64 is evidence that both are right. Some of the algebra differs on
purpose (this file builds the KL from the joint state-action quadratic forms of the reference code,
the batched code from the conditional-Gaussian form; this file propagates the joint covariance,
the batched code the closed-loop state covariance). It is also the "per-condition loop" that
``python -m benchmarks.gps_bench`` times the batched version against.

Where the reference code has a bug that the design notes call out, this file follows the fixed
equations, like the batched code: regularisation ``reg * I`` rather than ``reg`` added to every
entry, and failures reported as a status rather than raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

# Status codes, identical in meaning to gps.lqr.LQRStatus (kept as plain ints here so that the
# oracle does not import the code it checks).
CONVERGED = 0
MAX_ITER_KL_BELOW = 1
MAX_ITER_KL_ABOVE = 2
PD_FAILURE = 3
NONFINITE_INPUT = 4
BAD_PREV_COVAR = 5
BAD_POLICY_COVAR = 6
KL_BOUND_INACTIVE = 7


@dataclass
class RefLQRResult:
    """Result of :func:`kl_constrained_lqr_np` for one condition."""

    K: np.ndarray
    k: np.ndarray
    pol_covar: np.ndarray
    eta: float
    kl: float
    status: int
    iterations: int


def _gaussian_terms(K: np.ndarray, k: np.ndarray, prec: np.ndarray) -> tuple[np.ndarray, ...]:
    """Quadratic form of -log N(u; Kx + k, prec^-1) in z = [x; u] (constants dropped): M, v, c."""
    M = np.vstack([np.hstack([K.T @ prec @ K, -K.T @ prec]), np.hstack([-prec @ K, prec])])
    v = np.concatenate([K.T @ prec @ k, -prec @ k])
    c = 0.5 * k @ prec @ k
    return M, v, c


def _inv_spd(A: np.ndarray) -> np.ndarray:
    U = sla.cholesky(A)
    return sla.solve_triangular(U, sla.solve_triangular(U.T, np.eye(A.shape[0]), lower=True))


def lqr_backward_np(
    Fm: np.ndarray,
    fv: np.ndarray,
    Cm: np.ndarray,
    cv: np.ndarray,
    K_prev: np.ndarray,
    k_prev: np.ndarray,
    pol_covar_prev: np.ndarray,
    eta: float,
    policy: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    lagrange: tuple[np.ndarray, np.ndarray] | None = None,
    max_ent: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """One backward Riccati pass for one condition at a fixed eta.

    Cost per step (BADMM form of the reference code, which reduces to plain trajectory
    optimisation / mirror descent when ``policy`` and ``lagrange`` are None)::

        fCm_t = (Cm_t - lagrange shift + eta * M_prev_t + nu_t * M_pol_t) / (eta + nu_t + max_ent)

    and the value function of step t+1 is rescaled by w_{t+1} / w_t, w_t = eta + nu_t + max_ent.

    Returns K [T,dU,dX], k [T,dU], pol_covar [T,dU,dU], inv_pol_covar, ok (False when some Q_uu
    is not positive definite).
    """
    T, dX = fv.shape
    dU = k_prev.shape[1]
    ix, iu = slice(0, dX), slice(dX, dX + dU)
    Cm = Cm.copy()
    cv = cv.copy()
    if lagrange is not None:
        lam_K, lam_k = lagrange
        cv[:, iu] -= lam_k
        Cm[:, iu, ix] -= lam_K
        Cm[:, ix, iu] -= np.transpose(lam_K, (0, 2, 1))
    nu = np.zeros(T) if policy is None else policy[3]
    K = np.zeros((T, dU, dX))
    k = np.zeros((T, dU))
    pol_covar = np.zeros((T, dU, dU))
    inv_pol_covar = np.zeros((T, dU, dU))
    Vxx = np.zeros((dX, dX))
    Vx = np.zeros(dX)
    for t in range(T - 1, -1, -1):
        w = eta + nu[t] + max_ent
        M, v, _ = _gaussian_terms(K_prev[t], k_prev[t], _inv_spd(pol_covar_prev[t]))
        Qtt = (Cm[t] + eta * M) / w
        Qt = (cv[t] + eta * v) / w
        if policy is not None:
            Mp, vp, _ = _gaussian_terms(policy[0][t], policy[1][t], _inv_spd(policy[2][t]))
            Qtt = Qtt + nu[t] * Mp / w
            Qt = Qt + nu[t] * vp / w
        if t < T - 1:
            mult = (eta + nu[t + 1] + max_ent) / w
            Qtt = Qtt + mult * Fm[t].T @ Vxx @ Fm[t]
            Qt = Qt + mult * Fm[t].T @ (Vx + Vxx @ fv[t])
        Qtt = 0.5 * (Qtt + Qtt.T)
        try:
            U = sla.cholesky(Qtt[iu, iu])
        except np.linalg.LinAlgError:
            return K, k, pol_covar, inv_pol_covar, False
        L = U.T
        inv_pol_covar[t] = Qtt[iu, iu]
        pol_covar[t] = sla.solve_triangular(U, sla.solve_triangular(L, np.eye(dU), lower=True))
        k[t] = -sla.solve_triangular(U, sla.solve_triangular(L, Qt[iu], lower=True))
        K[t] = -sla.solve_triangular(U, sla.solve_triangular(L, Qtt[iu, ix], lower=True))
        Vxx = Qtt[ix, ix] + Qtt[ix, iu] @ K[t]
        Vx = Qt[ix] + Qtt[ix, iu] @ k[t]
        Vxx = 0.5 * (Vxx + Vxx.T)
    return K, k, pol_covar, inv_pol_covar, True


def lqr_forward_np(
    Fm: np.ndarray,
    fv: np.ndarray,
    dyn_covar: np.ndarray,
    x0mu: np.ndarray,
    x0sigma: np.ndarray,
    K: np.ndarray,
    k: np.ndarray,
    pol_covar: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """State-action marginals mu [T, dX+dU], sigma [T, dX+dU, dX+dU] under the controller."""
    T, dU, dX = K.shape
    ix = slice(0, dX)
    mu = np.zeros((T, dX + dU))
    sigma = np.zeros((T, dX + dU, dX + dU))
    sigma[0, ix, ix] = x0sigma
    mu[0, ix] = x0mu
    for t in range(T):
        Sxx = sigma[t, ix, ix]
        sigma[t] = np.vstack([
            np.hstack([Sxx, Sxx @ K[t].T]),
            np.hstack([K[t] @ Sxx, K[t] @ Sxx @ K[t].T + pol_covar[t]]),
        ])
        mu[t] = np.concatenate([mu[t, ix], K[t] @ mu[t, ix] + k[t]])
        if t < T - 1:
            sigma[t + 1, ix, ix] = Fm[t] @ sigma[t] @ Fm[t].T + dyn_covar[t]
            mu[t + 1, ix] = Fm[t] @ mu[t] + fv[t]
    return mu, sigma


def traj_kl_np(
    mu: np.ndarray,
    sigma: np.ndarray,
    K: np.ndarray,
    k: np.ndarray,
    pol_covar: np.ndarray,
    K_prev: np.ndarray,
    k_prev: np.ndarray,
    pol_covar_prev: np.ndarray,
) -> np.ndarray:
    """Per-step KL(new || prev) under the new marginals, as E_p[log p_new(u|x) - log p_prev(u|x)].

    Built from the joint quadratic forms, exactly as the reference code's ``traj_distr_kl``,
    including its clamp of each step at 0.
    """
    T = mu.shape[0]
    out = np.zeros(T)
    for t in range(T):
        prec_new, prec_prev = _inv_spd(pol_covar[t]), _inv_spd(pol_covar_prev[t])
        logdet_new = 2.0 * np.sum(np.log(np.diag(sla.cholesky(pol_covar[t]))))
        logdet_prev = 2.0 * np.sum(np.log(np.diag(sla.cholesky(pol_covar_prev[t]))))
        M_new, v_new, c_new = _gaussian_terms(K[t], k[t], prec_new)
        M_prev, v_prev, c_prev = _gaussian_terms(K_prev[t], k_prev[t], prec_prev)
        dM, dv = M_new - M_prev, v_new - v_prev
        out[t] = max(
            0.0,
            -0.5 * mu[t] @ dM @ mu[t] - mu[t] @ dv - c_new + c_prev
            - 0.5 * np.sum(sigma[t] * dM) - 0.5 * logdet_new + 0.5 * logdet_prev,
        )
    return out


def _is_spd(A: np.ndarray) -> bool:
    try:
        sla.cholesky(A)
    except np.linalg.LinAlgError:
        return False
    return True


def kl_constrained_lqr_np(
    Fm: np.ndarray,
    fv: np.ndarray,
    dyn_covar: np.ndarray,
    x0mu: np.ndarray,
    x0sigma: np.ndarray,
    Cm: np.ndarray,
    cv: np.ndarray,
    K_prev: np.ndarray,
    k_prev: np.ndarray,
    pol_covar_prev: np.ndarray,
    kl_step: float,
    eta0: float = 1.0,
    policy: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    lagrange: tuple[np.ndarray, np.ndarray] | None = None,
    max_ent: float = 0.0,
    min_eta: float = 1e-8,
    max_eta: float = 1e16,
    max_iter: int = 50,
    tol: float = 0.1,
    del0: float = 1e-4,
    stop_when_inactive: bool = True,
) -> RefLQRResult:
    """The reference code's dual (eta) search for one condition, reporting failures as a status.

    Loop: backward pass at eta (on a non-PD Q_uu retry at eta0 + delta, delta doubling from del0;
    give up with PD_FAILURE once that reaches max_eta), forward pass, KL; stop when
    |KL - kl_step*T| < tol*kl_step*T; otherwise move eta within the bracket [min_eta, max_eta]
    geometrically, each move capped at x/÷10. ``eta`` of the result is the eta that produced the
    returned controller (the reference code returns the next, untried, eta). With
    ``stop_when_inactive`` (not in the reference code; gps.lqr's default) a KL below the bound
    at eta <= 2*min_eta stops the search with KL_BOUND_INACTIVE.
    """
    T = K_prev.shape[0]
    target = kl_step * T
    arrays = [Fm, fv, dyn_covar, x0mu, x0sigma, Cm, cv, K_prev, k_prev, pol_covar_prev]
    arrays += list(policy or ()) + list(lagrange or ())
    fallback = RefLQRResult(K_prev.copy(), k_prev.copy(), pol_covar_prev.copy(), max_eta, 0.0,
                            NONFINITE_INPUT, 0)
    if not all(np.all(np.isfinite(a)) for a in arrays):
        return fallback
    if not all(_is_spd(pol_covar_prev[t]) for t in range(T)):
        fallback.status = BAD_PREV_COVAR
        return fallback
    if policy is not None and not all(_is_spd(policy[2][t]) for t in range(T)):
        fallback.status = BAD_POLICY_COVAR
        return fallback
    lo, hi = min_eta, max_eta
    eta = eta0
    best = fallback
    for itr in range(max_iter):
        base, delta = eta, del0
        while True:
            K, k, S, _, ok = lqr_backward_np(Fm, fv, Cm, cv, K_prev, k_prev, pol_covar_prev, eta,
                                             policy, lagrange, max_ent)
            if ok and np.all(np.isfinite(K)) and np.all(np.isfinite(k)):
                mu, sigma = lqr_forward_np(Fm, fv, dyn_covar, x0mu, x0sigma, K, k, S)
                kl = float(np.sum(traj_kl_np(mu, sigma, K, k, S, K_prev, k_prev, pol_covar_prev)))
                if np.isfinite(kl):
                    break
            eta = base + delta
            delta *= 2.0
            if eta >= max_eta:
                best.status = PD_FAILURE
                best.iterations = itr
                return best
        best = RefLQRResult(K, k, S, eta, kl, CONVERGED, itr + 1)
        con = kl - target
        if abs(con) < tol * target:
            return best
        if stop_when_inactive and con < 0 and eta <= 2.0 * min_eta:
            best.status = KL_BOUND_INACTIVE
            return best
        if itr == max_iter - 1:
            best.status = MAX_ITER_KL_BELOW if con < 0 else MAX_ITER_KL_ABOVE
            return best
        if con < 0:  # eta too big
            hi = eta
            eta = max(np.sqrt(lo * hi), 0.1 * hi)
        else:  # eta too small
            lo = eta
            eta = min(np.sqrt(lo * hi), 10.0 * lo)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- GMM and dynamics


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m


def gmm_logobs_np(data: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                  logmass: np.ndarray) -> np.ndarray:
    """log(mass_k N(x_i; mu_k, sigma_k)) for data [N, D], one cluster at a time: [N, K]."""
    N, D = data.shape
    K = mu.shape[0]
    out = -0.5 * np.ones((N, K)) * D * np.log(2 * np.pi)
    for i in range(K):
        L = sla.cholesky(sigma[i], lower=True)
        out[:, i] -= np.sum(np.log(np.diag(L)))
        soln = sla.solve_triangular(L, (data - mu[i]).T, lower=True)
        out[:, i] -= 0.5 * np.sum(soln**2, axis=0)
    return out + logmass[None, :]


def gmm_em_np(data: np.ndarray, mu: np.ndarray, sigma: np.ndarray, logmass: np.ndarray,
              max_iter: int = 100, tol: float = 1e-5,
              reg: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for one GMM from the given initial parameters, as the reference code's ``GMM.update``.

    Stops when the log-likelihood decreases or changes by less than tol*|ll| (the reference code
    compares with tol*ll, which never fires for a negative ll); reboots clusters whose mass falls
    under 1e-4/K by giving them uniform responsibilities.
    """
    N, D = data.shape
    K = mu.shape[0]
    mu, sigma, logmass = mu.copy(), sigma.copy(), logmass.copy()
    prevll = -np.inf
    for _ in range(max_iter):
        logobs = gmm_logobs_np(data, mu, sigma, logmass)
        ll = float(np.sum(_logsumexp(logobs, axis=1)))
        if ll < prevll or abs(ll - prevll) < tol * abs(ll):
            break
        prevll = ll
        logw = logobs - _logsumexp(logobs, axis=1)
        logwn = logw - _logsumexp(logw, axis=0)
        w = np.exp(logwn)
        logmass = _logsumexp(logw, axis=0)[0]
        logmass = logmass - _logsumexp(logmass, axis=0)
        w[:, np.exp(logmass) < 1e-4 / K] = 1.0 / N
        for i in range(K):
            mu[i] = w[:, i] @ data / np.sum(w[:, i])
            diff = data - mu[i]
            s = (diff * w[:, i:i + 1]).T @ diff / np.sum(w[:, i])
            sigma[i] = 0.5 * (s + s.T) + reg * np.eye(D)
    return mu, sigma, logmass


def niw_prior_np(pts: np.ndarray, mu: np.ndarray, sigma: np.ndarray, logmass: np.ndarray,
                 strength: float = 1.0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Normal-inverse-Wishart prior (mu0, Phi, m, n0) for the points ``pts`` [N, D] from a GMM.

    Cluster weights: the posterior responsibilities averaged over the points; mu0, Phi/m: the
    moments of the resulting mixture; m = strength, n0 = strength (see gps.dynamics for why).
    """
    logobs = gmm_logobs_np(pts, mu, sigma, logmass)
    logw = logobs - _logsumexp(logobs, axis=1)
    w = np.exp(_logsumexp(logw, axis=0)[0] - np.log(pts.shape[0]))
    mu0 = w @ mu
    Phi = np.zeros((mu.shape[1],) * 2)
    for i in range(mu.shape[0]):
        d = mu[i] - mu0
        Phi += w[i] * (sigma[i] + np.outer(d, d))
    return mu0, Phi * strength, strength, strength


def fit_linear_gaussian_np(
    X: np.ndarray,
    U: np.ndarray,
    reg: float = 1e-6,
    gmm: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step linear-Gaussian fit for one condition (X [N,T,dX], U [N,T,dU]), as
    ``DynamicsLRPrior.fit`` with ``reg * I``; the last step copies step T-2."""
    N, T, dX = X.shape
    dU = U.shape[2]
    n = dX + dU
    Fm = np.zeros((T, dX, n))
    fv = np.zeros((T, dX))
    dyn_covar = np.zeros((T, dX, dX))
    for t in range(T - 1):
        Ys = np.concatenate([X[:, t], U[:, t], X[:, t + 1]], axis=1)
        mun = Ys.mean(axis=0)
        diff = Ys - mun
        empsig = diff.T @ diff / N
        if gmm is None:
            sigma = empsig
        else:
            mu0, Phi, m, n0 = niw_prior_np(Ys, *gmm, strength=strength)
            dm = mun - mu0
            sigma = (N * empsig + Phi + (N * m) / (N + m) * np.outer(dm, dm)) / (N + n0)
        sigma = 0.5 * (sigma + sigma.T)
        sigma[:n, :n] += reg * np.eye(n)
        fd = np.linalg.solve(sigma[:n, :n], sigma[:n, n:]).T
        Fm[t] = fd
        fv[t] = mun[n:] - fd @ mun[:n]
        dc = sigma[n:, n:] - fd @ sigma[:n, :n] @ fd.T
        dyn_covar[t] = 0.5 * (dc + dc.T)
    Fm[T - 1], fv[T - 1], dyn_covar[T - 1] = Fm[T - 2], fv[T - 2], dyn_covar[T - 2]
    return Fm, fv, dyn_covar
