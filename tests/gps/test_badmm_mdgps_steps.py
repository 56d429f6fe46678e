"""GPS moves the way BADMM and MDGPS say it should: hand-computed dual steps, the C-step's KL
anchor, and one real iteration on a linear-quadratic problem whose optimal controller is known.

BADMM (Levine et al. 2016, as Li & Malik ran it). The policy step minimises
λᵀE_π[u] + ν·KL(π‖p), whose minimiser has mean μ_p − Sλ/ν (S: the controller's covariance), so
the Lagrangian carries +λᵀ(u_pol − u_traj) and dual *ascent* on λ moves along the violation:
λ ← λ + rate·ν·P·mean(u_pol − u_traj), i.e. λ −= rate·ν·P·mean(u_traj − u_pol) (P = S⁻¹, the
reference code's weighting). On the last inner iteration ν ← max(ν + lg_step·KL(p‖π), 0):
a larger disagreement weighs the KL term more. The pieces around the dual arithmetic (policy
training, linearisation, the LQR) are replaced by recorders returning fixed values, so the test
checks the arithmetic and its wiring, not the optimisers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gps.agent import GPSAgent, GPSConfig
from gps.controller import LinearGaussianController
from gps.lqr import LQRResult
from optenv.families import FunctionFamily

pytestmark = pytest.mark.usefixtures("one_thread")

M, N, T, D = 2, 3, 2, 2
RATE, LG_STEP, NU0 = 0.2, 3.0, 0.05


def _bowl(scales: tuple[float, ...] = (1.0, 0.3)) -> FunctionFamily:
    a = torch.tensor(scales, dtype=torch.float64)
    return FunctionFamily(lambda x, data: 0.5 * (a.to(x) * x * x).sum(-1), d=len(scales),
                          name="TinyLQ")


def _agent(**cfg: Any) -> GPSAgent:
    base = {"conditions": M, "samples": N, "horizon": T, "lqr_history": 1, "gmm_iters": 5,
            "policy_dual_rate": RATE, "lg_step": LG_STEP, "init_pol_wt": NU0,
            "momentum_lr_grid": (0.5,), "momentum_grid": (0.5,)}
    agent = GPSAgent(_bowl(), GPSConfig(**{**base, **cfg}), history=1)
    agent.initialise()
    return agent


def _controller(k: list[float], var: list[float], dx: int) -> LinearGaussianController:
    """K = 0, the same k and diagonal covariance at every (condition, step)."""
    kk = torch.tensor(k, dtype=torch.float64).expand(M, T, D).clone()
    cov = torch.diag(torch.tensor(var, dtype=torch.float64)).expand(M, T, D, D).clone()
    return LinearGaussianController(torch.zeros(M, T, D, dx, dtype=torch.float64), kk, cov)


def _result(ctrl: LinearGaussianController) -> LQRResult:
    ones = torch.ones(M, dtype=torch.float64)
    return LQRResult(ctrl.K, ctrl.k, ctrl.covar, ctrl.inv_covar, ones, ones,
                     torch.ones(M, dtype=torch.bool), torch.zeros(M, dtype=torch.int64),
                     torch.ones(M, dtype=torch.int64), [""] * M, 1, False)


class _Recorder:
    """Stands in for the agent's policy training, linearisation and LQR; records their calls."""

    def __init__(self, agent: GPSAgent, pol_mu: torch.Tensor, pol_lin: LinearGaussianController,
                 lqr_out: LinearGaussianController) -> None:
        self.trained: list[tuple[torch.Tensor, ...]] = []
        self.lqr_calls: list[dict[str, Any]] = []
        agent._train = lambda batch, target, prec, w: self.trained.append(  # type: ignore
            (target.clone(), prec.clone(), w.clone())) or 0.0
        agent._policy_means = lambda batch: pol_mu  # type: ignore
        agent._linearise = lambda batch, mu: pol_lin  # type: ignore

        def lqr(dyn, cost, prev, kl_step, *, policy=None, lagrange=None):
            self.lqr_calls.append({"prev": prev, "policy": policy, "lagrange": lagrange,
                                   "lam": agent.lam_k.clone(), "nu": agent.nu.clone()})
            return _result(lqr_out)

        agent._lqr = lqr  # type: ignore


