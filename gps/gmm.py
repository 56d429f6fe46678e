"""Batched Gaussian mixture models fitted by EM: a plain GMM, nothing GPS-specific.

B mixtures (one per condition, or one shared) run EM in lock-step, each with its own convergence
mask, so every condition's mixture is exactly what its own EM would give (checked against the
numpy reference of the reference GPS code). :mod:`gps.prior` builds the dynamics prior on it.

Differences from the reference code, and why:

* Initial covariances: the reference uses ``(1/K) * scatter`` of the randomly assigned points,
  whose scale depends on N/K^2; here every cluster starts at the covariance of all the data (+ reg),
  with means from a random assignment, which is scale-free and never singular.
* Convergence: the reference compares ``|ll - prevll| < 1e-5 * prevll`` which never fires for a
  negative log-likelihood; here ``tol * |ll|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optenv.distributed import Shard
from optenv.validation import check_int

__all__ = ["GMM", "fit_gmm", "gmm_log_obs", "n_clusters_for"]


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


def _init(data: Tensor, K: int, generator: torch.Generator | None, reg: float,
          shard: Shard | None = None) -> GMM:
    """Means of a random assignment of points to clusters, covariance of all the data. With a
    ``shard``, the B data sets are this rank's share of a larger batch: the assignment is drawn
    for the whole batch and this rank's rows kept."""
    B, M, D = data.shape
    rows = B if shard is None else shard.total
    idx = torch.randint(0, K, (rows, M), generator=generator)
    idx = (idx if shard is None else shard.take(idx)).to(data.device)
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
    shard: Shard | None = None,
) -> GMM:
    """EM for B independent mixtures at once. data [B,M,D] (B data sets of M points).

    Args:
        n_clusters: K.
        init: starting mixture (warm start, as the reference code does across GPS iterations);
            ignored when its K differs from n_clusters. Otherwise a random assignment drawn from
            ``generator`` (a CPU ``torch.Generator``; seed it for reproducible fits).
        max_iter, tol: stop a mixture when its log-likelihood decreases or changes by less than
            tol*|ll| (masked: the others go on). ``max_iter=0`` returns the starting mixture
            itself (the bench starts the batched and the numpy EM from it).
        reg: added to every covariance (reg * I) after each M-step.
        shard: the B data sets are this rank's share (:class:`optenv.distributed.Shard`) of
            a batch split across processes: the random start is drawn for the whole batch, so
            each mixture is the one a single process fitting the whole batch gets, and the
            generator stays in step on every rank.
    """
    if not isinstance(data, Tensor) or data.dim() != 3 or data.dtype not in (torch.float32,
                                                                           torch.float64):
        got = (f"{type(data).__name__} {getattr(data, 'dtype', '')} "
               f"{list(getattr(data, 'shape', []))}")
        raise ValueError(f"data must be a float32/float64 tensor of shape [B,M,D]; got {got}")
    check_int("n_clusters", n_clusters, 1)
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data contains non-finite values; the GMM cannot be fitted")
    B, _M, D = data.shape
    if init is not None and init.mu.shape == (B, n_clusters, D):
        gmm = GMM(init.mu.to(data), init.sigma.to(data), init.logmass.to(data))
    else:
        gmm = _init(data, n_clusters, generator, reg, shard)
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
