"""The single env survives pickling mid-episode and its spec's JSON round trip."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec


def test_pickle_round_trip_mid_episode_continues_identically(env_id):
    env = gym.make(env_id, max_episode_steps=8)
    rng = np.random.default_rng(0)
    env.reset(seed=9)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone.unwrapped.state, env.unwrapped.state)
    for _ in range(10):
        a = rng.uniform(-1.2, 1.2, env.action_space.shape).astype(np.float32)
        ra, rb = env.step(a), clone.step(a)
        for va, vb in zip(ra[:4], rb[:4], strict=True):
            np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(ra[4]["x"], rb[4]["x"])
        if ra[2] or ra[3]:
            oa, ia = env.reset()
            ob, ib = clone.reset()
            np.testing.assert_array_equal(oa, ob)
            np.testing.assert_array_equal(ia["x"], ib["x"])


@pytest.mark.parametrize("kwargs", [{}, {"history": 5, "max_step": 0.25, "split": "test"}])
def test_spec_json_round_trip_remakes_the_same_env(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    text = env.spec.to_json()
    spec = EnvSpec.from_json(text)
    assert spec.id == env_id
    assert spec.kwargs == env.spec.kwargs
    remade = gym.make(spec)
    assert remade.observation_space == env.observation_space
    o1, i1 = env.reset(seed=4)
    o2, i2 = remade.reset(seed=4)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(i1["x"], i2["x"])
    a = np.full(env.action_space.shape, 0.5, np.float32)
    np.testing.assert_array_equal(env.step(a)[0], remade.step(a)[0])
    assert remade.unwrapped.max_step == env.unwrapped.max_step
    assert remade.unwrapped.split == env.unwrapped.split


def test_spec_json_round_trip_keeps_family_arguments():
    env = gym.make("optenv/LogisticRegression-v0", dim=2)
    remade = gym.make(EnvSpec.from_json(env.spec.to_json()))
    assert remade.action_space.shape == (3,)
    assert remade.unwrapped.family.dim == 2
