"""Coordinate-group GPS (gps.coordinatewise): the block-diagonal LQR, the group-pooled dynamics,
a run end to end, resume, transfer to other d and families, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

from gps.controller import LinearGaussianController
from gps.coordinatewise import (
    CoordinatewiseGPSAgent,
    coordinate_states,
    hessian_diagonal,
    policy_state_columns,
)
from gps.cost import QuadraticCost
from gps.dynamics import LinearGaussianDynamics
from gps.lqr import LagrangeTerm, PolicyTerm, lqr_backward, lqr_forward, prepare_lqr
from gps.model import fit_dynamics
from gps.train import load_for_compare, load_optimizer, make_config, train
from optenv.core import StateLayout
from optenv.evaluate import evaluate, resolve_env
from optenv.registration import family_of

TINY = {"policy": "coordinatewise", "conditions": 3, "samples": 3, "horizon": 5,
        "lqr_history": 2, "inner_iterations": 2, "policy_steps": 5, "policy_batch": 16,
        "gmm_iters": 5, "gmm_clusters": 3, "lqr_max_iter": 10, "momentum_lr_grid": (0.1, 1.0),
        "momentum_grid": (0.5, 0.9), "iterations": 2}
ENV = "optenv/LogisticRegression-v0"


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the block-diagonal LQR
def _spd(g: torch.Generator, *shape: int) -> torch.Tensor:
    A = torch.randn(*shape, shape[-1], generator=g, dtype=torch.float64)
    return A @ A.mT / shape[-1] + 0.1 * torch.eye(shape[-1], dtype=torch.float64)


def _blocks(d: int = 3, n: int = 4, T: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """d independent problems (state n, action 1): what the coordinatewise agent solves."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return {"Fm": 0.4 * r(d, T, n, n + 1), "fv": r(d, T, n), "W": 0.1 * _spd(g, d, T, n),
            "x0": r(d, n), "x0s": 0.1 * _spd(g, d, n), "Cm": _spd(g, d, T, n + 1),
            "cv": r(d, T, n + 1), "K": 0.3 * r(d, T, 1, n), "k": r(d, T, 1),
            "S": 0.5 + torch.rand(d, T, 1, 1, generator=g, dtype=torch.float64),
            "Kp": 0.3 * r(d, T, 1, n), "kp": r(d, T, 1),
            "Sp": 0.5 + torch.rand(d, T, 1, 1, generator=g, dtype=torch.float64),
            "nu": torch.rand(d, T, generator=g, dtype=torch.float64), "lam": r(d, T, 1)}


def _index(kind: str, j: int, n: int, d: int) -> torch.Tensor:
    """Where block j's state ("s", n), joint [z; u] ("j", n + 1) or action ("a", 1) entries
    sit in the full problem: states block after block, then the d actions in order."""
    state = torch.arange(j * n, (j + 1) * n)
    return {"s": state, "a": torch.tensor([d * n + j]) - d * n,
            "j": torch.cat([state, torch.tensor([d * n + j])])}[kind]


def _size(kind: str, n: int, d: int) -> int:
    return {"s": d * n, "a": d, "j": d * n + d}[kind]


def _embed(x: torch.Tensor, kinds: str, n: int) -> torch.Tensor:
    """Blocks x [d, ...] whose last len(kinds) dims are of these kinds → the block-diagonal
    full tensor [1, ...] (zeros off the blocks)."""
    d = x.shape[0]
    lead = x.shape[1:x.dim() - len(kinds)]
    out = torch.zeros(1, *lead, *(_size(k, n, d) for k in kinds), dtype=x.dtype)
    for j in range(d):
        idx = [_index(k, j, n, d) for k in kinds]
        if len(kinds) == 1:
            out[0, ..., idx[0]] = x[j]
        else:
            out[0, ..., idx[0][:, None], idx[1][None, :]] = x[j]
    return out


