"""The single env's registration: every built-in id passes Gymnasium's and SB3's env
checkers and has both entry points and the 40-step horizon.
"""

from __future__ import annotations

import gymnasium as gym
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import optenv


def test_every_registered_id_passes_gymnasium_check_env(env_id, no_unexpected_warnings):
    env = gym.make(env_id)
    with no_unexpected_warnings():
        check_env(env.unwrapped)
    env.close()


def test_every_registered_id_passes_sb3_check_env(env_id, no_unexpected_warnings):
    env = gym.make(env_id, render_mode="rgb_array")
    with no_unexpected_warnings():
        sb3_check_env(env.unwrapped, warn=True, skip_render_check=False)
        sb3_check_env(env, warn=True)
    env.close()


def test_registered_ids_have_both_entry_points_and_a_40_step_horizon():
    assert len(optenv.BUILTIN_IDS) == 4
    for env_id in optenv.BUILTIN_IDS:
        spec = gym.spec(env_id)
        assert spec.entry_point == "optenv.env:OptimizationEnv"
        assert spec.vector_entry_point == "optenv.vector:OptimizationVectorEnv"
        assert spec.max_episode_steps == 40
    optenv.register_envs()  # idempotent
    assert all(i in gym.registry for i in optenv.BUILTIN_IDS)
