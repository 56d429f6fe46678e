"""Objective families: exact gradients and Hessians, dtypes, seeding and splits, arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optenv
from optenv import FunctionFamily, ObjectiveFamily, make_family
from optenv.families import index_problem
from optenv.families.groups import GROUP_KINDS, check_groups

FAMILY_CASES = {
    "Quadratic": {},
    "Quadratic-d3-k100": {"dim": 3, "condition_number": 100.0},
    "LogisticRegression": {},
    "LogisticRegression-dim2": {"dim": 2},
    "RobustRegression": {},
    "NeuralNet": {},
    "NeuralNet-3-4": {"inputs": 3, "hidden": 4},
}


def _family(case: str) -> ObjectiveFamily:
    return make_family(case.split("-")[0], **FAMILY_CASES[case])


def rosenbrock(x: torch.Tensor, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """Batched Rosenbrock with a per-instance random 'a' and 'b'."""
    a, b = data["ab"][:, 0], data["ab"][:, 1]
    return (a - x[:, 0]) ** 2 + b * (x[:, 1] - x[:, 0] ** 2) ** 2


def rosenbrock_family() -> FunctionFamily:
    def sampler(rng):
        u = rng.uniform(2)
        return {"ab": torch.stack([0.5 + u[:, 0], 1.0 + 9.0 * u[:, 1]], dim=-1)}

    return FunctionFamily(rosenbrock, d=2, sampler=sampler, name="Rosenbrock", max_step=0.1)


ALL_CASES = [*FAMILY_CASES, "Rosenbrock"]


def _any_family(case: str) -> ObjectiveFamily:
    return rosenbrock_family() if case == "Rosenbrock" else _family(case)


def _central_fd_grad(fam, x, data, eps=1e-6):
    g = torch.zeros_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = eps
        g[:, j] = (fam.objective(x + e, data) - fam.objective(x - e, data)) / (2 * eps)
    return g


@pytest.mark.parametrize("case", ALL_CASES)
def test_gradient_matches_central_finite_differences_float64(case):
    fam = _any_family(case)
    data, x0 = fam.sample([0, 1, 2, 3], dtype=torch.float64)
    x = x0 * 0.5
    f, g = fam.value_and_grad(x, data)
    assert f.shape == (4,) and g.shape == (4, fam.d)
    assert f.dtype == g.dtype == torch.float64
    torch.testing.assert_close(f, fam.objective(x, data), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, _central_fd_grad(fam, x, data), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ALL_CASES)
def test_closed_form_gradient_matches_torch_func_autograd(case):
    fam = _any_family(case)
    data, x = fam.sample([5, 6, 7], dtype=torch.float64)
    f, g = fam.value_and_grad(x, data)
    f_ad, g_ad = ObjectiveFamily.value_and_grad(fam, x, data)
    torch.testing.assert_close(f, f_ad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ALL_CASES)
def test_value_and_grad_is_differentiable_for_bptt(case):
    fam = _any_family(case)
    data, x0 = fam.sample([11, 12], dtype=torch.float64)
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    _, g = fam.value_and_grad(x0, data)
    f1, _ = fam.value_and_grad(x0 - lr * g, data)
    (d_lr,) = torch.autograd.grad(f1.sum(), lr)
    fd = (fam.objective(x0 - (0.1 + 1e-6) * g, data) - fam.objective(x0 - (0.1 - 1e-6) * g, data))
    assert torch.isfinite(d_lr)
    torch.testing.assert_close(d_lr, fd.sum() / 2e-6, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", ALL_CASES)
def test_hessian_matches_finite_differences_of_gradient(case):
    fam = _any_family(case)
    data, x = fam.sample([21, 22], dtype=torch.float64)
    h = fam.hessian(x, data)
    assert h.shape == (2, fam.d, fam.d)
    eps = 1e-6
    cols = []
    for j in range(fam.d):
        e = torch.zeros_like(x)
        e[:, j] = eps
        cols.append((fam.value_and_grad(x + e, data)[1] - fam.value_and_grad(x - e, data)[1])
                    / (2 * eps))
    h_fd = torch.stack(cols, dim=-1)
    torch.testing.assert_close(h, h_fd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(h, h.transpose(-1, -2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ALL_CASES)
def test_float32_sampling_and_evaluation_agree_with_float64(case):
    fam = _any_family(case)
    d32, x32 = fam.sample([3, 4], dtype=torch.float32)
    d64, x64 = fam.sample([3, 4], dtype=torch.float64)
    assert x32.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in d32.values())
    f32, g32 = fam.value_and_grad(x32, d32)
    f64, g64 = fam.value_and_grad(x64, d64)
    assert f32.dtype == g32.dtype == torch.float32
    assert fam.hessian(x32, d32).dtype == torch.float32
    torch.testing.assert_close(f32.double(), f64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("case", ALL_CASES)
def test_train_and_test_splits_give_different_instances(case):
    fam = _any_family(case)
    seeds = list(range(8))
    train, x_train = fam.sample(seeds, split="train")
    test, x_test = fam.sample(seeds, split="test")
    for i in seeds:
        assert not torch.equal(x_train[i], x_test[i]), i
    # Labels (0/1 fields) take few values by design — LogisticRegression's are the fixed half/half
    # split, NeuralNet's one of 14 cluster patterns — so a test instance may repeat a train
    # instance's labels by chance; the continuous fields are what must differ, and do unless
    # two 64-bit keys collide.
    continuous = [k for k, v in train.items() if not bool(((v == 0) | (v == 1)).all())]
    assert continuous, "every family draws continuous data"
    for k in continuous:
        for i in seeds:
            assert not torch.equal(train[k][i], test[k][i]), (k, i)


@pytest.mark.parametrize("case", ALL_CASES)
def test_same_seeds_give_identical_instances(case):
    fam = _any_family(case)
    a, xa = fam.sample([42, 43])
    b, xb = _any_family(case).sample([42, 43])
    assert torch.equal(xa, xb)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k])
    c, xc = fam.sample([42, 43], episodes=1)
    assert not torch.equal(xa, xc)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("case", ALL_CASES)
def test_instance_drawn_alone_equals_it_drawn_inside_a_batch(case):
    fam = _any_family(case)
    batch, xb = fam.sample([9, 100, 7, 2**40 + 3], episodes=[0, 3, 1, 5])
    for i, (seed, ep) in enumerate([(9, 0), (100, 3), (7, 1), (2**40 + 3, 5)]):
        alone, xa = fam.sample([seed], episodes=ep)
        assert torch.equal(xa[0], xb[i])
        for k in batch:
            assert torch.equal(alone[k][0], batch[k][i]), (k, i)


def test_sample_from_generator_is_reproducible_and_rejects_bad_arguments():
    fam = make_family("Quadratic", dim=3)
    a, _ = fam.sample(n=3, generator=torch.Generator().manual_seed(1))
    b, _ = fam.sample(n=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["A"], b["A"])
    with pytest.raises(ValueError, match="generator"):
        fam.sample(n=3)
    with pytest.raises(ValueError, match="exactly one"):
        fam.sample([1], n=2, generator=torch.Generator())
    with pytest.raises(ValueError, match="seeds"):
        fam.sample([-1])


@pytest.mark.parametrize("dim,kappa", [(2, 1.0), (3, 7.5), (10, 10.0), (20, 1e4)])
def test_quadratic_has_exact_condition_number_and_zero_minimum(dim, kappa):
    fam = optenv.Quadratic(dim=dim, condition_number=kappa)
    data, _ = fam.sample(list(range(6)))
    a = data["A"]
    torch.testing.assert_close(a, a.transpose(-1, -2), rtol=0, atol=0)
    eig = torch.linalg.eigvalsh(a)
    assert (eig > 0).all()
    torch.testing.assert_close(eig[:, -1] / eig[:, 0], torch.full((6,), kappa,
                               dtype=torch.float64), rtol=1e-8, atol=0)
    torch.testing.assert_close(eig[:, -1], torch.ones(6, dtype=torch.float64))
    x_star = fam.optimum(data)
    f, g = fam.value_and_grad(x_star, data)
    assert torch.equal(f, torch.zeros(6, dtype=torch.float64))
    assert torch.equal(g, torch.zeros_like(g))
    torch.testing.assert_close(fam.hessian(x_star, data), a)


@pytest.mark.parametrize("kwargs", [{}, {"n_clusters": 2}, {"n_clusters": 3, "inputs": 1}])
def test_neural_net_cluster_labels_are_never_all_equal(kwargs):
    fam = optenv.NeuralNet(**kwargs)
    k, m = fam.n_clusters, fam.points_per_cluster
    data, _ = fam.sample(list(range(2000)))
    labels = data["y"].reshape(2000, k, m)
    assert (labels == labels[:, :, :1]).all(), "each cluster has one label"
    per_cluster = labels[:, :, 0]
    assert set(torch.unique(per_cluster).tolist()) == {0.0, 1.0}
    assert not (per_cluster == per_cluster[:, :1]).all(-1).any()


def test_logistic_regression_data_has_two_half_sized_classes():
    fam = optenv.LogisticRegression()
    data, _ = fam.sample([0, 1])
    assert data["X"].shape == (2, 100, 3)
    assert torch.equal(data["y"].sum(-1), torch.full((2,), 50.0, dtype=torch.float64))
    assert fam.d == 4


def test_robust_regression_shapes_and_bounded_loss():
    fam = optenv.RobustRegression()
    data, x0 = fam.sample([0, 1, 2])
    assert data["X"].shape == (3, 100, 3) and data["y"].shape == (3, 100)
    f = fam.objective(x0 * 1e6, data)
    assert ((f >= 0) & (f <= 1)).all()


@pytest.mark.parametrize(
    "family,kwargs,argument",
    [
        ("Quadratic", {"dim": 0}, "dim"),
        ("Quadratic", {"dim": 2.5}, "dim"),
        ("Quadratic", {"condition_number": 0.5}, "condition_number"),
        ("Quadratic", {"condition_number": float("inf")}, "condition_number"),
        ("Quadratic", {"wobble": 1}, "wobble"),
        ("LogisticRegression", {"dim": -1}, "dim"),
        ("LogisticRegression", {"n_points": 1}, "n_points"),
        ("LogisticRegression", {"lam": -1e-3}, "lam"),
        ("LogisticRegression", {"lam": float("nan")}, "lam"),
        ("RobustRegression", {"c": 0.0}, "c"),
        ("RobustRegression", {"n_clusters": 0}, "n_clusters"),
        ("RobustRegression", {"noise_std": -1.0}, "noise_std"),
        ("NeuralNet", {"n_clusters": 1}, "n_clusters"),
        ("NeuralNet", {"hidden": 0}, "hidden"),
        ("NeuralNet", {"inputs": True}, "inputs"),
        ("NeuralNet", {"layers": 3}, "layers"),
        ("NoSuchFamily", {}, "family"),
    ],
)
def test_bad_family_arguments_raise_value_error_naming_the_argument(family, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_family(family, **kwargs)


def test_function_family_rejects_bad_arguments():
    with pytest.raises(ValueError, match="d"):
        FunctionFamily(rosenbrock, d=0)
    with pytest.raises(ValueError, match="max_step"):
        FunctionFamily(rosenbrock, d=2, max_step=-1.0)
    with pytest.raises(TypeError, match="objective"):
        FunctionFamily("not callable", d=2)


def test_coordinate_groups_partition_the_variables_of_every_family():
    families = [optenv.NeuralNet(), optenv.NeuralNet(inputs=3, hidden=5),
                optenv.LogisticRegression(), optenv.LogisticRegression(dim=7),
                optenv.RobustRegression(), optenv.Quadratic(), optenv.Quadratic(dim=5),
                FunctionFamily(lambda x, data: (x * x).sum(-1), d=3)]
    for fam in families:
        groups = fam.coordinate_groups()
        covered = torch.cat([g.index for g in groups]).sort().values
        assert covered.tolist() == list(range(fam.d)), fam
        assert check_groups(groups, fam.d) == groups
        assert all(g.kind in GROUP_KINDS for g in groups)


def test_coordinate_groups_name_each_weight_matrix_and_bias_vector():
    def summary(fam):
        return [(g.name, g.size, g.kind) for g in fam.coordinate_groups()]

    assert summary(optenv.NeuralNet()) == [("W", 4, "weight"), ("b", 2, "bias"),
                                           ("U", 4, "weight"), ("c", 2, "bias")]
    assert optenv.NeuralNet().d == 12
    assert summary(optenv.LogisticRegression(dim=3)) == [("w", 3, "weight"), ("b", 1, "bias")]
    assert summary(optenv.RobustRegression(dim=2)) == [("w", 2, "weight"), ("b", 1, "bias")]
    assert summary(optenv.Quadratic(dim=4)) == [("x", 4, "other")]


def test_neural_net_unpacks_x_along_its_coordinate_groups():
    fam = optenv.NeuralNet(inputs=3, hidden=5)
    x = torch.arange(fam.d, dtype=torch.float64).unsqueeze(0)
    parts = fam.unpack(x)
    for group, part in zip(fam.coordinate_groups(), parts, strict=True):
        assert torch.equal(part.reshape(-1), x[0, group.index]), group.name


def test_function_family_takes_user_groups_as_a_partition():
    def f(x, data):
        return (x * x).sum(-1)

    fam = FunctionFamily(f, d=5, groups={"a": slice(0, 2), "odd": ([2, 4], "bias"), "m": [3]})
    assert [(g.name, g.index.tolist(), g.kind) for g in fam.coordinate_groups()] == [
        ("a", [0, 1], "other"), ("odd", [2, 4], "bias"), ("m", [3], "other")]
    assert fam.coordinate_groups()[1].as_slice() is None
    assert fam.coordinate_groups()[0].as_slice() == slice(0, 2)
    assert [g.name for g in FunctionFamily(f, d=5).coordinate_groups()] == ["x"]


@pytest.mark.parametrize(("groups", "match"), [
    ({"a": [0, 1], "b": [1, 2, 3, 4]}, r"do not partition.*more than one group \[1\]"),
    ({"a": [0, 1], "b": [3, 4]}, r"do not partition.*missing \[2\]"),
    ({"a": [0, 1, 2, 3, 4, 5]}, r"outside 0\.\.4"),
    ({"a": ([0, 1, 2, 3, 4], "matrix")}, r"kind 'matrix', allowed: weight, bias, other"),
    ({"a": [0.0, 1.0]}, r"1-D sequence of ints"),
    ({"a": [], "b": [0, 1, 2, 3, 4]}, r"'a' is empty"),
    ({}, r"unique, non-empty"),
    ("abc", r"allowed: a dict"),
])
def test_groups_that_are_not_a_partition_raise_naming_the_argument(groups, match):
    with pytest.raises(ValueError, match=r"^groups: .*" + match):
        FunctionFamily(lambda x, data: x.sum(-1), d=5, groups=groups)


def test_index_problem_selects_instances():
    fam = optenv.Quadratic(dim=3)
    data, _ = fam.sample([1, 2, 3])
    one = index_problem(data, slice(1, 2))
    alone, _ = fam.sample([2])
    assert torch.equal(one["A"], alone["A"])


def test_function_family_rosenbrock_runs_through_the_env_and_passes_the_checkers(
    no_unexpected_warnings,
):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    fam = rosenbrock_family()
    env = optenv.OptimizationEnv(fam, history=4, render_mode="rgb_array")
    with no_unexpected_warnings():
        check_env(env, skip_render_check=True)  # no spec to remake it in other modes
        sb3_check_env(env)
    obs, info = env.reset(seed=3)
    assert obs.shape == (2 + 4 + 2 * 4 * 2,)
    ab = env.problem["ab"]
    x = info["x"]
    expected_f = (ab[0] - x[0]) ** 2 + ab[1] * (x[1] - x[0] ** 2) ** 2
    np.testing.assert_allclose(info["f"], expected_f, rtol=1e-12)
    expected_g = [-2 * (ab[0] - x[0]) - 4 * ab[1] * x[0] * (x[1] - x[0] ** 2),
                  2 * ab[1] * (x[1] - x[0] ** 2)]
    np.testing.assert_allclose(info["grad"], expected_g, rtol=1e-10)
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, -1.0], np.float32))
    np.testing.assert_allclose(info["x"], x + np.array([0.1, -0.1]), rtol=1e-12)
    assert reward == np.float32(-info["f"])
    assert not terminated and not truncated
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


def test_registered_user_family_works_through_gym_make():
    import gymnasium as gym

    optenv.register_family("TestRosenbrock", lambda: rosenbrock_family())
    optenv.register_objective("optenv_tests/TestRosenbrock-v0", "TestRosenbrock",
                              max_episode_steps=5, history=3)
    env = gym.make("optenv_tests/TestRosenbrock-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2 + 3 + 2 * 3 * 2,)
    steps = 0
    truncated = False
    while not truncated:
        _, _, _, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert steps == 5
    with pytest.raises(ValueError, match="already registered"):
        optenv.register_objective("optenv_tests/TestRosenbrock-v0", "TestRosenbrock",
                                  max_episode_steps=6)
    env.close()


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_stated_problem_shapes_are_the_shapes_a_draw_makes(case):
    fam = _family(case)
    data, _ = fam.sample([3])
    assert fam.problem_shapes() == {k: tuple(v.shape[1:]) for k, v in data.items()}
    assert fam.draw_numel() >= sum(v.numel() for v in data.values())
