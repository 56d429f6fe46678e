"""The single env's reset and step: truncation at the horizon, Gymnasium's episode
statistics, the problem/x0 reset options, action clipping and float32 arithmetic.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest


def test_episode_is_truncated_exactly_at_the_horizon(env_id):
    env = gym.make(env_id, max_episode_steps=7)
    env.reset(seed=0)
    flags = [env.step(np.zeros(env.action_space.shape, np.float32))[2:4] for _ in range(7)]
    assert flags == [(False, False)] * 6 + [(False, True)]
    env.close()


def test_record_episode_statistics_wrapper_reports_episode_return_and_length():
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("optenv/Quadratic-v0",
                                                        max_episode_steps=3))
    env.reset(seed=0)
    total = 0.0
    for _ in range(3):
        _, r, _, truncated, info = env.step(np.zeros(10, np.float32))
        total += r
    assert truncated
    assert info["episode"]["l"] == 3
    assert info["episode"]["r"] == pytest.approx(total)


def test_reset_with_problem_and_x0_options_reproduces_a_run(env_id):
    src, dst = gym.make(env_id), gym.make(env_id)
    obs, info = src.reset(seed=21)
    problem = src.unwrapped.problem
    obs2, info2 = dst.reset(seed=999, options={"problem": problem, "x0": info["x"]})
    np.testing.assert_array_equal(obs, obs2)
    assert info["f"] == info2["f"]
    for k, v in dst.unwrapped.problem.items():
        np.testing.assert_array_equal(v, problem[k])
    a = np.full(src.action_space.shape, -0.4, np.float32)
    np.testing.assert_array_equal(src.step(a)[0], dst.step(a)[0])


def test_reset_with_x0_option_starts_from_that_point(env_id):
    env = gym.make(env_id)
    d = env.action_space.shape[0]
    x0 = np.linspace(-1, 1, d)
    _, info_rand = env.reset(seed=3)
    assert not np.array_equal(info_rand["x"], x0)
    problem = env.unwrapped.problem
    _, info = env.reset(seed=3, options={"x0": x0})
    np.testing.assert_array_equal(info["x"], x0)
    for k, v in env.unwrapped.problem.items():
        np.testing.assert_array_equal(v, problem[k])
    fam = env.unwrapped.family
    import torch

    data = {k: torch.as_tensor(v)[None] for k, v in problem.items()}
    f, g = fam.value_and_grad(torch.as_tensor(x0)[None], data)
    assert info["f"] == pytest.approx(float(f[0]), rel=1e-12)
    np.testing.assert_allclose(info["grad"], g[0].numpy(), rtol=1e-12)


def test_out_of_bound_actions_are_clipped_and_reported():
    env = gym.make("optenv/Quadratic-v0", max_step=0.5)
    _, info = env.reset(seed=0)
    x0 = info["x"]
    a = np.array([3.0, -7.0, 0.5] + [0.0] * 7, np.float32)
    _, _, _, _, info = env.step(a)
    assert info["action_clipped"]
    np.testing.assert_allclose(info["x"] - x0, 0.5 * np.clip(a, -1, 1), rtol=1e-12, atol=1e-15)
    _, _, _, _, info = env.step(np.zeros(10, np.float32))
    assert not info["action_clipped"]


def test_a_normal_step_is_not_terminated(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert not terminated and not info["diverged"] and np.isfinite(reward)


def test_float32_env_computes_in_float32():
    env = gym.make("optenv/LogisticRegression-v0", dtype="float32")
    obs, info = env.reset(seed=0)
    assert env.unwrapped.state.dtype == np.float32 and obs.dtype == np.float32
    ref = gym.make("optenv/LogisticRegression-v0")
    _, info64 = ref.reset(seed=0)
    assert info["f"] == pytest.approx(info64["f"], rel=1e-5)