def _kl(traj: LinearGaussianController, z: torch.Tensor, pol_mu: torch.Tensor,
        var: torch.Tensor) -> torch.Tensor:
    """KL(N(traj) ‖ N(pol_mu, diag var)) per condition and step, averaged over samples: [M,T]."""
    cov = traj.covar
    diff = pol_mu - traj.mean(z)
    tr = (torch.diagonal(cov, dim1=-2, dim2=-1) / var).sum(-1)
    return 0.5 * (tr - D + torch.log(var).sum() - torch.logdet(cov)
                  + (diff ** 2 / var).sum(-1).mean(1))


def test_badmm_dual_steps_and_nu_update_equal_the_hand_computed_values():
    agent = _agent(inner_iterations=2)
    batch = agent.sample(agent.ctrl)
    sampler = agent.ctrl
    dx = agent.smap.dim
    pol_mu = torch.full((M, N, T, D), 0.1, dtype=torch.float64)
    new = _controller([0.4, -0.2], [0.5, 2.0], dx)
    rec = _Recorder(agent, pol_mu, _controller([0.0, 0.0], [1.0, 1.0], dx), new)
    lam0 = torch.tensor([0.3, -0.6], dtype=torch.float64).expand(M, T, D).clone()
    agent.lam_k, agent.iteration_count = lam0.clone(), 1  # a later iteration: duals step
    agent._badmm(batch, None, None, [])

    z = batch.Z
    nu0 = torch.full((M, T), NU0, dtype=torch.float64)
    # inner 0: the dual step against the sampling controller
    gap0 = (sampler.mean(z) - pol_mu).mean(1)
    lam1 = lam0 - RATE * nu0[..., None] * (sampler.inv_covar @ gap0[..., None]).squeeze(-1)
    # inner 1: against the controller the (fake) LQR returned; then ν
    gap1 = (new.mean(z) - pol_mu).mean(1)
    lam2 = lam1 - RATE * nu0[..., None] * (new.inv_covar @ gap1[..., None]).squeeze(-1)
    var = agent.policy.variance.detach().to(torch.float64)
    nu1 = (nu0 + LG_STEP * _kl(new, z, pol_mu, var)).clamp_min(0.0)
    torch.testing.assert_close(agent.lam_k, lam2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(agent.nu, nu1, rtol=1e-12, atol=1e-12)
    assert bool((agent.nu > nu0).all()), "a disagreeing policy weighs the KL term more"
    # λ moved against the gap (u_traj > u_pol here on the first coordinate: λ₁ decreased)
    assert bool(((lam1 - lam0)[..., 0] * gap0[..., 0] < 0).all())

    # the LQR saw the current duals each time: ν as the KL weight, λ as the Lagrange term
    for call, lam in zip(rec.lqr_calls, (lam1, lam2), strict=True):
        torch.testing.assert_close(call["lagrange"].k, lam, rtol=1e-12, atol=1e-12)
        assert call["prev"] is sampler, "BADMM's KL bound is to the sampling controller"
    torch.testing.assert_close(rec.lqr_calls[0]["policy"].weight, nu0)

    # policy targets: the controller's mean minus S λ / ν (divided by ν, not multiplied)
    (t0, p0, w0), (t1, p1, w1) = rec.trained
    torch.testing.assert_close(p0, sampler.inv_covar)
    torch.testing.assert_close(w0, nu0)
    want0 = sampler.mean(z) - (sampler.covar @ lam0[..., None]).squeeze(-1)[:, None] / NU0
    want1 = new.mean(z) - (new.covar @ lam1[..., None]).squeeze(-1)[:, None] / NU0
    torch.testing.assert_close(t0, want0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t1, want1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p1, new.inv_covar)
    torch.testing.assert_close(w1, nu0)


def test_mdgps_c_step_is_anchored_at_the_policy_and_the_s_step_fits_the_new_controllers():
    agent = _agent(algorithm="mdgps")
    batch = agent.sample(agent.ctrl)
    dx = agent.smap.dim
    pol_lin = _controller([0.05, 0.05], [0.3, 0.3], dx)
    new = _controller([0.4, -0.2], [0.5, 2.0], dx)
    rec = _Recorder(agent, torch.zeros(M, N, T, D, dtype=torch.float64), pol_lin, new)
    agent.iteration_count = 1  # past the first iteration's catch-up training
    traj, _, _, anchor, _ = agent._mdgps(batch, None, None, [], {})
    assert [c["prev"] for c in rec.lqr_calls] == [pol_lin], "KL bound to the policy's fit"
    assert rec.lqr_calls[0]["policy"] is None and rec.lqr_calls[0]["lagrange"] is None
    assert anchor is pol_lin
    ((target, prec, weight),) = rec.trained
    torch.testing.assert_close(target, traj.mean(batch.Z))
    torch.testing.assert_close(target, new.mean(batch.Z))
    torch.testing.assert_close(prec, new.inv_covar)
    assert bool((weight == 1).all())


@pytest.mark.parametrize("algorithm", ["badmm", "mdgps"])
def test_one_iteration_moves_the_controller_toward_the_optimum_and_the_policy_toward_it(
        algorithm):
    """½(x+u)ᵀA(x+u) summed over steps with x' = x + u: the optimal controller jumps to the
    minimiser, u = −x (K = −I on CUR_LOC, k = 0); the momentum start is far from it. One
    iteration must bring the controllers' mean actions closer to −x and the policy's mean
    actions closer to the controllers'."""
    agent = _agent(algorithm=algorithm, conditions=M, samples=8, horizon=4, kl_step=2.0,
                   inner_iterations=2, policy_steps=300, policy_batch=16, policy_lr=3e-3,
                   momentum_lr_grid=(0.25,), init_pol_wt=0.01)
    x_of = agent.smap.layout.state_slices["CUR_LOC"]

    def gaps() -> tuple[float, float]:
        torch.manual_seed(0)
        b = agent.sample(agent.ctrl)
        x = b.Z[..., x_of]
        u_ctrl = agent.ctrl.mean(b.Z)
        u_pol = agent._policy_means(b)
        return (float((u_ctrl + x).abs().mean() / x.abs().mean()),
                float((u_pol - u_ctrl).abs().mean() / u_ctrl.abs().mean()))

    ctrl_before, pol_before = gaps()
    row = agent.iteration()
    ctrl_after, pol_after = gaps()
    assert row["bad_conditions"] == 0, row
    assert ctrl_after < 0.9 * ctrl_before, (ctrl_before, ctrl_after)
    assert pol_after < 0.5 * pol_before, (pol_before, pol_after)


def test_step_size_rule_is_levine_and_abbeels_from_predicted_and_actual_improvement():
    """mult = pred / (2·max(1e-4, pred − actual)) clipped to [0.1, 5], times the old multiplier,
    kept in [min_step_mult, max_step_mult]; pred = prev − predicted cost, actual = prev − the
    cost now measured (Levine & Abbeel 2014)."""
    agent = _agent()
    prev_cost = torch.tensor([10.0, 10.0], dtype=torch.float64)
    predicted = torch.tensor([8.0, 4.0], dtype=torch.float64)  # pred = 2, 6
    actual_cost = torch.tensor([8.5, 9.0], dtype=torch.float64)  # actual = 1.5, 1
    agent.prev = {"anchor_cost": prev_cost, "result_cost": predicted}
    agent.step_mult = torch.tensor([1.0, 2.0], dtype=torch.float64)
    agent._estimate = lambda model, ctrl: actual_cost  # type: ignore[method-assign]
    agent._step_adjust({}, agent.ctrl)
    # condition 0: 2 / (2·0.5) = 2 → 2·1; condition 1: 6 / (2·5) = 0.6 → 0.6·2
    torch.testing.assert_close(agent.step_mult, torch.tensor([2.0, 1.2], dtype=torch.float64))
