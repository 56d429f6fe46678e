"""The vector env's constructor: the single env's spaces and layout, batched, and
ValueError naming each bad argument.
"""

from __future__ import annotations

import gymnasium as gym
import pytest

from optenv import OptimizationVectorEnv


def test_observation_layout_matches_the_single_env(env_id):
    venv = gym.make_vec(env_id, num_envs=2, history=3)
    single = gym.make(env_id, history=3)
    assert venv.observation_layout == single.unwrapped.observation_layout
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space.shape == (2, *single.observation_space.shape)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"num_envs": 0}, "num_envs"),
        ({"history": 0}, "history"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"autoreset_mode": "sometimes"}, "autoreset_mode"),
        ({"split": "dev"}, "split"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "not-a-device"}, "device"),
        ({"render_mode": "human"}, "render_mode"),
        ({"max_step": -1.0}, "max_step"),
        ({"cuda_graph": True}, "cuda_graph"),  # on the CPU
        ({"wobble": 1}, "wobble"),
    ],
)
def test_bad_vector_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        OptimizationVectorEnv("Quadratic", **{"num_envs": 2, **kwargs})
