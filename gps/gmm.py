"""Batched Gaussian mixture models (EM) and the normal-inverse-Wishart dynamics prior built on them.

Levine et al. (2016) fit a GMM to all observed transitions [x_t, u_t, x_{t+1}] and use it as a
prior for the per-time-step linear-Gaussian dynamics fit: for the N samples at step t, the mixture
moments under the samples' averaged cluster responsibilities give the prior mean mu0 and scale
matrix Phi of a normal-inverse-Wishart. The reference code runs one EM per condition in numpy with
a loop over clusters; here B mixtures (one per condition, or one shared) run EM in lock-step, each
with its own convergence mask, so every condition's mixture is exactly what its own EM would give
(checked against :func:`gps.reference.gmm_em_np`).

Differences from the reference code, and why:

* Initial covariances: the reference uses ``(1/K) * scatter`` of the randomly assigned points,
  whose scale depends on N/K^2; here every cluster starts at the covariance of all the data (+ reg),
  with means from a random assignment, which is scale-free and never singular.
* Convergence: the reference compares ``|ll - prevll| < 1e-5 * prevll`` which never fires for a
  negative log-likelihood; here ``tol * |ll|``.
* NIW strengths: the reference uses m = 1 and n0 = (N_gmm - 2 - D) / N_gmm (times ``strength``);
  that n0 goes negative for small data sets, which can make the posterior denominator N + n0
  non-positive. Here m = n0 = ``strength`` (the reference's large-data limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GMM", "GMMPrior", "fit_gmm", "gmm_log_obs", "n_clusters_for"]


@dataclass
class GMM:
    """B independent mixtures of K Gaussians in D dims: mu [B,K,D], sigma [B,K,D,D], logmass [B,K].

    ``iterations`` [B]: EM iterations each mixture ran.
    """

    mu: Tensor
    sigma: Tensor
    logmass: Tensor
    iterations: Tensor | None = None

    @property
    def n_clusters(self) -> int:
        return self.mu.shape[1]


def _stable_cholesky(sigma: Tensor) -> Tensor:
    """Cholesky factor, adding growing jitter to the (rare) matrices that are not PD numerically."""
    L, info = torch.linalg.cholesky_ex(sigma)
    if bool((info == 0).all()):
        return L
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
    scale = torch.diagonal(sigma, dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-12)
    jitter = 1e-10
    while True:
        fixed, info2 = torch.linalg.cholesky_ex(sigma + (jitter * scale)[..., None, None] * eye)
        L = torch.where((info != 0)[..., None, None], fixed, L)
        if bool((info2 == 0).all()) or jitter > 1.0:
            return L
        jitter *= 10.0


def gmm_log_obs(gmm: GMM, pts: Tensor) -> Tensor:
    """log(mass_k N(x; mu_k, sigma_k)) for points pts [B,P,D] under each mixture: [B,P,K].

    Loops over clusters (not points) so the intermediate stays [B,P,D].
    """
    _B, K, D = gmm.mu.shape
    L = _stable_cholesky(gmm.sigma)
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # [B,K]
    out = []
    for i in range(K):
        diff = (pts - gmm.mu[:, i, None, :]).mT  # [B,D,P]
        sol = torch.linalg.solve_triangular(L[:, i], diff, upper=False)
        out.append(-0.5 * (sol * sol).sum(-2) - half_logdet[:, i, None])
    logobs = torch.stack(out, dim=-1) - 0.5 * D * math.log(2 * math.pi)
    return logobs + gmm.logmass[:, None, :]


def _m_step(data: Tensor, logobs: Tensor, reg: float) -> tuple[Tensor, Tensor, Tensor]:
    """Responsibility-weighted masses, means and covariances (clusters of negligible mass are
    rebooted with uniform weights, as the reference code)."""
    _B, M, D = data.shape
    K = logobs.shape[-1]
    logw = logobs - torch.logsumexp(logobs, dim=-1, keepdim=True)  # [B,M,K]
    logmass = torch.logsumexp(logw, dim=1)
    logmass = logmass - torch.logsumexp(logmass, dim=-1, keepdim=True)
    w = torch.exp(logw - torch.logsumexp(logw, dim=1, keepdim=True))  # columns sum to 1
    small = torch.exp(logmass) < 1e-4 / K
    w = torch.where(small[:, None, :], torch.full_like(w, 1.0 / M), w)
    w = w / w.sum(1, keepdim=True)
    mu = w.mT @ data  # [B,K,D]
    eye = torch.eye(D, dtype=data.dtype, device=data.device)
    sig = []
    for i in range(K):
        diff = data - mu[:, i, None, :]
        s = (diff * w[:, :, i, None]).mT @ diff
        sig.append(0.5 * (s + s.mT) + reg * eye)
    return mu, torch.stack(sig, dim=1), logmass


def _init(data: Tensor, K: int, generator: torch.Generator | None, reg: float) -> GMM:
    """Means of a random assignment of points to clusters, covariance of all the data."""
    B, M, D = data.shape
    idx = torch.randint(0, K, (B, M), generator=generator).to(data.device)
    onehot = torch.nn.functional.one_hot(idx, K).to(data.dtype)  # [B,M,K]
    counts = onehot.sum(1)  # [B,K]
    mean_all = data.mean(1)  # [B,D]
    mu = (onehot.mT @ data) / counts.clamp_min(1.0)[..., None]
    mu = torch.where((counts > 0)[..., None], mu, mean_all[:, None, :])
    diff = data - mean_all[:, None, :]
    cov = diff.mT @ diff / M + reg * torch.eye(D, dtype=data.dtype, device=data.device)
    sigma = cov[:, None].expand(B, K, D, D).clone()
    logmass = torch.full((B, K), -math.log(K), dtype=data.dtype, device=data.device)
    return GMM(mu, sigma, logmass)


def fit_gmm(
    data: Tensor,
    n_clusters: int,
    *,
    init: GMM | None = None,
    generator: torch.Generator | None = None,
    max_iter: int = 100,
    tol: float = 1e-5,
    reg: float = 1e-6,
) -> GMM:
    """EM for B independent mixtures at once. data [B,M,D] (B data sets of M points).

    Args:
        n_clusters: K.
        init: starting mixture (warm start, as the reference code does across GPS iterations);
            ignored when its K differs from n_clusters. Otherwise a random assignment drawn from
            ``generator`` (a CPU ``torch.Generator``; seed it for reproducible fits).
        max_iter, tol: stop a mixture when its log-likelihood decreases or changes by less than
            tol*|ll| (masked: the others go on).
        reg: added to every covariance (reg * I) after each M-step.
    """
    if not isinstance(data, Tensor) or data.dim() != 3 or data.dtype not in (torch.float32,
                                                                           torch.float64):
        got = (f"{type(data).__name__} {getattr(data, 'dtype', '')} "
               f"{list(getattr(data, 'shape', []))}")
        raise ValueError(f"data must be a float32/float64 tensor of shape [B,M,D]; got {got}")
    if not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters must be an int >= 1; got {n_clusters!r}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data contains non-finite values; the GMM cannot be fitted")
    B, _M, D = data.shape
    if init is not None and init.mu.shape == (B, n_clusters, D):
        gmm = GMM(init.mu.to(data), init.sigma.to(data), init.logmass.to(data))
    else:
        gmm = _init(data, n_clusters, generator, reg)
    mu, sigma, logmass = gmm.mu.clone(), gmm.sigma.clone(), gmm.logmass.clone()
    prev = torch.full((B,), -math.inf, dtype=data.dtype, device=data.device)
    iters = torch.zeros(B, dtype=torch.int64, device=data.device)
    # Only the mixtures still running are computed: EM's iteration counts vary a lot between
    # data sets (measured on GPS's per-condition fits: median 5-7, maximum 30), so a masked
    # full-batch step would cost the slowest mixture's count for all of them.
    idx = torch.arange(B, device=data.device)
    for _ in range(max_iter):
        sub = GMM(mu[idx], sigma[idx], logmass[idx])
        logobs = gmm_log_obs(sub, data[idx])
        ll = torch.logsumexp(logobs, dim=-1).sum(-1)
        stop = (ll < prev[idx]) | ((ll - prev[idx]).abs() < tol * ll.abs())
        keep = ~stop
        if not bool(keep.any()):
            break
        idx, logobs, ll = idx[keep], logobs[keep], ll[keep]
        prev[idx] = ll
        mu[idx], sigma[idx], logmass[idx] = _m_step(data[idx], logobs, reg)
        iters[idx] += 1
    return GMM(mu, sigma, logmass, iters)


def n_clusters_for(n_points: int, max_clusters: int = 20, min_samples_per_cluster: int = 20) -> int:
    """The reference code's rule: max(2, min(max_clusters, floor(n_points / min_samples)))."""
    return int(max(2, min(max_clusters, n_points // min_samples_per_cluster)))


@dataclass
class GMMPrior:
    """Normal-inverse-Wishart prior for linear-Gaussian dynamics, from a GMM over transitions.

    ``gmm`` has batch 1 (shared by all conditions) or B (one per condition); dX, dU name the
    blocks of the D = 2 dX + dU dimensional points [x_t, u_t, x_{t+1}]; ``strength`` scales the
    prior's pseudo-counts (m = n0 = strength).
    """

    gmm: GMM
    dX: int
    dU: int
    strength: float = 1.0

    @classmethod
    def fit(
        cls,
        X: Tensor,
        U: Tensor,
        *,
        shared: bool = False,
        max_clusters: int = 20,
        min_samples_per_cluster: int = 20,
        strength: float = 1.0,
        init: GMMPrior | GMM | None = None,
        generator: torch.Generator | None = None,
        max_iter: int = 100,
        reg: float = 1e-6,
    ) -> GMMPrior:
        """Fit the mixture to all transitions of X [B,N,T,dX], U [B,N,T,dU].

        Per condition (default, as the reference code) or ``shared`` across conditions (pooling
        helps when each condition has few samples). The number of clusters follows
        :func:`n_clusters_for`; ``max_clusters`` defaults to the 20 that Li & Malik used.
        ``init`` warm-starts EM from a previous prior or mixture (same number of clusters).
        """
        from gps.dynamics import _check_xu  # local: gps.dynamics imports this module

        B, N, T, dX, dU = _check_xu(X, U)
        if not isinstance(strength, (int, float)) or not strength > 0:
            raise ValueError(f"strength must be a float > 0; got {strength!r}")
        pts = torch.cat([X[:, :, :-1], U[:, :, :-1], X[:, :, 1:]], dim=-1)  # [B,N,T-1,D]
        pts = pts.reshape(B, N * (T - 1), 2 * dX + dU)
        if shared:
            pts = pts.reshape(1, B * N * (T - 1), -1)
        K = n_clusters_for(pts.shape[1], max_clusters, min_samples_per_cluster)
        start = init.gmm if isinstance(init, GMMPrior) else init
        gmm = fit_gmm(pts, K, init=start, generator=generator,
                      max_iter=max_iter, reg=reg)
        return cls(gmm, dX, dU, float(strength))

    def eval(self, pts: Tensor) -> tuple[Tensor, Tensor, float, float]:
        """NIW parameters for groups of points pts [B,S,N,D] (S groups, e.g. time steps, of N).

        Returns mu0 [B,S,D], Phi [B,S,D,D] (= m * mixture covariance), m, n0. Cluster weights:
        each point's posterior responsibilities averaged over its group.
        """
        B, S, N, D = pts.shape
        gmm = self.gmm
        if gmm.mu.shape[0] == 1 and B > 1:
            gmm = GMM(gmm.mu.expand(B, -1, -1), gmm.sigma.expand(B, -1, -1, -1),
                      gmm.logmass.expand(B, -1))
        logobs = gmm_log_obs(gmm, pts.reshape(B, S * N, D)).reshape(B, S, N, -1)
        logw = logobs - torch.logsumexp(logobs, dim=-1, keepdim=True)
        w = torch.exp(torch.logsumexp(logw, dim=2) - math.log(N))  # [B,S,K]
        mu0 = w @ gmm.mu  # [B,S,D]
        second = gmm.sigma + gmm.mu[..., :, None] * gmm.mu[..., None, :]  # [B,K,D,D]
        Phi = (w @ second.reshape(B, -1, D * D)).reshape(B, S, D, D)
        Phi.sub_(mu0[..., :, None] * mu0[..., None, :])  # in place: [B,S,D,D] can be GBs
        Phi = Phi.add(Phi.mT).mul_(0.5)
        m = n0 = self.strength
        return mu0, Phi.mul_(m), m, n0
