"""The dtypes a client can count on: float32 rewards unless asked for float64 (the single env's
as Python floats holding float32 values, the vector env's as tensors), bool flags, and infos
as numpy scalars or tensors of fixed dtypes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from optenv import OptimizationEnv, OptimizationVectorEnv


def test_single_env_rewards_are_float32_values_unless_float64_is_asked_for(env_id):
    a = np.full(gym.make(env_id).action_space.shape, 0.3, np.float32)
    for reward_dtype, exact in (("float32", False), ("float64", True)):
        env = gym.make(env_id, reward_dtype=reward_dtype)
        env.reset(seed=5)
        _, reward, terminated, truncated, info = env.step(a)
        assert type(reward) is float  # what Gymnasium's and SB3's checkers ask for
        assert type(terminated) is bool and type(truncated) is bool
        f = float(info["f"])
        assert reward == (-f if exact else float(np.float32(-f)))
    assert float(np.float32(-f)) != -f, "the float32 default rounds this reward"


def test_single_env_info_values_are_numpy_scalars_of_fixed_dtypes(env_id):
    env = gym.make(env_id, dtype="float32")
    _, info = env.reset(seed=0)
    _, _, _, _, step_info = env.step(env.action_space.sample())
    for i in (info, step_info):
        dtypes = {k: np.asarray(v).dtype.name for k, v in i.items()}
        assert all(hasattr(v, "dtype") for v in i.values()), dtypes
        assert dtypes == {"f": "float32", "f0": "float32", "x": "float32", "grad": "float32",
                          "grad_norm": "float32", "t": "int64", "diverged": "bool",
                          "action_clipped": "bool", "seed": "int64", "episode_index": "int64"}


@pytest.mark.parametrize("reward_dtype", ["float32", "float64"])
def test_vector_env_rewards_have_the_asked_dtype_and_match_the_single_env(reward_dtype):
    venv = OptimizationVectorEnv("LogisticRegression", 3, reward_dtype=reward_dtype)
    venv.reset(seed=2)
    a = np.full((3, 4), 0.4)
    _, reward, terminated, truncated, infos = venv.step(a)
    assert reward.dtype == getattr(torch, reward_dtype)
    assert terminated.dtype == truncated.dtype == torch.bool
    assert infos["f"].dtype == infos["grad_norm"].dtype == torch.float64
    assert infos["t"].dtype == torch.int64 and infos["action_clipped"].dtype == torch.bool
    single = OptimizationEnv("LogisticRegression", reward_dtype=reward_dtype)
    single.reset(seed=3)
    assert single.step(a[1])[1] == float(reward[1])


@pytest.mark.parametrize("make", [OptimizationEnv, OptimizationVectorEnv])
def test_bad_reward_dtype_is_a_value_error_naming_it(make):
    with pytest.raises(ValueError, match=r"reward_dtype: got 'float16', allowed: 'float32'"):
        make("Quadratic", reward_dtype="float16")
