"""An env whose state cannot fit in memory is refused before it allocates, with a message that
says how much it needs; the estimate covers what an env really holds."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import optenv.memory
from optenv import OptimizationEnv, OptimizationVectorEnv


@pytest.mark.parametrize(
    "make,kwargs",
    [
        (gym.make, {"id": "optenv/Quadratic-v0", "dim": 10**7}),  # a d x d matrix
        (gym.make, {"id": "optenv/LogisticRegression-v0", "dim": 10**8}),  # 100 x d data
        (gym.make_vec, {"id": "optenv/LogisticRegression-v0", "num_envs": 10**8}),
    ],
)
def test_a_configuration_too_large_for_memory_is_refused_saying_what_it_needs(make, kwargs):
    with pytest.raises(ValueError, match=r"needs about [0-9.]+ [TGMK]iB of memory, but cpu has "
                                         r"[0-9.]+ [TGMK]?i?B free"):
        make(**kwargs)


def test_the_refusal_compares_the_estimate_with_what_the_device_has_free(monkeypatch):
    needed = optenv.memory.estimate_env_bytes(
        OptimizationEnv("Quadratic").family, OptimizationEnv("Quadratic").layout, 1,
        torch.float64, (OptimizationEnv("Quadratic").layout.obs_dim,))
    monkeypatch.setattr(optenv.memory, "available_bytes", lambda device: needed - 1)
    with pytest.raises(ValueError, match=r"one Quadratic env \(d = 10, history 25\) needs"):
        OptimizationEnv("Quadratic")
    monkeypatch.setattr(optenv.memory, "available_bytes", lambda device: needed)
    OptimizationEnv("Quadratic")
    monkeypatch.setattr(optenv.memory, "available_bytes", lambda device: None)  # unknown
    OptimizationVectorEnv("Quadratic", 10**4)


@pytest.mark.parametrize("observation", ["flat", "coordinatewise"])
def test_the_estimate_covers_every_buffer_the_vector_env_allocates(env_id, observation):
    venv = gym.make_vec(env_id, num_envs=16, observation=observation, render_mode="rgb_array",
                        autoreset_mode="SameStep")
    # the env's own tensors and its history rings' (where the state lives since the rings)
    held = sum(t.nelement() * t.element_size()
               for owner in (venv, venv._ring) for t in vars(owner).values()
               if isinstance(t, torch.Tensor))
    held += sum(t.nelement() * t.element_size() for t in venv.problem.values())
    estimate = optenv.memory.estimate_env_bytes(venv.family, venv.layout, 16, venv.dtype,
                                                venv.single_observation_space.shape)
    assert held <= estimate