def _problem(b: dict[str, torch.Tensor], n: int, full: bool, coupling: float = 0.0
             ) -> tuple[LinearGaussianDynamics, QuadraticCost, LinearGaussianController,
                        LinearGaussianController]:
    """The d small problems as a batch, or (``full``) as one block-diagonal problem, plus an
    optional ``coupling`` of block 0's next state to block 1's state."""
    e = (lambda x, kinds: _embed(x, kinds, n)) if full else (lambda x, kinds: x)
    Fm = e(b["Fm"], "sj")
    if coupling:
        Fm = Fm.clone()
        Fm[0, :, 0, n] += coupling
    dyn = LinearGaussianDynamics(Fm, e(b["fv"], "s"), e(b["W"], "ss"), e(b["x0"], "s"),
                                 e(b["x0s"], "ss"))
    T = b["Fm"].shape[1]
    cost = QuadraticCost(e(b["Cm"], "jj"), e(b["cv"], "j"),
                         torch.zeros(1 if full else b["Fm"].shape[0], T, dtype=torch.float64))
    prev = LinearGaussianController(e(b["K"], "as"), e(b["k"], "a"), e(b["S"], "aa"))
    pol = LinearGaussianController(e(b["Kp"], "as"), e(b["kp"], "a"), e(b["Sp"], "aa"))
    return dyn, cost, prev, pol


def test_per_coordinate_lqr_equals_the_full_lqr_on_a_block_diagonal_problem() -> None:
    """One backward pass at a fixed eta, with BADMM's policy and Lagrange terms: the d small
    problems solved as one batch give exactly the blocks of the full problem's controller, and
    their KLs (forward pass) sum to the full one's. Coupling two blocks breaks it."""
    d, n, T, eta = 3, 4, 5, 0.7
    b = _blocks(d, n, T)
    b["nu"] = b["nu"][:1].expand(d, T).clone()  # the full problem has one weight per step

    def solve(full: bool, coupling: float = 0.0) -> tuple[Any, Any]:
        dyn, cost, prev, pol = _problem(b, n, full, coupling)
        nu = b["nu"][:1] if full else b["nu"]
        lam = _embed(b["lam"], "a", n) if full else b["lam"]
        out = lqr_backward(prepare_lqr(dyn, cost, prev, policy=PolicyTerm(pol, nu),
                                       lagrange=LagrangeTerm(k=lam)), eta)
        kl = lqr_forward(dyn, LinearGaussianController(out.K, out.k, out.pol_covar), prev).kl
        return out, kl

    small, kl_small = solve(False)
    full, kl_full = solve(True)
    assert not bool(small.failed.any()) and not bool(full.failed.any())
    torch.testing.assert_close(full.K, _embed(small.K, "as", n))
    torch.testing.assert_close(full.k, _embed(small.k, "a", n))
    torch.testing.assert_close(full.pol_covar, _embed(small.pol_covar, "aa", n))
    torch.testing.assert_close(kl_full[0], kl_small.sum(0))
    coupled, _kl = solve(True, coupling=0.5)
    assert not torch.allclose(coupled.K, full.K)


# ------------------------------------------------------------------ states and models
def test_coordinate_states_are_the_one_variable_state_of_each_coordinate() -> None:
    """z_j = the 2016 state of a one-variable problem (x_j, the shared objective changes, j's
    gradients and steps, last h each), and its row columns are where the policy reads them."""
    d, H, h = 3, 4, 2
    lay = StateLayout(d, H)
    state = torch.randn(5, lay.state_dim, dtype=torch.float64)
    z = coordinate_states(lay, state, h)
    one = StateLayout(1, H)
    for j in range(d):
        u = lay.unpack(state)
        full_j = torch.cat([u["CUR_LOC"][:, j:j + 1], u["PAST_OBJ_VAL_DELTAS"],
                            u["PAST_GRADS"][:, :, j], u["CUR_GRAD"][:, j:j + 1],
                            u["PAST_LOC_DELTAS"][:, :, j]], -1)
        assert full_j.shape[-1] == one.state_dim
        sl = one.state_slices
        want = torch.cat([full_j[:, sl["CUR_LOC"]], full_j[:, sl["PAST_OBJ_VAL_DELTAS"]][:, -h:],
                          full_j[:, sl["PAST_GRADS"]][:, -h:], full_j[:, sl["CUR_GRAD"]],
                          full_j[:, sl["PAST_LOC_DELTAS"]][:, -h:]], -1)
        torch.testing.assert_close(z[:, j], want)
    rows = lay.coordinatewise(lay.observation(state), observation=True)
    z_cols, row_cols = policy_state_columns(H, h)
    torch.testing.assert_close(z[..., z_cols], rows[..., row_cols])


def _agent(**over: Any) -> CoordinatewiseGPSAgent:
    _l, fam, dfl = resolve_env(ENV)
    agent = CoordinatewiseGPSAgent(fam, make_config("badmm", **{**TINY, **over}),
                                   history=dfl["history"], max_step=dfl["max_step"])
    agent.initialise()
    return agent


