"""The normal-inverse-Wishart prior for linear-Gaussian dynamics, built on a GMM over transitions.

Levine et al. (2016) fit a GMM to all observed transitions [x_t, u_t, x_{t+1}] and use it as a
prior for the per-time-step linear-Gaussian dynamics fit (:mod:`gps.dynamics`): for the N samples
at step t, the mixture moments under the samples' averaged cluster responsibilities give the prior
mean mu0 and scale matrix Phi of a normal-inverse-Wishart. The mixture itself is the plain batched
GMM of :mod:`gps.gmm`; this module holds what makes it a dynamics prior, and the check of the
transition tensors X [B,N,T,dX], U [B,N,T,dU] that the dynamics fit shares.

NIW strengths: the reference code uses m = 1 and n0 = (N_gmm - 2 - D) / N_gmm (times
``strength``); that n0 goes negative for small data sets, which can make the posterior
denominator N + n0 non-positive. Here m = n0 = ``strength`` (the reference's large-data limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gps.gmm import GMM, fit_gmm, gmm_log_obs, n_clusters_for
from optenv.distributed import Shard

__all__ = ["GMMPrior", "check_transitions"]


def check_transitions(X: object, U: object) -> tuple[int, int, int, int, int]:
    """Validate X [B,N,T,dX], U [B,N,T,dU]; returns B, N, T, dX, dU."""
    for name, x, dims in (("X", X, "[B,N,T,dX]"), ("U", U, "[B,N,T,dU]")):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {dims}; got {type(x).__name__}")
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} has dtype {x.dtype}; allowed: torch.float32 or torch.float64")
        if x.dim() != 4 or min(x.shape) < 1:
            raise ValueError(f"{name} must be a 4-D tensor {dims}; got shape {list(x.shape)}")
    assert isinstance(X, Tensor) and isinstance(U, Tensor)
    if X.shape[:3] != U.shape[:3]:
        raise ValueError(
            f"U must share B, N, T with X: X is {list(X.shape)} [B,N,T,dX], U is {list(U.shape)}"
        )
    if U.dtype != X.dtype or U.device != X.device:
        raise ValueError(
            f"U ({U.dtype}, {U.device}) must have the dtype and device of X ({X.dtype}, {X.device})"
        )
    B, N, T, dX = X.shape
    if T < 2:
        raise ValueError(f"X needs T >= 2 time steps to contain a transition; got T={T}")
    return B, N, T, dX, U.shape[3]



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
        shard: Shard | None = None,
    ) -> GMMPrior:
        """Fit the mixture to all transitions of X [B,N,T,dX], U [B,N,T,dU].

        Per condition (default, as the reference code) or ``shared`` across conditions (pooling
        helps when each condition has few samples). The number of clusters follows
        :func:`n_clusters_for`; ``max_clusters`` defaults to the 20 that Li & Malik used.
        ``init`` warm-starts EM from a previous prior or mixture (same number of clusters).
        ``shard``: the B conditions are this rank's share of a batch split across processes
        (per-condition mixtures only; :func:`gps.gmm.fit_gmm`).
        """
        B, N, T, dX, dU = check_transitions(X, U)
        if not isinstance(strength, (int, float)) or not strength > 0:
            raise ValueError(f"strength must be a float > 0; got {strength!r}")
        pts = torch.cat([X[:, :, :-1], U[:, :, :-1], X[:, :, 1:]], dim=-1)  # [B,N,T-1,D]
        pts = pts.reshape(B, N * (T - 1), 2 * dX + dU)
        if shared:
            pts = pts.reshape(1, B * N * (T - 1), -1)
        K = n_clusters_for(pts.shape[1], max_clusters, min_samples_per_cluster)
        start = init.gmm if isinstance(init, GMMPrior) else init
        gmm = fit_gmm(pts, K, init=start, generator=generator,
                      max_iter=max_iter, reg=reg, shard=None if shared else shard)
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
