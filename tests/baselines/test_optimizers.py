"""Hand-designed optimisers: torch.optim equivalence through the env, line searches, tuning."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from baselines.optimizers import (
    CG,
    GD,
    LBFGS,
    OPTIMIZERS,
    Adam,
    Momentum,
    OptimizerPolicy,
    make_optimizer,
    make_policy,
    run_optimizer,
)
from baselines.tuning import grid_search
from optenv.env import OptimizationEnv
from optenv.families import LogisticRegression, Quadratic

# (our name, our hyper-parameters, torch.optim class, its keyword arguments)
TORCH_CASES = [
    ("gd", {"lr": 0.7}, torch.optim.SGD, {"lr": 0.7}),
    ("momentum", {"lr": 0.3, "momentum": 0.8}, torch.optim.SGD, {"lr": 0.3, "momentum": 0.8}),
    ("nesterov", {"lr": 0.3, "momentum": 0.8}, torch.optim.SGD,
     {"lr": 0.3, "momentum": 0.8, "nesterov": True}),
    ("adam", {"lr": 0.05, "beta1": 0.8, "beta2": 0.99}, torch.optim.Adam,
     {"lr": 0.05, "betas": (0.8, 0.99)}),
    ("adagrad", {"lr": 0.3}, torch.optim.Adagrad, {"lr": 0.3}),
    ("rmsprop", {"lr": 0.02, "alpha": 0.9}, torch.optim.RMSprop, {"lr": 0.02, "alpha": 0.9}),
    ("rmsprop", {"lr": 0.02, "momentum": 0.5, "centered": 1.0}, torch.optim.RMSprop,
     {"lr": 0.02, "momentum": 0.5, "centered": True}),
]


def _torch_trajectory(env: OptimizationEnv, x0: np.ndarray, cls: type, kwargs: dict,
                      steps: int) -> np.ndarray:
    """Iterates of a torch.optim optimiser on the env's current objective, from x0."""
    fam = env.unwrapped.family
    data = {k: torch.as_tensor(v).unsqueeze(0) for k, v in env.unwrapped.problem.items()}
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = cls([x], **kwargs)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        fam.objective(x.unsqueeze(0), data)[0].backward()
        opt.step()
        out.append(x.detach().numpy().copy())
    return np.stack(out)