def test_dynamics_are_fitted_per_group_from_the_pooled_coordinates() -> None:
    """Every coordinate of a group gets its group's fit, which is fit_dynamics on the group's
    coordinate trajectories pooled as samples (one GMM per group); groups differ."""
    agent = _agent(gmm_max_samples=4)  # 9 pooled trajectories in group w: the prior uses 4
    batch = agent.sample(agent.ctrl)
    M, d, N = agent.cfg.conditions, agent.family.d, agent.cfg.samples
    gen_state = agent.gen_gmm.get_state()
    dyn, residual = agent.fit_group_dynamics(batch.Z, batch.U)
    assert residual.shape == (M,) and bool(torch.isfinite(residual).all())
    agent.gen_gmm.set_state(gen_state)
    Fm = dyn.Fm.reshape(M, d, *dyn.Fm.shape[1:])
    T, dX = batch.Z.shape[2], batch.Z.shape[3]
    for g in agent.groups:  # LogisticRegression: w (0..d-2), b (d-1)
        pooled_Z = torch.cat([batch.Z.reshape(M, d, N, T, dX)[:, j] for j in g.index], 1)
        pooled_U = torch.cat([batch.U.reshape(M, d, N, T, 1)[:, j] for j in g.index], 1)
        few = torch.linspace(0, g.size * N - 1, min(g.size * N, 4)).round().long()
        want, _r, _gmm = fit_dynamics(
            pooled_Z, pooled_U, agent.smap, reg=agent.cfg.dynamics_reg,
            max_clusters=agent.cfg.gmm_clusters, min_samples_per_cluster=agent.cfg.gmm_min_samples,
            strength=agent.cfg.prior_strength, gmm_iters=agent.cfg.gmm_iters,
            generator=agent.gen_gmm, shared_prior=True, prior_samples=few)
        for j in g.index:
            torch.testing.assert_close(Fm[:, int(j)], want.Fm)
    assert not torch.allclose(Fm[:, 0], Fm[:, d - 1])
    # the initial state is each coordinate's own
    torch.testing.assert_close(dyn.x0mu, batch.Z[:, :, 0].mean(1))


def test_cost_is_each_coordinates_exact_local_quadratic() -> None:
    """The cost of coordinate j, summed over j, is f's second-order expansion with the
    Hessian's diagonal; gradient and curvature match f's along each coordinate."""
    agent = _agent()
    batch = agent.sample(agent.ctrl)
    cost = agent.coordinate_cost(batch.Z, batch.U)
    M, d, T = agent.cfg.conditions, agent.family.d, agent.cfg.horizon
    y = (batch.Z[..., 0] + batch.U[..., 0]).mean(1).reshape(M, d, T)  # [M,d,T]
    x_col, u_col = 0, agent.smap.dim
    m, t = 1, 2
    pt = y[m, :, t][None]
    data = {k: v[m:m + 1] for k, v in agent.data.items()}
    f, g = agent.family.value_and_grad(pt, data)
    H = agent.family.hessian(pt, data)[0]
    for j in range(d):
        p = m * d + j
        C = cost.Cm[p, t]
        torch.testing.assert_close(C[x_col, x_col], H[j, j])
        torch.testing.assert_close(C[u_col, u_col], H[j, j])
        # d cost / d u at the mean = g_j
        grad_u = cost.cv[p, t, u_col] + C[u_col, x_col] * batch.Z[p, :, t, 0].mean() \
            + C[u_col, u_col] * batch.U[p, :, t, 0].mean()
        torch.testing.assert_close(grad_u, g[0, j])
    # at the mean iterate the coordinates' costs sum to f
    zbar = batch.Z[m * d:(m + 1) * d, :, t].mean(1)  # [d, dX]
    ubar = batch.U[m * d:(m + 1) * d, :, t].mean(1)  # [d, 1]
    xu = torch.cat([zbar, ubar], -1)
    quad = 0.5 * torch.einsum("pi,pij,pj->p", xu, cost.Cm[m * d:(m + 1) * d, t], xu)
    lin = (cost.cv[m * d:(m + 1) * d, t] * xu).sum(-1)
    torch.testing.assert_close((quad + lin + cost.c0[m * d:(m + 1) * d, t]).sum(), f[0])
    # the Hutchinson estimate is exact for a diagonal Hessian and close for this one
    est = hessian_diagonal(agent.family, pt, data, exact_max=0, probes=64)
    torch.testing.assert_close(est[0], torch.diagonal(H), rtol=0.5, atol=0.05)


# ------------------------------------------------------------------ end to end
def _strip(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s" and not k.startswith("t_")}
            for r in log]


