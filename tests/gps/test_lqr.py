"""Tests of the batched KL-constrained LQR (gps.lqr) against scipy and the numpy reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from benchmarks import reference
from benchmarks.gps_bench import LQRInputs, random_lqr_problem
from gps.controller import LinearGaussianController
from gps.cost import QuadraticCost
from gps.dynamics import LinearGaussianDynamics
from gps.lqr import (
    LagrangeTerm,
    LQRStatus,
    PolicyTerm,
    _DualSearch,
    _SearchOptions,
    kl_constrained_lqr,
    lqr_backward,
    lqr_forward,
    prepare_lqr,
)


def _assert_matches_reference(res, ref: list[reference.RefLQRResult], atol: float = 1e-8) -> None:
    for b, r in enumerate(ref):
        assert int(res.status[b]) == r.status, f"condition {b}"
        assert int(res.iterations[b]) == r.iterations, f"condition {b}"
        np.testing.assert_allclose(res.K[b].numpy(), r.K, rtol=0, atol=atol)
        np.testing.assert_allclose(res.k[b].numpy(), r.k, rtol=0, atol=atol)
        np.testing.assert_allclose(res.pol_covar[b].numpy(), r.pol_covar, rtol=0, atol=atol)
        np.testing.assert_allclose(float(res.eta[b]), r.eta, rtol=1e-8)
        np.testing.assert_allclose(float(res.kl[b]), r.kl, rtol=1e-8, atol=atol)


def _time_invariant_lq(T: int, dX: int, dU: int, seed: int):
    rng = np.random.default_rng(seed)
    A = np.eye(dX) + 0.1 * rng.standard_normal((dX, dX))
    Bu = rng.standard_normal((dX, dU))
    Qh = rng.standard_normal((dX, dX))
    Q = Qh @ Qh.T / dX + 0.5 * np.eye(dX)
    R = 0.5 * np.eye(dU)
    n = dX + dU
    Cm = np.zeros((n, n))
    Cm[:dX, :dX], Cm[dX:, dX:] = Q, R

    def rep(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.broadcast_to(x, (1, T, *x.shape)).copy())

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=torch.float64)

    prob = LQRInputs(
        LinearGaussianDynamics(rep(np.hstack([A, Bu])), zeros(1, T, dX), rep(1e-2 * np.eye(dX)),
                               torch.ones(1, dX, dtype=torch.float64),
                               torch.eye(dX, dtype=torch.float64)[None]),
        QuadraticCost(rep(Cm), zeros(1, T, n), zeros(1, T)),
        LinearGaussianController(zeros(1, T, dU, dX), zeros(1, T, dU), rep(np.eye(dU))),
    )
    P = sla.solve_discrete_are(A, Bu, Q, R)
    K_dare = -np.linalg.solve(R + Bu.T @ P @ Bu, Bu.T @ P @ A)
    return prob, K_dare


def test_first_step_gain_matches_discrete_are_for_long_horizon_and_tiny_kl_weight():
    prob, K_dare = _time_invariant_lq(T=150, dX=3, dU=2, seed=0)
    bwd = lqr_backward(prepare_lqr(*prob), eta=1e-9)
    assert not bool(bwd.failed.any())
    np.testing.assert_allclose(bwd.K[0, 0].numpy(), K_dare, atol=1e-7)
    # the full solver with a bound that never binds drives eta to the bottom of its bracket:
    # as the reference code, spending every iteration there ...
    res = kl_constrained_lqr(*prob, kl_step=1e6, max_iter=14, stop_when_inactive=False)
    assert int(res.status[0]) == LQRStatus.MAX_ITER_KL_BELOW and int(res.iterations[0]) == 14
    assert float(res.eta[0]) < 1e-7
    np.testing.assert_allclose(res.K[0, 0].numpy(), K_dare, atol=1e-5)
    # ... or, by default, stopping once eta <= 2 * min_eta, with the same controller
    fast = kl_constrained_lqr(*prob, kl_step=1e6, max_iter=14)
    assert int(fast.status[0]) == LQRStatus.KL_BOUND_INACTIVE and bool(fast.converged[0])
    assert float(fast.eta[0]) <= 2e-8 and fast.n_evaluations < res.n_evaluations
    np.testing.assert_allclose(fast.K[0, 0].numpy(), K_dare, atol=1e-5)


@pytest.mark.parametrize("stop_when_inactive", [True, False])
def test_inactive_bound_stop_matches_the_reference_loop_in_a_mixed_batch(stop_when_inactive):
    # conditions 0 and 2 have a bound that binds, 1 and 3 one that never does
    B, T = 4, 5
    prob = random_lqr_problem(B, T, 4, 2, seed=21)
    kl_step = torch.tensor([0.2, 1e6, 0.5, 1e6], dtype=torch.float64)
    res = kl_constrained_lqr(*prob, kl_step=kl_step, max_iter=15,
                             stop_when_inactive=stop_when_inactive)
    ref = [reference.kl_constrained_lqr_np(*prob.numpy(b), float(kl_step[b]), max_iter=15,
                                           stop_when_inactive=stop_when_inactive)
           for b in range(B)]
    for b, r in enumerate(ref):
        assert int(res.status[b]) == r.status and int(res.iterations[b]) == r.iterations
        np.testing.assert_allclose(res.K[b].numpy(), r.K, rtol=0, atol=1e-8)
        np.testing.assert_allclose(float(res.eta[b]), r.eta, rtol=1e-10)
    inactive = LQRStatus.KL_BOUND_INACTIVE if stop_when_inactive else LQRStatus.MAX_ITER_KL_BELOW
    assert [int(c) for c in res.status] == [0, inactive, 0, inactive]


@pytest.mark.parametrize(("dX", "dU", "seed"), [(5, 2, 1), (7, 1, 41)],
                         ids=["general", "du1-passes"])
def test_batched_solution_matches_per_condition_numpy_reference_to_1e_8(dX, dU, seed):
    B = 6
    prob = random_lqr_problem(B, 12, dX, dU, seed=seed)
    kl_step = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 0.3], dtype=torch.float64)
    eta0 = torch.tensor([1.0, 0.1, 10.0, 1.0, 1e-3, 1e3], dtype=torch.float64)
    res = kl_constrained_lqr(*prob, kl_step=kl_step, eta0=eta0)
    ref = [reference.kl_constrained_lqr_np(*prob.numpy(b), float(kl_step[b]), eta0=float(eta0[b]))
           for b in range(B)]
    _assert_matches_reference(res, ref)
    assert bool(res.converged.all())


def test_kl_constraint_holds_within_tolerance_for_every_converged_condition():
    B, T = 8, 10
    prob = random_lqr_problem(B, T, 4, 2, seed=2)
    kl_step = torch.linspace(0.05, 1.0, B, dtype=torch.float64)
    res = kl_constrained_lqr(*prob, kl_step=kl_step)
    assert bool(res.converged.any())
    for b in torch.nonzero(res.converged).flatten().tolist():
        npb = prob.numpy(b)
        K, k, S = res.K[b].numpy(), res.k[b].numpy(), res.pol_covar[b].numpy()
        mu, sigma = reference.lqr_forward_np(*npb[:5], K, k, S)
        kl = reference.traj_kl_np(mu, sigma, K, k, S, *npb[7:]).sum()
        bound = float(kl_step[b]) * T
        assert abs(kl - bound) < 0.1 * bound
        np.testing.assert_allclose(float(res.kl[b]), kl, rtol=1e-9)
        # the returned policy covariance is the inverse of the returned precision
        eye = np.broadcast_to(np.eye(2), (T, 2, 2))
        np.testing.assert_allclose(S @ res.inv_pol_covar[b].numpy(), eye, atol=1e-9)


def test_indefinite_quu_raises_that_conditions_eta_and_recovers():
    prob = random_lqr_problem(3, 8, 4, 2, seed=3)
    # concave in u for condition 1: Q_uu = Cm_uu/eta + P_prev is indefinite until eta > ~3
    prob.cost.Cm[1, :, 4:, 4:] = -3.0 * torch.eye(2, dtype=torch.float64)
    prob.cost.Cm[1, :, 4:, :4] = 0.0
    prob.cost.Cm[1, :, :4, 4:] = 0.0
    prob.prev.covar[1] = torch.eye(2, dtype=torch.float64)
    res = kl_constrained_lqr(*prob, kl_step=0.2, eta0=1.0)
    ref = [reference.kl_constrained_lqr_np(*prob.numpy(b), 0.2, eta0=1.0) for b in range(3)]
    _assert_matches_reference(res, ref)
    assert float(res.eta[1]) > 3.0
    assert int(res.status[1]) == LQRStatus.CONVERGED
    assert res.n_evaluations > int(res.iterations.max())  # retries happened in lock-step


def test_unsolvable_conditions_are_reported_per_condition_without_nan():
    B = 4
    prob = random_lqr_problem(B, 8, 4, 2, seed=4)
    alone = kl_constrained_lqr(*prob.map(lambda x: x[3:]), kl_step=0.3)
    prob.cost.Cm[0, :, 4:, 4:] = -1e20 * torch.eye(2, dtype=torch.float64)  # PD only for eta > 1e20
    prob.dyn.Fm[1, 3, 0, 0] = float("nan")
    prob.prev.covar[2, 5] = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    res = kl_constrained_lqr(*prob, kl_step=0.3)
    assert res.status.tolist()[:3] == [LQRStatus.PD_FAILURE, LQRStatus.NONFINITE_INPUT,
                                       LQRStatus.BAD_PREV_COVAR]
    assert res.converged.tolist() == [False, False, False, True]
    assert "PD" in res.reason[0] and "non-finite" in res.reason[1]
    assert "prev.covar" in res.reason[2] and res.reason[3].startswith("converged")
    for x in (res.K, res.k, res.pol_covar, res.inv_pol_covar, res.eta, res.kl):
        assert bool(torch.isfinite(x).all())
    # the failed conditions fall back to the previous controller; the healthy one is unaffected
    torch.testing.assert_close(res.K[0], prob.prev.K[0])
    torch.testing.assert_close(res.K[3], alone.K[0], rtol=0, atol=1e-12)
    assert float(res.eta[3]) == pytest.approx(float(alone.eta[0]), rel=1e-12)


def test_lagrange_multiplier_shift_equals_adding_the_linear_cost_term():
    B, T, dX, dU = 3, 8, 4, 2
    prob = random_lqr_problem(B, T, dX, dU, seed=5)
    g = torch.Generator().manual_seed(0)
    lam_K = 0.3 * torch.randn(B, T, dU, dX, generator=g, dtype=torch.float64)
    lam_k = 0.3 * torch.randn(B, T, dU, generator=g, dtype=torch.float64)
    shifted = kl_constrained_lqr(*prob, kl_step=0.3, lagrange=LagrangeTerm(k=lam_k, K=lam_K))
    Cm, cv = prob.cost.Cm.clone(), prob.cost.cv.clone()
    cv[..., dX:] -= lam_k
    Cm[..., dX:, :dX] -= lam_K
    Cm[..., :dX, dX:] -= lam_K.mT
    direct = kl_constrained_lqr(*prob._replace(cost=QuadraticCost(Cm, cv, prob.cost.c0)),
                                kl_step=0.3)
    for a, b in ((shifted.K, direct.K), (shifted.k, direct.k), (shifted.eta, direct.eta)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    plain = kl_constrained_lqr(*prob, kl_step=0.3)
    assert not torch.allclose(plain.k, shifted.k)
    # without K the multipliers act on the mean actions only (the agent's case): K = 0 exactly
    mean_only = kl_constrained_lqr(*prob, kl_step=0.3, lagrange=LagrangeTerm(k=lam_k))
    zero_K = kl_constrained_lqr(*prob, kl_step=0.3,
                                lagrange=LagrangeTerm(k=lam_k, K=torch.zeros_like(lam_K)))
    assert torch.equal(mean_only.K, zero_K.K) and torch.equal(mean_only.eta, zero_K.eta)


def test_policy_kl_term_matches_reference_and_pulls_the_controller_toward_the_policy():
    B, T, dX, dU = 3, 8, 4, 2
    prob = random_lqr_problem(B, T, dX, dU, seed=6)
    g = torch.Generator().manual_seed(1)
    pol_K = 0.5 * torch.randn(B, T, dU, dX, generator=g, dtype=torch.float64)
    pol_k = torch.randn(B, T, dU, generator=g, dtype=torch.float64)
    pol_S = 0.2 * torch.eye(dU, dtype=torch.float64).repeat(B, T, 1, 1)
    nu = torch.rand(B, T, generator=g, dtype=torch.float64) + 0.5  # time-varying weights
    lam_K = 0.1 * torch.randn(B, T, dU, dX, generator=g, dtype=torch.float64)
    lam_k = 0.1 * torch.randn(B, T, dU, generator=g, dtype=torch.float64)
    policy = PolicyTerm(LinearGaussianController(pol_K, pol_k, pol_S), nu)
    res = kl_constrained_lqr(*prob, kl_step=0.5, policy=policy,
                             lagrange=LagrangeTerm(k=lam_k, K=lam_K), max_ent=0.1)
    ref = [reference.kl_constrained_lqr_np(
        *prob.numpy(b), 0.5, policy=(pol_K[b].numpy(), pol_k[b].numpy(), pol_S[b].numpy(),
                                    nu[b].numpy()),
        lagrange=(lam_K[b].numpy(), lam_k[b].numpy()), max_ent=0.1) for b in range(B)]
    _assert_matches_reference(res, ref)

    def distance(weight: float) -> float:
        term = PolicyTerm(LinearGaussianController(pol_K, pol_k, pol_S), weight)
        out = lqr_backward(prepare_lqr(*prob, policy=term), 1.0)
        return float((out.K - pol_K).norm() + (out.k - pol_k).norm())

    assert distance(100.0) < distance(1.0) < distance(0.0)
    assert distance(1e6) < 1e-3


def test_lqr_forward_marginals_match_reference():
    prob = random_lqr_problem(2, 6, 3, 2, seed=7)
    g = torch.Generator().manual_seed(2)
    K = 0.3 * torch.randn(2, 6, 2, 3, generator=g, dtype=torch.float64)
    k = torch.randn(2, 6, 2, generator=g, dtype=torch.float64)
    marg = lqr_forward(prob.dyn, LinearGaussianController(K, k, prob.prev.covar), prob.prev)
    for b in range(2):
        npb = prob.numpy(b)
        mu, sigma = reference.lqr_forward_np(*npb[:5], K[b].numpy(), k[b].numpy(), npb[9])
        np.testing.assert_allclose(marg.mu[b].numpy(), mu, atol=1e-10)
        np.testing.assert_allclose(marg.sigma[b].numpy(), sigma, atol=1e-10)
        kl = reference.traj_kl_np(mu, sigma, K[b].numpy(), k[b].numpy(), npb[9], *npb[7:])
        assert marg.kl is not None
        np.testing.assert_allclose(marg.kl[b].numpy(), kl, atol=1e-10)


def test_float32_inputs_give_float32_results_computed_in_float64_on_cpu():
    prob = random_lqr_problem(2, 6, 3, 2, seed=8)
    res64 = kl_constrained_lqr(*prob.map(lambda v: v.float().double()), kl_step=0.4)
    res32 = kl_constrained_lqr(*prob.map(lambda v: v.float()), kl_step=0.4)
    assert res32.K.dtype == torch.float32 and res32.eta.dtype == torch.float32
    torch.testing.assert_close(res32.K, res64.K.float())


def test_search_state_reloaded_with_a_new_problem_gives_the_fresh_answer():
    """The CUDA-graph cache refills static buffers with load(); the same logic runs on CPU."""
    probs = [random_lqr_problem(3, 6, 3, 2, seed=s) for s in (9, 10)]
    prepared = [prepare_lqr(*p) for p in probs]
    eta0 = torch.ones(3, dtype=torch.float64)
    target = torch.full((3,), 0.3 * 6, dtype=torch.float64)
    search = _DualSearch(prepared[0], eta0, target, _SearchOptions())
    while not bool(search.done.all()):
        search.step()
    search.load(prepared[1], eta0, target)
    while not bool(search.done.all()):
        search.step()
    fresh = kl_constrained_lqr(*probs[1], kl_step=0.3)
    torch.testing.assert_close(search.K, fresh.K, rtol=0, atol=0)
    torch.testing.assert_close(search.eta_out, fresh.eta, rtol=0, atol=0)


def test_same_inputs_give_bitwise_identical_results():
    prob = random_lqr_problem(3, 6, 3, 2, seed=11)
    a = kl_constrained_lqr(*prob, kl_step=0.3)
    b = kl_constrained_lqr(*prob, kl_step=0.3)
    assert torch.equal(a.K, b.K) and torch.equal(a.eta, b.eta)


@pytest.mark.parametrize(
    ("part", "field", "value", "words"),
    [
        ("cost", "Cm", torch.zeros(2, 5, 4, 4, dtype=torch.float64),
         ["cost.Cm", "[B,T,dX+dU,dX+dU]", "[2, 5, 4, 4]"]),
        ("dyn", "fv", torch.zeros(2, 5, 3, dtype=torch.int64), ["dyn.fv", "int64", "float32"]),
        ("dyn", "x0mu", torch.zeros(2, 3, dtype=torch.float32),
         ["dyn.x0mu", "float32", "float64"]),
        ("prev", "K", np.zeros((2, 5, 2, 3)), ["prev.K", "torch.Tensor", "ndarray"]),
        ("dyn", "Fm", torch.zeros(2, 5, 3, dtype=torch.float64), ["dyn.Fm", "4-D", "[2, 5, 3]"]),
    ],
)
def test_wrong_shapes_and_dtypes_raise_naming_the_argument(part, field, value, words):
    prob = random_lqr_problem(2, 5, 3, 2, seed=12)
    prob = prob._replace(**{part: dataclasses.replace(getattr(prob, part), **{field: value})})
    with pytest.raises((ValueError, TypeError)) as info:
        kl_constrained_lqr(*prob, kl_step=0.3)
    for w in words:
        assert w in str(info.value)


def test_wrong_containers_raise_type_error_naming_the_argument_and_the_class():
    dyn, cost, prev = random_lqr_problem(2, 5, 3, 2, seed=12)
    for args, words in (
        (({"Fm": dyn.Fm}, cost, prev), ["dyn", "LinearGaussianDynamics", "dict"]),
        ((dyn, (cost.Cm, cost.cv), prev), ["cost", "QuadraticCost", "tuple"]),
        ((dyn, cost, prev.K), ["prev", "LinearGaussianController", "Tensor"]),
    ):
        with pytest.raises(TypeError) as info:
            kl_constrained_lqr(*args, kl_step=0.3)
        assert all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(TypeError, match=r"policy must be a gps\.lqr\.PolicyTerm or None"):
        kl_constrained_lqr(dyn, cost, prev, 0.3, policy=prev)
    with pytest.raises(TypeError, match=r"lagrange must be a gps\.lqr\.LagrangeTerm or None"):
        kl_constrained_lqr(dyn, cost, prev, 0.3, lagrange=prev.k)
    with pytest.raises(TypeError, match=r"problem must be a gps\.lqr\.LQRProblem"):
        lqr_backward(random_lqr_problem(2, 5, 3, 2), 1.0)


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"kl_step": -1.0}, "kl_step"),
        ({"kl_step": torch.ones(3, dtype=torch.float64)}, "kl_step"),
        ({"kl_step": 0.3, "eta0": 0.0}, "eta0"),
        ({"kl_step": 0.3, "policy": PolicyTerm(LinearGaussianController(
            _zeros(2, 5, 2, 3), _zeros(2, 5, 3), _zeros(2, 5, 2, 2)), 1.0)}, "policy.linearised.k"),
        ({"kl_step": 0.3, "policy": PolicyTerm(LinearGaussianController(
            _zeros(2, 5, 2, 3), _zeros(2, 5, 2), _zeros(2, 5, 2, 2)), -1.0)}, "policy.weight"),
        ({"kl_step": 0.3, "policy": PolicyTerm(LinearGaussianController(
            _zeros(2, 5, 2, 3), _zeros(2, 5, 2), _zeros(2, 5, 2, 2)), _zeros(2, 4))},
         "policy.weight"),
        ({"kl_step": 0.3, "lagrange": LagrangeTerm(k=_zeros(2, 5, 2), K=_zeros(2, 5, 3, 2))},
         "lagrange.K"),
        ({"kl_step": 0.3, "use_cuda_graph": True}, "use_cuda_graph"),
        ({"kl_step": 0.3, "max_iter": 0}, "max_iter"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(kwargs, word):
    """(The policy and Lagrange terms need their tensors together: the containers hold them.)"""
    prob = random_lqr_problem(2, 5, 3, 2, seed=13)
    with pytest.raises(ValueError, match=word):
        kl_constrained_lqr(*prob, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_solution_matches_cpu_including_a_cached_second_call():
    for seed in (14, 15):  # the second problem reuses the captured graph with reloaded buffers
        prob = random_lqr_problem(8, 10, 5, 2, seed=seed)
        prob.cost.Cm[1, :, 5:, 5:] = -3.0 * torch.eye(2, dtype=torch.float64)  # PD retries too
        cpu = kl_constrained_lqr(*prob, kl_step=0.3)
        gpu = kl_constrained_lqr(*prob.map(lambda v: v.cuda()), kl_step=0.3)
        assert gpu.used_cuda_graph
        assert torch.equal(gpu.status.cpu(), cpu.status)
        torch.testing.assert_close(gpu.K.cpu(), cpu.K, rtol=0, atol=1e-8)
        torch.testing.assert_close(gpu.eta.cpu(), cpu.eta, rtol=1e-8, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_cache_keeps_the_inactive_stop_settings_apart():
    prob = random_lqr_problem(4, 5, 4, 2, seed=21)
    kl_step = torch.tensor([0.2, 1e6, 0.5, 1e6], dtype=torch.float64)
    on_gpu = prob.map(lambda v: v.cuda())
    for stop in (True, False, True):  # the third call replays the first call's cached graph
        cpu = kl_constrained_lqr(*prob, kl_step=kl_step, max_iter=15, stop_when_inactive=stop)
        gpu = kl_constrained_lqr(*on_gpu, kl_step=kl_step.cuda(), max_iter=15,
                                 stop_when_inactive=stop)
        assert gpu.used_cuda_graph and gpu.n_evaluations == cpu.n_evaluations
        assert torch.equal(gpu.status.cpu(), cpu.status)


# ------------------------------------------------- the dU = 1 passes (coordinatewise GPS sizes)


def _du1_problem(B: int, T: int, dX: int, seed: int, badmm: bool):
    """A dU = 1 problem, optionally with BADMM's policy and Lagrange terms (per-step weights)."""
    prob = random_lqr_problem(B, T, dX, 1, seed=seed)
    if not badmm:
        return prob, {}
    g = torch.Generator().manual_seed(seed + 100)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    pol = LinearGaussianController(0.2 * r(B, T, 1, dX), r(B, T, 1),
                                   0.5 + torch.rand(B, T, 1, 1, generator=g, dtype=torch.float64))
    extra = {"policy": PolicyTerm(pol, torch.rand(B, T, generator=g, dtype=torch.float64)),
             "lagrange": LagrangeTerm(0.1 * r(B, T, 1), 0.05 * r(B, T, 1, dX)),
             "max_ent": 0.1}
    return prob, extra


