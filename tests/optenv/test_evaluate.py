"""Held-out evaluation (optenv.evaluate) and its metrics (optenv.metrics) on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from baselines.optimizers import GD, OptimizerPolicy, make_optimizer
from optenv.env import OptimizationEnv
from optenv.evaluate import evaluate
from optenv.families import Quadratic
from optenv.metrics import (
    f_at_evaluation_budget,
    fraction_diverged,
    margin_of_victory,
    margin_of_victory_per_objective,
    mean_ci,
    median_ci,
    pairwise_win_fraction,
    summarize,
)
from optenv.registration import family_of

ENV = "optenv/Quadratic-v0"


def test_evaluate_records_f_at_x0_and_every_iteration_of_test_objectives():
    ev = evaluate(GD(lr=0.5), ENV, n_test=7, horizon=12)
    assert ev.f.shape == (7, 13) and ev.nonfinite.shape == (7,) and ev.split == "test"
    fam = family_of(ENV)
    data, x0 = fam.sample(list(range(7)), split="test")
    np.testing.assert_allclose(ev.f[:, 0], fam.value_and_grad(x0, data)[0].numpy())
    assert (np.diff(ev.f, axis=1) <= 1e-15).all()  # GD with a stable step decreases f


def test_evaluate_is_seeded_and_the_seed_selects_the_objectives():
    a = evaluate(make_optimizer("adam"), ENV, n_test=5, horizon=6, seed=3)
    b = evaluate(make_optimizer("adam"), ENV, n_test=5, horizon=6, seed=3)
    c = evaluate(make_optimizer("adam"), ENV, n_test=5, horizon=6, seed=4)
    np.testing.assert_array_equal(a.f, b.f)
    np.testing.assert_array_equal(a.f[1:], c.f[:4])  # seeds 4..7 are shared
    assert a.seeds.tolist() == [3, 4, 5, 6, 7]


def test_policy_callable_matches_the_direct_run_when_steps_are_not_clipped():
    env = OptimizationEnv("Quadratic")
    policy = OptimizerPolicy(GD(lr=0.5), env.observation_layout, max_step=100.0)
    via_policy = evaluate(policy, ENV, n_test=6, horizon=10, max_step=100.0,
                          obs_dtype="float64")
    direct = evaluate(GD(lr=0.5), ENV, n_test=6, horizon=10)
    np.testing.assert_allclose(via_policy.f, direct.f, rtol=1e-12, atol=1e-14)
    assert via_policy.info["kind"] == "predict" and direct.info["kind"] == "direct"


def test_policy_evaluation_follows_the_env_step_for_step():
    # A constant action of 5 is clipped to 1 by the env: evaluation must do the same.
    def push(obs: torch.Tensor) -> torch.Tensor:
        return torch.full((obs.shape[0], 10), 5.0)

    ev = evaluate(push, ENV, n_test=3, horizon=5, seed=2)
    env = OptimizationEnv("Quadratic", split="test")
    for i in range(3):
        _, info = env.reset(seed=2 + i)
        fs = [info["f"]]
        for _ in range(5):
            _, _, _, _, info = env.step(np.full(10, 5.0, dtype=np.float32))
            fs.append(info["f"])
        np.testing.assert_allclose(ev.f[i], fs, rtol=1e-12)


def test_sb3_style_model_gets_numpy_batches_and_deterministic_flag():
    seen = {}

    class FakeModel:
        def predict(self, obs, deterministic=False):
            seen["type"], seen["shape"], seen["det"] = type(obs), obs.shape, deterministic
            return np.zeros((obs.shape[0], 10), dtype=np.float32), None

    ev = evaluate(FakeModel(), ENV, n_test=4, horizon=3)
    obs_dim = OptimizationEnv("Quadratic").observation_space.shape[0]
    assert seen == {"type": np.ndarray, "shape": (4, obs_dim), "det": True}
    np.testing.assert_allclose(ev.f, np.repeat(ev.f[:, :1], 4, axis=1))


def test_real_sb3_model_can_be_evaluated():
    import gymnasium as gym
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("optenv/Quadratic-v0"), n_steps=8, batch_size=8,
                seed=0, device="cpu")
    ev = evaluate(model, ENV, n_test=3, horizon=4)
    assert ev.f.shape == (3, 5) and np.isfinite(ev.f).all()


def test_non_finite_actions_count_as_divergence_without_aborting():
    def bad(obs: torch.Tensor) -> torch.Tensor:
        a = torch.zeros(obs.shape[0], 10)
        a[0] = float("nan")
        return a

    ev = evaluate(bad, ENV, n_test=3, horizon=4)
    assert ev.nonfinite.tolist() == [True, False, False]
    assert np.isinf(ev.f[0, 1:]).all() and ev.diverged.tolist() == [True, False, False]


def test_longer_horizon_on_request_and_family_objects_accepted():
    ev = evaluate(make_optimizer("gd"), Quadratic(dim=3), n_test=2, horizon=100)
    assert ev.f.shape == (2, 101)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_test": 0}, "n_test"),
    ({"horizon": 0}, "horizon"),
    ({"env": "optenv/Nope-v0"}, "env"),
    ({"env": "CartPole-v1"}, "env"),
    ({"method": 42}, "method"),
    ({"method": "sgd-ish"}, "method"),
])
def test_bad_evaluate_arguments_raise_value_error(kwargs, match):
    args = {"method": "gd", "env": ENV, **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(args.pop("method"), args.pop("env"), **args)


# ---------------------------------------------------------------------- metrics
def test_margin_of_victory_is_best_other_minus_own_on_hand_made_curves():
    a = np.array([[1.0, 0.5], [2.0, 1.0]])
    b = np.array([[1.0, 0.7], [2.0, 0.5]])
    c = np.array([[1.0, 0.6], [2.0, 2.0]])
    per = margin_of_victory_per_objective({"a": a, "b": b, "c": c})
    np.testing.assert_allclose(per["a"], [[0.0, 0.1], [0.0, -0.5]])
    mov = margin_of_victory({"a": a, "b": b, "c": c})
    np.testing.assert_allclose(mov["a"], [0.0, -0.2])
    np.testing.assert_allclose(mov["b"], [0.0, (-0.2 + 0.5) / 2])
    np.testing.assert_allclose(mov["c"], [0.0, (-0.1 - 1.5) / 2])


def test_margin_of_victory_skips_diverged_entries_and_needs_two_methods():
    a = np.array([[1.0, np.inf], [1.0, 0.2]])
    b = np.array([[1.0, 0.3], [1.0, 0.4]])
    mov = margin_of_victory({"a": a, "b": b})
    np.testing.assert_allclose(mov["a"], [0.0, 0.2])  # only objective 2 counts at t = 1
    np.testing.assert_allclose(mov["b"], [0.0, -0.2])
    with pytest.raises(ValueError, match="at least 2"):
        margin_of_victory({"a": a})


def test_pairwise_win_fraction_counts_iterations_with_a_positive_mean_margin():
    a = np.array([[1.0, 0.5, 0.4, 0.3], [1.0, 0.5, 0.4, 0.1]])
    b = np.array([[1.0, 0.6, 0.3, 0.3], [1.0, 0.6, 0.6, 0.1]])
    wins = pairwise_win_fraction({"a": a, "b": b})
    # t=1: a ahead by 0.1; t=2: mean margin (-0.1 + 0.2)/2 > 0; t=3: a tie is not a win
    assert wins["a"]["b"] == pytest.approx(2 / 3)
    assert wins["b"]["a"] == pytest.approx(0.0)


def test_pairwise_win_fraction_uses_objectives_finite_for_both_and_checks_shapes():
    a = np.array([[1.0, np.nan, 0.2], [1.0, 0.5, np.inf]])
    b = np.array([[1.0, 0.1, 0.3], [1.0, 0.6, np.inf]])
    wins = pairwise_win_fraction({"a": a, "b": b})
    assert wins["a"]["b"] == pytest.approx(1.0)  # t=1 on objective 2 only, t=2 on objective 1
    with pytest.raises(ValueError, match="same objectives"):
        pairwise_win_fraction({"a": a, "b": b[:, :2]})
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_win_fraction({"a": a[:, :1], "b": b[:, :1]})


def test_evaluation_budget_view_shows_f_after_the_iterations_a_budget_pays_for():
    f = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    evals = np.array([[0, 3, 4, 7, 8]])  # a line search: 3, 1, 3, 1 evaluations
    np.testing.assert_array_equal(f_at_evaluation_budget(f, evals), [[5.0, 5.0, 5.0, 4.0, 3.0]])
    np.testing.assert_array_equal(f_at_evaluation_budget(f, None), f)
    with pytest.raises(ValueError, match="evals"):
        f_at_evaluation_budget(f, evals[:, :3])


def test_rollout_counts_evaluations_per_iteration_for_line_searches_and_policies():
    from baselines.optimizers import LBFGS

    ev = evaluate(LBFGS(), "optenv/LogisticRegression-v0", n_test=5, horizon=6)
    assert ev.evals.shape == (5, 7) and (ev.evals[:, 0] == 0).all()
    steps = np.diff(ev.evals, axis=1)
    assert (steps >= 1).all() and steps.sum() == 5 * 6 + ev.extra_evals.sum()
    ev = evaluate(GD(lr=0.1), "optenv/LogisticRegression-v0", n_test=3, horizon=4)
    np.testing.assert_array_equal(ev.evals, np.tile(np.arange(5), (3, 1)))


def test_mean_interval_is_student_t_over_finite_values():
    v = np.array([[1.0], [2.0], [4.0], [np.inf]])
    mean, lo, hi, n = mean_ci(v)
    ref = scipy.stats.t.interval(0.95, 2, loc=7 / 3, scale=scipy.stats.sem([1.0, 2.0, 4.0]))
    assert n[0] == 3 and mean[0] == pytest.approx(7 / 3)
    assert (lo[0], hi[0]) == pytest.approx(ref)


def test_median_interval_uses_order_statistics():
    v = np.arange(100, dtype=float)[:, None]  # sorted values 0..99
    med, lo, hi = median_ci(v)
    # n = 100, 95%: the 40th and 61st order statistics (1-based).
    assert (med[0], lo[0], hi[0]) == (49.5, 39.0, 60.0)
    med, lo, hi = median_ci(np.array([[1.0], [np.nan], [3.0]]))
    assert (med[0], lo[0], hi[0]) == (3.0, 1.0, np.inf)  # too few values: min .. max


def test_fraction_diverged_counts_increase_and_non_finite():
    f = np.array([[1.0, 0.5], [1.0, 1.5], [1.0, np.inf], [1.0, 1.0]])
    assert fraction_diverged(f) == 0.5


def test_summary_reports_final_values_and_fractions():
    f = np.array([[2.0, 1.0, 0.5], [2.0, 1.0, np.inf], [4.0, 3.0, 1.5]])
    s = summarize(f)
    assert s.final_mean == pytest.approx(1.0) and s.n_finite.tolist() == [3, 3, 2]
    assert s.final_median == 1.5 and s.fraction_nonfinite == pytest.approx(1 / 3)
    np.testing.assert_array_equal(s.final_f, f[:, -1])
    with pytest.raises(ValueError, match="f: got shape"):
        summarize(np.zeros(3))