@pytest.mark.parametrize("algorithm", ["badmm", "mdgps"])
def test_a_resumed_run_reproduces_the_uninterrupted_one(tmp_path: Path, algorithm: str) -> None:
    full = train(ENV, tmp_path / "a", make_config(algorithm, **TINY), quiet=True)
    assert len(full) == 2 and all(r["failures"] == "" for r in full)
    assert all(torch.isfinite(torch.tensor(r["policy_cost"])) for r in full)
    train(ENV, tmp_path / "b", make_config(algorithm, **{**TINY, "iterations": 1}), quiet=True)
    resumed = train(ENV, tmp_path / "b", make_config(algorithm, **TINY), quiet=True, resume=True)
    assert _strip(full) == _strip(resumed)
    pa = torch.load(tmp_path / "a" / "policy.pt", weights_only=True)["state_dict"]
    pb = torch.load(tmp_path / "b" / "policy.pt", weights_only=True)["state_dict"]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0)


def _context(env_id: str, **env_kwargs: Any) -> dict[str, Any]:
    env = gym.make(env_id, **env_kwargs)
    _l, fam, dfl = resolve_env(env)
    return {"env_id": env_id, "family": fam, "history": dfl["history"],
            "max_step": dfl["max_step"], "device": "cpu", "observation": dfl["observation"],
            "features": dfl["features"]}, env


def test_the_trained_policy_transfers_to_other_d_and_families(tmp_path: Path) -> None:
    """Trained on LogisticRegression (d = 4), the policy runs unchanged on dim = 20 and on
    NeuralNet (other groups and kinds' sizes), with flat or coordinatewise observations."""
    train(ENV, tmp_path / "run", make_config("badmm", **{**TINY, "iterations": 1}), quiet=True)
    for env_id, kw in ((ENV, {"dim": 20}), ("optenv/NeuralNet-v0", {}),
                       (ENV, {"observation": "coordinatewise"})):
        ctx, env = _context(env_id, **kw)
        pol = load_for_compare(str(tmp_path / "run"), ctx)
        assert int(pol.kinds.numel()) == ctx["family"].d
        res = evaluate(pol, env, n_test=2, horizon=4, seed=0)
        assert res.f.shape == (2, 5) and bool(torch.isfinite(torch.as_tensor(res.f)).all())
    # one call, bound to the training family by default: acts on its flat observations
    own = load_optimizer(tmp_path / "run")
    obs = torch.zeros(2, StateLayout(4, 25).obs_dim)
    assert own(obs).shape == (2, 4)


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy"):
        make_config("badmm", policy="diagonal")
    with pytest.raises(ValueError, match="hidden"):
        _agent(policy_hidden=())
    train(ENV, tmp_path / "run", make_config("badmm", **{**TINY, "iterations": 1}), quiet=True)
    ctx, _env = _context(ENV, observation="coordinatewise", features="li-malik-2017-psi")
    with pytest.raises(ValueError, match="feature set 'li-malik-2016', the env emits"):
        load_for_compare(str(tmp_path / "run"), ctx)
    ctx, _env = _context(ENV, history=10)
    with pytest.raises(ValueError, match="history"):
        load_for_compare(str(tmp_path / "run"), ctx)
    # a coordinatewise checkpoint does not resume as a flat run, nor the other way round
    with pytest.raises(ValueError):
        train(ENV, tmp_path / "run", make_config("badmm", **{**TINY, "policy": "flat"}),
              quiet=True, resume=True)
    with pytest.raises(ValueError, match="env-kwargs"):
        train(ENV, tmp_path / "other", make_config("badmm", **TINY), quiet=True,
              env_kwargs={"no_such_argument": 1})
    assert family_of(ENV).d == 4


# ------------------------------------------------------------------ the policy's feature sets
@pytest.mark.parametrize("features", ["li-malik-2016", "li-malik-2017-psi"])
def test_the_policy_reads_the_env_rows_of_its_feature_set(features: str) -> None:
    """policy_rows of the sampled 2016 rows at iteration t equal the rows an env in the
    coordinatewise mode emits for that feature set at t."""
    agent = _agent(features=features)
    lay, fs = agent.core.layout, agent.features
    data = {k: v.repeat_interleave(agent.cfg.samples, 0) for k, v in agent.data.items()}
    step = agent.core.start(data, agent.x0.repeat_interleave(agent.cfg.samples, 0))
    g = torch.Generator().manual_seed(0)
    rows16, want = [], []
    for t in range(agent.cfg.horizon):
        rows16.append(agent._sample_inputs(step.state)[1])
        want.append(agent._by_problem(fs.rows(lay, lay.observation(step.state), t)))
        u = 0.1 * torch.randn(step.state.shape[0], lay.d, generator=g, dtype=step.state.dtype)
        step = agent.core.step(data, step.state, step.f, u)
    got = agent.policy_rows(torch.stack(rows16, 2))
    torch.testing.assert_close(got, torch.stack(want, 2).to(got.dtype), rtol=1e-5, atol=1e-6)
    assert got.shape[-1] == fs.width(lay.history) == agent.policy.width