@pytest.mark.parametrize(("name", "hyper", "cls", "kwargs"), TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_policy_through_env_reproduces_torch_optim_trajectory(name, hyper, cls, kwargs):
    # A large max_step keeps the env from clipping, so the env's iterates must be torch's.
    env = OptimizationEnv("LogisticRegression", max_step=1e3, dtype="float64")
    env.reset(seed=7)
    d = env.family.d
    x0 = env.unwrapped.state[:d].copy()
    policy = make_policy(name, env, **hyper)
    ours = []
    for _ in range(30):
        obs64 = env.unwrapped.state[d:]  # the observation in float64 (env emits float32)
        _, _, terminated, _, info = env.step(policy(obs64))
        assert not terminated and not info["action_clipped"]
        ours.append(info["x"])
    ref = _torch_trajectory(env, x0, cls, kwargs, 30)
    np.testing.assert_allclose(np.stack(ours), ref, rtol=1e-10, atol=1e-12)


def test_policy_on_float32_observations_tracks_torch_closely():
    env = OptimizationEnv("LogisticRegression", max_step=1e3)
    obs, _ = env.reset(seed=3)
    x0 = env.unwrapped.state[: env.family.d].copy()
    policy = make_policy("adam", env, lr=0.05)
    xs = []
    for _ in range(20):
        obs, *_, info = env.step(policy(obs))
        xs.append(info["x"])
    assert policy(obs).dtype == np.float32  # answers in the observation's dtype
    ref = _torch_trajectory(env, x0, torch.optim.Adam, {"lr": 0.05}, 20)
    np.testing.assert_allclose(np.stack(xs), ref, rtol=1e-4, atol=1e-5)


def test_policy_state_restarts_at_each_episode_start():
    env = OptimizationEnv("Quadratic", max_step=1e3)
    policy = make_policy("adam", env, lr=0.1)

    def episode(pol: OptimizerPolicy) -> list[np.ndarray]:
        obs, _ = env.reset(seed=11)
        xs = []
        for _ in range(10):
            obs, *_, info = env.step(pol(obs))
            xs.append(info["x"])
        return xs

    first = episode(policy)
    again = episode(policy)  # same policy object: the moments must not leak across episodes
    np.testing.assert_array_equal(np.stack(first), np.stack(again))


def test_policy_resets_only_rows_that_start_an_episode():
    env = OptimizationEnv("Quadratic", max_step=1.0)
    lay = env.observation_layout
    policy = OptimizerPolicy.for_env(Momentum(lr=0.1, momentum=0.9), env)
    obs = torch.zeros(2, env.observation_space.shape[0], dtype=torch.float64)
    obs[:, lay["CUR_GRAD"]] = 1.0
    obs[:, lay["PAST_GRADS"]] = 0.5  # mid-episode rows (non-zero history)
    policy(obs)
    a2 = policy(obs)  # momentum has built up: buf = 1.9
    obs[1, lay["PAST_GRADS"]] = 0.0  # row 1 starts a new episode
    a3 = policy(obs)
    assert torch.allclose(a2[0], torch.full_like(a2[0], -0.19))
    assert torch.allclose(a3[0], torch.full_like(a3[0], -0.1 * (0.9 * 1.9 + 1)))
    assert torch.allclose(a3[1], torch.full_like(a3[1], -0.1))  # fresh buffer


def test_policy_predict_follows_sb3_signature():
    env = OptimizationEnv("Quadratic")
    obs, _ = env.reset(seed=0)
    policy = make_policy("gd", env, lr=0.5)
    action, state = policy.predict(obs[None], episode_start=np.array([True]))
    assert action.shape == (1, env.family.d) and state is None


@pytest.mark.parametrize("name", ["cg", "lbfgs"])
def test_line_search_methods_refuse_to_be_policies(name):
    env = OptimizationEnv("Quadratic")
    with pytest.raises(ValueError, match="line-search"):
        make_policy(name, env)


@pytest.mark.parametrize(("name", "hyper", "match"), [
    ("momentum", {"momentum": 1.0}, "momentum"),
    ("gd", {"lr": -1.0}, "lr"),
    ("gd", {"lr": float("nan")}, "lr"),
    ("adam", {"betas": 0.9}, "unknown hyper-parameter"),
    ("nope", {}, "method"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(name, hyper, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, **hyper)


def test_lbfgs_reaches_scipy_optimum_on_logistic_regression():
    fam = LogisticRegression()
    data, x0 = fam.sample(list(range(4)), split="test")
    res = run_optimizer(LBFGS(), fam, data, x0, horizon=60)
    for i in range(4):
        one = {k: v[i:i + 1] for k, v in data.items()}

        def fun(x: np.ndarray, one: dict = one) -> tuple[float, np.ndarray]:
            f, g = fam.value_and_grad(torch.as_tensor(x).unsqueeze(0), one)
            return float(f[0]), g[0].numpy()

        ref = scipy.optimize.minimize(fun, x0[i].numpy(), jac=True, method="L-BFGS-B",
                                      options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 1000})
        assert abs(float(res.f[i, -1]) - ref.fun) < 1e-10
        np.testing.assert_allclose(res.x[i].numpy(), ref.x, atol=1e-5)
    assert not bool(res.nonfinite.any())


def test_cg_solves_quadratics_and_counts_its_line_search_evaluations():
    fam = Quadratic(dim=6, condition_number=50.0)
    data, x0 = fam.sample(list(range(8)), split="test")
    res = run_optimizer(CG(), fam, data, x0, horizon=40)
    assert float(res.f[:, -1].max()) < 1e-12
    # Line searches cost evaluations beyond one per iteration; they are counted per objective.
    assert res.extra_evals.shape == (8,) and bool((res.extra_evals > 0).all())
    gd = run_optimizer(GD(lr=0.5), fam, data, x0, horizon=40)
    assert bool((gd.extra_evals == 0).all())


def test_direct_run_of_gd_is_the_plain_iteration():
    fam = Quadratic(dim=4)
    data, x0 = fam.sample([1, 2, 3], split="test")
    res = run_optimizer(GD(lr=0.3), fam, data, x0, horizon=15)
    x, fs = x0.clone(), []
    for _ in range(16):
        f, g = fam.value_and_grad(x, data)
        fs.append(f)
        x = x - 0.3 * g
    torch.testing.assert_close(res.f, torch.stack(fs, 1), rtol=1e-12, atol=1e-14)


def test_per_row_tensor_hyperparameters_equal_separate_runs():
    fam = LogisticRegression()
    data, x0 = fam.sample([0, 1], split="train")
    both = {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in data.items()}
    lr = torch.tensor([0.05, 0.05, 0.3, 0.3], dtype=torch.float64)
    b1 = torch.tensor([0.9, 0.9, 0.5, 0.5], dtype=torch.float64)
    batched = run_optimizer(Adam(lr=lr, beta1=b1), fam, both, x0.repeat(2, 1), 20)
    a = run_optimizer(Adam(lr=0.05, beta1=0.9), fam, data, x0, 20)
    b = run_optimizer(Adam(lr=0.3, beta1=0.5), fam, data, x0, 20)
    torch.testing.assert_close(batched.f, torch.cat([a.f, b.f]), rtol=1e-12, atol=1e-14)


def test_divergent_runs_are_flagged_and_stay_infinite():
    fam = Quadratic(dim=3)
    data, x0 = fam.sample([0, 1], split="test")
    # The core clamps the state at ±1e12, so only a step that overflows f at once is non-finite.
    lr = torch.tensor([1e200, 0.5], dtype=torch.float64)
    res = run_optimizer(GD(lr=lr), fam, data, x0, horizon=40)
    assert res.nonfinite.tolist() == [True, False]
    assert torch.isinf(res.f[0, -1]) and torch.isfinite(res.f[1]).all()


def test_grid_search_tunes_on_train_split_and_reports_every_point():
    fam = Quadratic(dim=5, condition_number=10.0)
    grid = {"lr": [0.01, 0.1, 1.0, 4.0]}
    res = grid_search("gd", fam, grid=grid, n_train=6, horizon=20)
    # λ_max = 1: lr = 1 is the fastest stable step on this grid, lr = 4 diverges.
    assert res.best["lr"] == 1.0 and res.split == "train"
    assert [row["hyperparameters"]["lr"] for row in res.table] == grid["lr"]
    assert res.table[-1]["n_nonfinite"] > 0 or res.table[-1]["score"] > res.score
    # The batched grid scores what a run at that point alone scores.
    data, x0 = fam.sample(list(range(6)), split="train")
    alone = run_optimizer(GD(lr=0.1), fam, data, x0, 20).f[:, 1:].mean().item()
    assert res.table[1]["score"] == pytest.approx(alone, rel=1e-12)
    d = res.to_dict()
    assert d["best"]["lr"] == 1.0 and d["grid"] == grid


def test_every_method_runs_batched_on_every_builtin_family():
    import optenv
    from optenv.registration import family_of

    for env_id in optenv.BUILTIN_IDS:
        fam = family_of(env_id)
        data, x0 = fam.sample([0, 1, 2], split="test")
        for name in OPTIMIZERS:
            res = run_optimizer(make_optimizer(name), fam, data, x0, horizon=5)
            assert res.f.shape == (3, 6), (env_id, name)
            assert bool(torch.isfinite(res.f).all()), (env_id, name)
