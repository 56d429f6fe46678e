"""Stable-Baselines3 on the coordinatewise vector env: the batched adapter hands SB3 the rows
[N, d, k], SB3's MlpPolicy flattens them and trains.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from optenv.sb3 import SB3VecEnv

ENV = "optenv/LogisticRegression-v0"
ROWS = {"observation": "coordinatewise", "features": "li-malik-2017-psi", "history": 2}


def test_ppo_learns_a_few_hundred_steps_on_the_coordinatewise_adapter():
    venv = VecMonitor(SB3VecEnv(ENV, num_envs=4, **ROWS))
    assert venv.observation_space.shape == (4, 3)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=0,
                device="cpu").learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert model.policy.features_extractor.features_dim == 12  # the [4, 3] rows, flattened
    lengths = [ep["l"] for ep in model.ep_info_buffer]
    assert len(lengths) >= 4 and all(n == 40 for n in lengths)
    obs = venv.reset()
    assert obs.shape == (4, 4, 3)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (4, 4) and np.isfinite(action).all()


def test_adapter_rows_and_terminal_rows_match_dummy_vec_env_of_single_envs():
    n, horizon = 2, 3
    adapter = SB3VecEnv(ENV, num_envs=n, max_episode_steps=horizon, **ROWS)
    dummy = DummyVecEnv([lambda: gym.make(ENV, max_episode_steps=horizon, **ROWS)] * n)
    adapter.seed(7)
    dummy.seed(7)
    np.testing.assert_array_equal(adapter.reset(), dummy.reset())
    rng = np.random.default_rng(0)
    terminal = 0
    for _ in range(2 * horizon + 1):
        a = rng.uniform(-1, 1, (n, 4)).astype(np.float32)
        obs, rew, done, infos = adapter.step(a)
        r_obs, r_rew, r_done, r_infos = dummy.step(a)
        np.testing.assert_array_equal(obs, r_obs)
        np.testing.assert_array_equal(rew, r_rew)
        np.testing.assert_array_equal(done, r_done)
        for i in range(n):
            if done[i]:
                terminal += 1
                np.testing.assert_array_equal(infos[i]["terminal_observation"],
                                              r_infos[i]["terminal_observation"])
    assert terminal == 2 * n