def test_the_linearisation_is_the_policys_jacobian_through_the_features() -> None:
    """With Ψ (a nonlinear map of the row), K is d policy(Ψ(row)) / d z by central
    differences on the LQR state's columns, 0 on x_j, and K z̄ + k is the mean step."""
    agent = _agent(features="li-malik-2017-psi")
    batch = agent.sample(agent.ctrl)
    ctrl = agent._linearise(batch, agent._policy_means(batch))
    z_cols, row_cols = policy_state_columns(agent.core.layout.history, agent.h)
    kinds = agent._problem_kinds()
    rows_bar = batch.obs.mean(1).double()  # [P,T,k16]
    pol = agent.policy.double()

    def mean_step(row: torch.Tensor, p: int, t: int) -> float:
        feats = agent.features.rows(agent.row_layout, row, t)  # [1, 3]
        with torch.no_grad():
            return float(pol(feats[None].to(torch.float64), kinds[p:p + 1])[0])

    for p, t in ((0, 2), (agent.family.d + 1, 4)):
        assert float(ctrl.K[p, t, 0, 0]) == 0.0  # the policy does not see x_j
        for zc, rc in zip(z_cols.tolist(), row_cols.tolist(), strict=True):
            hi, lo = rows_bar[p, t].clone(), rows_bar[p, t].clone()
            eps = 1e-6 * max(1.0, abs(float(hi[rc])))
            hi[rc] += eps
            lo[rc] -= eps
            fd = (mean_step(hi, p, t) - mean_step(lo, p, t)) / (2 * eps)
            assert abs(float(ctrl.K[p, t, 0, zc]) - fd) <= 1e-4 * max(1.0, abs(fd)), (p, t, zc)
        zbar = batch.Z.mean(1)[p, t].double()
        at_mean = float(ctrl.K[p, t, 0].double() @ zbar + ctrl.k[p, t, 0])
        assert abs(at_mean - mean_step(rows_bar[p, t], p, t)) < 1e-4
    agent.policy.float()


def test_a_policy_trained_on_psi_features_transfers_and_says_what_it_reads(tmp_path: Path
                                                                         ) -> None:
    train(ENV, tmp_path / "run", make_config("badmm", **{**TINY, "iterations": 1,
                                                          "features": "li-malik-2017-psi"}),
          quiet=True)
    saved = torch.load(tmp_path / "run" / "policy.pt", weights_only=True)
    assert saved["extra"]["features"] == "li-malik-2017-psi"
    for env_id, kw in ((ENV, {"dim": 20}), ("optenv/NeuralNet-v0", {}),
                       (ENV, {"observation": "coordinatewise", "features": "li-malik-2017-psi"})):
        ctx, env = _context(env_id, **kw)
        pol = load_for_compare(str(tmp_path / "run"), ctx)
        res = evaluate(pol, env, n_test=2, horizon=4, seed=0)
        assert bool(torch.isfinite(torch.as_tensor(res.f)).all())
    ctx, _env = _context(ENV, observation="coordinatewise")  # emits the 2016 rows
    with pytest.raises(ValueError, match="reads feature set 'li-malik-2017-psi', the env emits "
                                         "'li-malik-2016'"):
        load_for_compare(str(tmp_path / "run"), ctx)


def test_feature_sets_are_refused_where_they_cannot_apply(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^features: got 'li-malik-2017-psi' with policy 'flat'"):
        make_config("badmm", **{**TINY, "policy": "flat", "features": "li-malik-2017-psi"})
    with pytest.raises(ValueError, match=r"^features: got 'adam'"):
        make_config("badmm", **{**TINY, "features": "adam"})
    with pytest.raises(ValueError, match=r"history=25 is too short for --features li-malik-2017"):
        train(ENV, tmp_path / "x", make_config("badmm", **{**TINY, "features": "li-malik-2017"}),
              quiet=True, env_kwargs={"history": 25})
    assert not (tmp_path / "x").exists()
