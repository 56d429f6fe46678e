"""Stable-Baselines3 trains on optenv: through gym.make and through the batched adapter."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import optenv
import optenv.sb3 as optenv_sb3

HAS_ADAPTER = hasattr(optenv_sb3, "SB3VecEnv")
needs_adapter = pytest.mark.skipif(not HAS_ADAPTER, reason="optenv.sb3.SB3VecEnv not written yet")


def _ppo(env, **kw):
    return PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu",
               **kw)


def test_ppo_trains_through_gym_make():
    env = gym.make("optenv/LogisticRegression-v0")
    model = _ppo(env).learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    lengths = [ep["l"] for ep in model.ep_info_buffer]
    assert lengths and all(n == 40 for n in lengths)
    assert all(np.isfinite(ep["r"]) for ep in model.ep_info_buffer)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (4,) and np.isfinite(action).all()


@needs_adapter
def test_ppo_trains_through_the_batched_sb3_adapter():
    venv = VecMonitor(optenv_sb3.SB3VecEnv("optenv/LogisticRegression-v0", num_envs=4))
    model = _ppo(venv).learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    lengths = [ep["l"] for ep in model.ep_info_buffer]
    assert len(lengths) >= 4 and all(n == 40 for n in lengths)
    assert all(np.isfinite(ep["r"]) for ep in model.ep_info_buffer)


@needs_adapter
@pytest.mark.parametrize("env_id", ["optenv/Quadratic-v0", "optenv/NeuralNet-v0"])
def test_sb3_adapter_matches_dummy_vec_env_including_terminal_observation(env_id):
    n, horizon = 3, 4
    adapter = optenv_sb3.SB3VecEnv(env_id, num_envs=n, max_episode_steps=horizon)
    dummy = DummyVecEnv([lambda: gym.make(env_id, max_episode_steps=horizon)] * n)
    adapter.seed(40)
    dummy.seed(40)
    np.testing.assert_array_equal(adapter.reset(), dummy.reset())
    d = adapter.action_space.shape[0]
    rng = np.random.default_rng(0)
    n_terminal = 0
    for _ in range(2 * horizon + 1):
        a = rng.uniform(-1.2, 1.2, (n, d)).astype(np.float32)
        obs, rew, done, infos = adapter.step(a)
        r_obs, r_rew, r_done, r_infos = dummy.step(a)
        assert obs.dtype == np.float32 and rew.dtype == np.float32
        np.testing.assert_array_equal(obs, r_obs)
        np.testing.assert_array_equal(rew, r_rew)
        np.testing.assert_array_equal(done, r_done)
        for i in range(n):
            assert ("terminal_observation" in infos[i]) == bool(done[i])
            if done[i]:
                n_terminal += 1
                np.testing.assert_array_equal(infos[i]["terminal_observation"],
                                              r_infos[i]["terminal_observation"])
                assert not np.array_equal(infos[i]["terminal_observation"], obs[i])
                assert infos[i]["TimeLimit.truncated"] == r_infos[i]["TimeLimit.truncated"]
                assert infos[i]["TimeLimit.truncated"]
            assert infos[i]["f"] == r_infos[i]["f"]
    assert n_terminal == 2 * n


@needs_adapter
def test_sb3_adapter_reports_divergence_as_a_terminal_non_truncated_done():
    adapter = optenv_sb3.SB3VecEnv("optenv/Quadratic-v0", num_envs=2, max_step=1e200)
    adapter.seed(0)
    adapter.reset()
    a = np.zeros((2, 10), np.float32)
    a[0] = 1.0
    obs, rew, done, infos = adapter.step(a)
    assert done.tolist() == [True, False]
    assert rew[0] == -1000.0 and np.isfinite(rew).all()
    assert np.isfinite(obs).all() and np.isfinite(infos[0]["terminal_observation"]).all()
    assert infos[0]["TimeLimit.truncated"] is False


@needs_adapter
def test_sb3_adapter_rejects_a_vector_env_without_same_step_autoreset():
    venv = optenv.OptimizationVectorEnv("Quadratic", 2, autoreset_mode=AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match="autoreset_mode"):
        optenv_sb3.SB3VecEnv(venv)
    same = optenv.OptimizationVectorEnv("Quadratic", 2, autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="num_envs"):
        optenv_sb3.SB3VecEnv(same, num_envs=2)
    adapter = optenv_sb3.SB3VecEnv(same)
    assert adapter.num_envs == 2
    assert adapter.get_attr("max_step") == [1.0, 1.0]
    with pytest.raises(ValueError, match="indices"):
        adapter.set_attr("max_step", 0.5, indices=[0])
    adapter.reset()
    obs, *_ = adapter.step(torch.zeros(2, 10).numpy())
    assert isinstance(obs, np.ndarray)
