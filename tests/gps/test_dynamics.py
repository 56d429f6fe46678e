"""Tests of the batched linear-Gaussian dynamics fit with a GMM prior (gps.dynamics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import reference
from benchmarks.gps_bench import random_linear_gaussian_data
from gps.dynamics import fit_linear_gaussian
from gps.prior import GMMPrior


def test_recovers_known_linear_gaussian_dynamics_from_200_samples():
    noise = 0.05
    X, U, F_true, f_true = random_linear_gaussian_data(2, 200, 6, 4, 2, seed=0, noise=noise)
    dyn = fit_linear_gaussian(X, U)
    assert dyn.Fm.shape == (2, 6, 4, 6) and dyn.dyn_covar.shape == (2, 6, 4, 4)
    err_F = (dyn.Fm - F_true[:, None]).abs().max()
    err_f = (dyn.fv - f_true[:, None]).abs().max()
    assert err_F < 0.03 and err_f < 0.03
    eye = torch.eye(4, dtype=torch.float64)
    # each step's covariance is a 200-sample estimate (entries within ~0.1 relative); their
    # average over conditions and steps must sit on noise^2 I
    torch.testing.assert_close(dyn.dyn_covar, noise**2 * eye.expand(2, 6, 4, 4), rtol=0,
                               atol=0.6 * noise**2)
    torch.testing.assert_close(dyn.dyn_covar.mean((0, 1)), noise**2 * eye, rtol=0,
                               atol=0.1 * noise**2)


def test_well_posed_with_5_samples_when_a_gmm_prior_carries_it():
    dX, dU = 8, 2  # N = 5 < dX: the empirical joint covariance has rank 4 in 18 dimensions
    X, U, F_true, _ = random_linear_gaussian_data(2, 5, 30, dX, dU, seed=1)
    prior = GMMPrior.fit(X, U, generator=torch.Generator().manual_seed(2), strength=5.0)
    dyn = fit_linear_gaussian(X, U, prior)
    plain = fit_linear_gaussian(X, U)
    for x in (dyn.Fm, dyn.fv, dyn.dyn_covar):
        assert bool(torch.isfinite(x).all())
    assert bool((torch.linalg.eigvalsh(dyn.dyn_covar) > 0).all())
    # without the prior the fit interpolates the 5 samples: a singular residual covariance
    assert float(torch.linalg.eigvalsh(plain.dyn_covar).min()) < 1e-10
    err_prior = (dyn.Fm - F_true[:, None]).abs().mean()
    err_plain = (plain.Fm - F_true[:, None]).abs().mean()
    assert err_prior < 0.5 * err_plain
    assert err_prior < 0.1


def test_fit_with_prior_matches_per_condition_reference():
    X, U, _, _ = random_linear_gaussian_data(3, 5, 9, 4, 2, seed=3)
    prior = GMMPrior.fit(X, U, min_samples_per_cluster=10,
                         generator=torch.Generator().manual_seed(4))
    dyn = fit_linear_gaussian(X, U, prior, reg=1e-3)
    for b in range(3):
        g = (prior.gmm.mu[b].numpy(), prior.gmm.sigma[b].numpy(), prior.gmm.logmass[b].numpy())
        Fm, fv, dc = reference.fit_linear_gaussian_np(X[b].numpy(), U[b].numpy(), 1e-3, g)
        np.testing.assert_allclose(dyn.Fm[b].numpy(), Fm, atol=1e-10)
        np.testing.assert_allclose(dyn.fv[b].numpy(), fv, atol=1e-10)
        np.testing.assert_allclose(dyn.dyn_covar[b].numpy(), dc, atol=1e-10)


def test_regularisation_is_reg_times_identity_on_the_state_action_block():
    X, U, _, _ = random_linear_gaussian_data(1, 50, 3, 3, 1, seed=5)
    reg = 0.5
    dyn = fit_linear_gaussian(X, U, reg=reg)
    xu = torch.cat([X[0, :, 0], U[0, :, 0]], -1)
    y = X[0, :, 1]
    xc, yc = xu - xu.mean(0), y - y.mean(0)
    Sxx = xc.T @ xc / 50 + reg * torch.eye(4, dtype=torch.float64)
    want = torch.linalg.solve(Sxx, xc.T @ yc / 50).T
    torch.testing.assert_close(dyn.Fm[0, 0], want, rtol=0, atol=1e-12)


def test_shared_prior_serves_every_condition():
    X, U, _, _ = random_linear_gaussian_data(3, 4, 8, 3, 2, seed=6)
    shared = GMMPrior.fit(X, U, shared=True, generator=torch.Generator().manual_seed(7))
    assert shared.gmm.mu.shape[0] == 1
    dyn = fit_linear_gaussian(X, U, shared)
    for b in range(3):
        one = fit_linear_gaussian(X[b:b + 1], U[b:b + 1], shared)
        torch.testing.assert_close(dyn.Fm[b:b + 1], one.Fm, rtol=0, atol=1e-12)


def test_time_chunking_does_not_change_the_fit():
    X, U, _, _ = random_linear_gaussian_data(2, 6, 9, 3, 2, seed=8)
    prior = GMMPrior.fit(X, U, generator=torch.Generator().manual_seed(9))
    a = fit_linear_gaussian(X, U, prior)
    b = fit_linear_gaussian(X, U, prior, t_chunk=3)
    torch.testing.assert_close(a.Fm, b.Fm, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.dyn_covar, b.dyn_covar, rtol=0, atol=1e-12)


def test_initial_state_and_last_step_are_filled():
    X, U, _, _ = random_linear_gaussian_data(2, 10, 5, 3, 1, seed=10)
    X[1, :, 0, 2] = 0.25  # a constant coordinate: variance floored, no zero-variance NaN
    dyn = fit_linear_gaussian(X, U, initial_state_var=1e-4)
    torch.testing.assert_close(dyn.x0mu, X[:, :, 0].mean(1))
    assert float(dyn.x0sigma[1, 2, 2]) == pytest.approx(1e-4)
    torch.testing.assert_close(dyn.Fm[:, -1], dyn.Fm[:, -2], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("X", "U", "prior", "words"),
    [
        (torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), None, ["X", "4-D", "[2, 5, 3]"]),
        (torch.zeros(2, 5, 4, 3), torch.zeros(2, 4, 4, 1), None, ["U", "B, N, T"]),
        (torch.zeros(2, 1, 4, 3), torch.zeros(2, 1, 4, 1), None, ["N=1", "prior"]),
        (torch.zeros(2, 5, 1, 3), torch.zeros(2, 5, 1, 1), None, ["T >= 2"]),
        (torch.zeros(2, 5, 4, 3, dtype=torch.int32), torch.zeros(2, 5, 4, 1), None, ["int32"]),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_argument(X, U, prior, words):
    with pytest.raises(ValueError) as info:
        fit_linear_gaussian(X, U, prior)
    for w in words:
        assert w in str(info.value)


def test_prior_for_other_dimensions_is_rejected():
    X, U, _, _ = random_linear_gaussian_data(1, 4, 5, 3, 2, seed=11)
    prior = GMMPrior.fit(X, U, generator=torch.Generator().manual_seed(12))
    X2, U2, _, _ = random_linear_gaussian_data(1, 4, 5, 4, 2, seed=11)
    with pytest.raises(ValueError, match="dX=3"):
        fit_linear_gaussian(X2, U2, prior)
