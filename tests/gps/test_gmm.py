"""Tests of the batched EM mixture and the normal-inverse-Wishart prior (gps.gmm)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from benchmarks import reference
from benchmarks.gps_bench import random_linear_gaussian_data
from gps.gmm import GMM, fit_gmm, gmm_log_obs, n_clusters_for
from gps.prior import GMMPrior


def _blobs(B: int, per: int, centres: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    K, D = centres.shape
    pts = centres.repeat_interleave(per, 0) + 0.3 * torch.randn(B, K * per, D, generator=g,
                                                                dtype=torch.float64)
    return pts[:, torch.randperm(K * per, generator=g)]


def test_log_obs_matches_scipy_densities():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
    gmm = fit_gmm(data, 3, generator=g, max_iter=0)
    gmm.logmass = torch.log_softmax(torch.randn(2, 3, generator=g, dtype=torch.float64), -1)
    out = gmm_log_obs(gmm, data)
    for b in range(2):
        for i in range(3):
            want = multivariate_normal(gmm.mu[b, i].numpy(), gmm.sigma[b, i].numpy()).logpdf(
                data[b].numpy()) + float(gmm.logmass[b, i])
            np.testing.assert_allclose(out[b, :, i].numpy(), want, rtol=1e-12)


def test_batched_em_matches_per_condition_reference_from_the_same_start():
    X, U, _, _ = random_linear_gaussian_data(3, 6, 10, 3, 2, seed=1)
    pts = torch.cat([X[:, :, :-1], U[:, :, :-1], X[:, :, 1:]], -1).reshape(3, -1, 8)
    init = fit_gmm(pts, 4, generator=torch.Generator().manual_seed(2), max_iter=0)
    gmm = fit_gmm(pts, 4, init=init, max_iter=25)
    for b in range(3):
        mu, sigma, logmass = reference.gmm_em_np(pts[b].numpy(), init.mu[b].numpy(),
                                                 init.sigma[b].numpy(), init.logmass[b].numpy(),
                                                 max_iter=25)
        np.testing.assert_allclose(gmm.mu[b].numpy(), mu, atol=1e-9)
        np.testing.assert_allclose(gmm.sigma[b].numpy(), sigma, atol=1e-9)
        np.testing.assert_allclose(gmm.logmass[b].numpy(), logmass, atol=1e-9)


def test_each_mixture_in_a_batch_is_what_it_would_be_alone():
    """Converged mixtures are masked while the others keep iterating."""
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    easy = _blobs(1, 40, centres, seed=3)
    hard = torch.randn(1, 120, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    data = torch.cat([easy, hard])
    init = fit_gmm(data, 3, generator=torch.Generator().manual_seed(5), max_iter=0)
    both = fit_gmm(data, 3, init=init)
    assert both.iterations is not None and both.iterations[0] != both.iterations[1]
    for b in range(2):
        alone = fit_gmm(data[b:b + 1], 3, init=GMM(init.mu[b:b + 1], init.sigma[b:b + 1],
                                                  init.logmass[b:b + 1]))
        torch.testing.assert_close(both.mu[b:b + 1], alone.mu, rtol=0, atol=1e-12)
        assert both.iterations[b] == alone.iterations[0]  # type: ignore[index]


def test_em_recovers_well_separated_clusters():
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]], dtype=torch.float64)
    data = _blobs(2, 60, centres, seed=6)
    gmm = fit_gmm(data, 3, generator=torch.Generator().manual_seed(7))
    for b in range(2):
        found = gmm.mu[b][torch.argsort(gmm.mu[b, :, 0] * 10 + gmm.mu[b, :, 1])]
        want = centres[torch.argsort(centres[:, 0] * 10 + centres[:, 1])]
        torch.testing.assert_close(found, want, rtol=0, atol=0.15)
        torch.testing.assert_close(gmm.logmass[b].exp(), torch.full((3,), 1 / 3,
                                   dtype=torch.float64), rtol=0, atol=0.02)


def test_seeded_fit_is_reproducible():
    data = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    a = fit_gmm(data, 4, generator=torch.Generator().manual_seed(9))
    b = fit_gmm(data, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.mu, b.mu) and torch.equal(a.sigma, b.sigma)


def test_niw_prior_matches_reference_moments():
    X, U, _, _ = random_linear_gaussian_data(2, 5, 8, 3, 2, seed=10)
    prior = GMMPrior.fit(X, U, min_samples_per_cluster=10, strength=2.0,
                         generator=torch.Generator().manual_seed(11))
    pts = torch.cat([X[:, :, :-1], U[:, :, :-1], X[:, :, 1:]], -1).transpose(1, 2)
    mu0, Phi, m, n0 = prior.eval(pts)
    assert (m, n0) == (2.0, 2.0)
    for b in range(2):
        g = (prior.gmm.mu[b].numpy(), prior.gmm.sigma[b].numpy(), prior.gmm.logmass[b].numpy())
        for t in range(7):
            mu0_r, Phi_r, _, _ = reference.niw_prior_np(pts[b, t].numpy(), *g, strength=2.0)
            np.testing.assert_allclose(mu0[b, t].numpy(), mu0_r, atol=1e-10)
            np.testing.assert_allclose(Phi[b, t].numpy(), Phi_r, atol=1e-10)


def test_cluster_count_follows_the_reference_rule():
    assert n_clusters_for(10) == 2
    assert n_clusters_for(200) == 10
    assert n_clusters_for(10_000) == 20
    assert n_clusters_for(10_000, max_clusters=50, min_samples_per_cluster=40) == 50


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (torch.zeros(10, 3, dtype=torch.float64), ["data", "[B,M,D]", "[10, 3]"]),
        (torch.zeros(1, 10, 3, dtype=torch.int64), ["data", "int64"]),
        (torch.full((1, 10, 3), math.nan, dtype=torch.float64), ["non-finite"]),
    ],
)
def test_invalid_data_raises_value_error(data, words):
    with pytest.raises(ValueError) as info:
        fit_gmm(data, 2)
    for w in words:
        assert w in str(info.value)
