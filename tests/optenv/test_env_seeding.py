"""The single env's seeding: the same seed gives the same run, other seeds, episodes and
splits give other problems, and an env's instance is the family's sample for its seed.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import optenv


def _rollout(env, seed, n_steps, action_seed=0, reset_after=True):
    """Observations, rewards, flags and infos of a seeded run with seeded random actions."""
    rng = np.random.default_rng(action_seed)
    d = env.action_space.shape[0]
    obs, info = env.reset(seed=seed)
    out = [(obs, info["x"], info["f"])]
    for _ in range(n_steps):
        a = rng.uniform(-1.5, 1.5, size=d).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, info["x"], info["grad"], info["f"]))
        if (term or trunc) and reset_after:
            obs, info = env.reset()
            out.append((obs, info["x"], info["f"]))
    return out


def _assert_same_run(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert len(ra) == len(rb)
        for va, vb in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(va, vb)


def test_same_seed_gives_same_problem_start_and_trajectory(env_id):
    a, b = gym.make(env_id, max_episode_steps=6), gym.make(env_id, max_episode_steps=6)
    _assert_same_run(_rollout(a, 123, 14), _rollout(b, 123, 14))
    for k, v in a.unwrapped.problem.items():
        np.testing.assert_array_equal(v, b.unwrapped.problem[k])


def test_different_seeds_and_episodes_give_different_problems(env_id):
    env = gym.make(env_id)
    _, i1 = env.reset(seed=1)
    p1 = env.unwrapped.problem
    env.reset()
    p1b = env.unwrapped.problem
    _, i2 = env.reset(seed=2)
    p2 = env.unwrapped.problem
    for k in p1:
        if k == "y" and env_id.endswith("LogisticRegression-v0"):
            continue
        assert not np.array_equal(p1[k], p1b[k])
        assert not np.array_equal(p1[k], p2[k])
    assert not np.array_equal(i1["x"], i2["x"])
    _, again = env.reset(seed=1)
    np.testing.assert_array_equal(again["x"], i1["x"])


def test_env_instance_matches_family_sample_for_the_seed(env_id):
    env = gym.make(env_id)
    _, info = env.reset(seed=77)
    fam = optenv.family_of(env_id)
    data, x0 = fam.sample([77])
    np.testing.assert_array_equal(info["x"], x0[0].numpy())
    for k, v in env.unwrapped.problem.items():
        np.testing.assert_array_equal(v, data[k][0].numpy())


def test_test_split_env_differs_from_train_split_env(env_id):
    train, test = gym.make(env_id), gym.make(env_id, split="test")
    _, a = train.reset(seed=5)
    _, b = test.reset(seed=5)
    assert not np.array_equal(a["x"], b["x"])


def test_out_of_range_seed_raises_value_error_naming_the_seed():
    env = gym.make("optenv/Quadratic-v0")
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed=2**63)


def test_unseeded_envs_draw_different_problems():
    a, b = gym.make("optenv/Quadratic-v0"), gym.make("optenv/Quadratic-v0")
    assert not np.array_equal(a.reset()[1]["x"], b.reset()[1]["x"])
