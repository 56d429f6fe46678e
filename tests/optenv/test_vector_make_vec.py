"""The vector env through Gymnasium: make_vec's modes agree, gym.make with the module
prefix works in a fresh process, and numpy_vector_env converts to numpy.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import torch
from vector_env_helpers import to_numpy

import optenv
from optenv import OptimizationVectorEnv


def _make_vec_rollout(env_id, mode, **extra):
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, max_episode_steps=3,
                        **extra)
    obs, _ = venv.reset(seed=12)
    out = [to_numpy(obs)]
    d = venv.single_action_space.shape[0]
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, rew, term, trunc, _ = venv.step(rng.uniform(-1, 1, (2, d)).astype(np.float32))
        out.append((to_numpy(obs), to_numpy(rew).astype(np.float64), to_numpy(term),
                    to_numpy(trunc)))
    venv.close()
    return out


def _assert_rollouts_equal(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    for ra, rb in zip(a[1:], b[1:], strict=True):
        for va, vb in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(va, vb)


def test_make_vec_sync_mode_agrees_with_vector_entry_point(env_id):
    ref = _make_vec_rollout(env_id, "vector_entry_point")
    _assert_rollouts_equal(ref, _make_vec_rollout(env_id, "sync"))
    assert any(r[3].any() for r in ref[1:]), "the rollout crossed a truncation"


def test_make_vec_default_mode_is_the_batched_env():
    venv = gym.make_vec("optenv/LogisticRegression-v0", num_envs=3)
    assert isinstance(venv, OptimizationVectorEnv)
    assert venv.max_episode_steps == 40 and venv.num_envs == 3
    obs, _ = venv.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (3, venv.single_observation_space
                                                           .shape[0])


def test_make_vec_async_with_spawn_agrees_with_vector_entry_point():
    env_id = "optenv/LogisticRegression-v0"
    ref = _make_vec_rollout(env_id, "vector_entry_point")
    got = _make_vec_rollout(env_id, "async", vector_kwargs={"context": "spawn"})
    _assert_rollouts_equal(ref, got)


def test_gym_make_with_module_prefix_works_in_a_fresh_subprocess():
    code = textwrap.dedent("""
        import gymnasium as gym, numpy as np
        env = gym.make("optenv:optenv/LogisticRegression-v0")
        obs, info = env.reset(seed=0)
        obs, r, term, trunc, info = env.step(np.zeros(4, np.float32))
        assert obs.shape == (4 + 25 + 2 * 25 * 4,) and np.isfinite(r) and not term
        venv = gym.make_vec("optenv:optenv/Quadratic-v0", num_envs=2)
        print(type(venv).__name__, round(float(info["f"]), 12))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    name, f = res.stdout.split()
    assert name == "OptimizationVectorEnv"
    env = gym.make("optenv/LogisticRegression-v0")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(4, np.float32))
    assert float(f) == round(info["f"], 12)


def test_numpy_vector_env_gives_numpy_arrays():
    venv = optenv.numpy_vector_env(OptimizationVectorEnv("Quadratic", 2))
    obs, infos = venv.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32
    obs, rew, term, trunc, infos = venv.step(np.zeros((2, 10), np.float32))
    assert all(isinstance(v, np.ndarray) for v in (obs, rew, term, trunc))
    assert isinstance(infos["f"], np.ndarray)