@pytest.mark.parametrize(("dX", "badmm"), [(1, False), (5, True), (17, False), (30, True)])
def test_du1_passes_match_the_general_passes(monkeypatch, dX, badmm):
    """The dU = 1 backward and forward passes (homogeneous coordinates, scalar Q_uu) against
    the general ones, at etas over 12 decades: the same numbers to rounding."""
    from gps import lqr as lqr_module

    B, T = 12, 9
    prob, extra = _du1_problem(B, T, dX, seed=30 + dX, badmm=badmm)
    p = prepare_lqr(*prob, **extra)
    eta = torch.logspace(-6, 6, B, dtype=torch.float64)

    def passes(fast: bool):
        monkeypatch.setattr(lqr_module, "DU1_FAST_PATH", fast)
        bwd = lqr_backward(p, eta)
        _, logdet, _ = lqr_module._chol_inverse(bwd.pol_covar)
        kl = lqr_module._forward_pass(p, bwd.K, bwd.k, bwd.pol_covar, logdet)
        return bwd, kl

    (fast, kl_fast), (gen, kl_gen) = passes(True), passes(False)
    assert not bool(gen.failed.any()) and torch.equal(fast.failed, gen.failed)
    for a, b in ((fast.K, gen.K), (fast.k, gen.k), (fast.pol_covar, gen.pol_covar),
                 (fast.inv_pol_covar, gen.inv_pol_covar)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl_fast, kl_gen, rtol=1e-9, atol=1e-11)
    # and a solve: the same search path (etas, iterations), the same controller
    monkeypatch.setattr(lqr_module, "DU1_FAST_PATH", True)
    a = kl_constrained_lqr(*prob, kl_step=0.3, **extra)
    monkeypatch.setattr(lqr_module, "DU1_FAST_PATH", False)
    b = kl_constrained_lqr(*prob, kl_step=0.3, **extra)
    assert torch.equal(a.iterations, b.iterations) and torch.equal(a.status, b.status)
    assert a.n_evaluations == b.n_evaluations
    torch.testing.assert_close(a.eta, b.eta, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.K, b.K, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.kl, b.kl, rtol=1e-10, atol=1e-12)


def test_du1_indefinite_and_unsolvable_conditions_match_the_general_path(monkeypatch):
    """Q_uu <= 0 (retries, and a PD failure) and non-finite inputs on the dU = 1 path."""
    from gps import lqr as lqr_module

    prob = random_lqr_problem(4, 8, 4, 1, seed=42)
    prob.cost.Cm[1, :, 4, 4] = -3.0  # concave in u until eta > ~3: retries
    prob.cost.Cm[1, :, 4, :4] = 0.0
    prob.cost.Cm[1, :, :4, 4] = 0.0
    prob.prev.covar[1] = 1.0
    prob.cost.Cm[2, :, 4, 4] = -1e20  # PD only for eta > 1e20: PD_FAILURE
    prob.dyn.Fm[3, 2, 1, 1] = float("nan")
    res = kl_constrained_lqr(*prob, kl_step=0.2)
    monkeypatch.setattr(lqr_module, "DU1_FAST_PATH", False)
    gen = kl_constrained_lqr(*prob, kl_step=0.2)
    assert res.status.tolist() == gen.status.tolist() == [
        LQRStatus.CONVERGED, LQRStatus.CONVERGED, LQRStatus.PD_FAILURE,
        LQRStatus.NONFINITE_INPUT]
    assert float(res.eta[1]) > 3.0 and res.n_evaluations == gen.n_evaluations
    torch.testing.assert_close(res.K, gen.K, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.eta, gen.eta, rtol=1e-12, atol=0)
    ref = reference.kl_constrained_lqr_np(*prob.numpy(1), 0.2)
    np.testing.assert_allclose(res.K[1].numpy(), ref.K, rtol=0, atol=1e-8)
    for x in (res.K, res.k, res.pol_covar, res.inv_pol_covar, res.eta, res.kl):
        assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("dU", [1, 2])
def test_chunked_solve_is_bitwise_the_single_batch_solve(dU):
    B = 7
    prob = random_lqr_problem(B, 6, 4, dU, seed=50 + dU)
    kl_step = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 0.3, 1e6], dtype=torch.float64)
    one = kl_constrained_lqr(*prob, kl_step=kl_step)
    for chunk in (1, 3, 7, 100):
        res = kl_constrained_lqr(*prob, kl_step=kl_step, max_batch=chunk)
        for f in ("K", "k", "pol_covar", "inv_pol_covar", "eta", "kl", "converged", "status",
                  "iterations"):
            assert torch.equal(getattr(res, f), getattr(one, f)), (chunk, f)
        assert res.reason == one.reason and res.n_evaluations == one.n_evaluations
    with pytest.raises(ValueError, match="max_batch"):
        kl_constrained_lqr(*prob, kl_step=0.3, max_batch=0)
