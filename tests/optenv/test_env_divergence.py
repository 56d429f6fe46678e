"""The single env's divergence: non-finite f terminates with the finite penalty, and no
action (random, extreme or scaled by a huge max_step) yields a non-finite observation
or reward.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optenv


def test_quadratic_divergence_terminates_with_the_finite_penalty():
    env = gym.make("optenv/Quadratic-v0", max_step=1e200)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.ones(10, np.float32))
    assert terminated and not truncated and info["diverged"]
    assert reward == -env.unwrapped.divergence_penalty == -optenv.env.DEFAULT_DIVERGENCE_PENALTY
    assert np.isfinite(obs).all() and obs.dtype == np.float32


def test_a_runaway_iterate_is_divergence_even_where_f_stays_finite():
    """f = Σ cos(x) is bounded, so only the iterate tells that the run ran away (|x| > 1e12,
    STATE_LIMIT):
    the clamp that keeps the state finite would otherwise hide it."""
    fam = optenv.FunctionFamily(lambda x, data: torch.cos(x).sum(-1), d=2, name="Waves")
    env = optenv.OptimizationEnv(fam, max_step=1e31, divergence_penalty=5.0)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.ones(2, np.float32))
    assert np.isfinite(info["f"]) and terminated and info["diverged"] and reward == -5.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_env_diverging_keeps_reward_and_observation_finite(env_id, dtype):
    env = gym.make(env_id, max_step=1e300, divergence_penalty=7.5, dtype=dtype)
    obs, _ = env.reset(seed=1)
    a = np.ones(env.action_space.shape, np.float32)
    obs, reward, terminated, truncated, info = env.step(a)
    assert terminated and not truncated and info["diverged"]
    assert reward == -7.5
    assert np.isfinite(obs).all()
    assert np.isfinite(env.unwrapped.state).all()
    for _ in range(3):  # stepping on after termination never produces NaN either
        obs, reward, terminated, _, _ = env.unwrapped.step(-a)
        assert np.isfinite(obs).all() and np.isfinite(reward)


_ENVS: dict[tuple[str, str], gym.Env] = {}


def _cached_env(env_id: str, dtype: str) -> gym.Env:
    if (env_id, dtype) not in _ENVS:
        _ENVS[env_id, dtype] = gym.make(env_id, dtype=dtype, history=3).unwrapped
    return _ENVS[env_id, dtype]


_EXTREME = st.sampled_from([1e300, -1e300, 3.4e38, -3.4e38, 1e-300, -0.0, 1.0, -1.0, 1e10])


_FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64) | _EXTREME


@pytest.mark.parametrize("eid", optenv.BUILTIN_IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_random_and_extreme_finite_actions_keep_observation_and_reward_finite(
    eid, dtype, data, seed
):
    env = _cached_env(eid, dtype)
    d = env.action_space.shape[0]
    env.reset(seed=seed)
    actions = data.draw(st.lists(hnp.arrays(np.float64, (d,), elements=_FLOATS),
                                 min_size=1, max_size=12))
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert np.isfinite(obs).all()
        assert np.isfinite(reward)
        assert not truncated
        assert info["diverged"] == terminated
        assert np.isfinite(info["x"]).all()


@pytest.mark.parametrize("eid", optenv.BUILTIN_IDS)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.sampled_from([1e3, 1e30, 1e200, 1e300]))
def test_huge_max_step_never_yields_nan(eid, seed, scale):
    env = gym.make(eid, max_step=scale, history=2).unwrapped
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        obs, reward, _, _, _ = env.step(rng.choice([-1.0, 1.0], env.action_space.shape))
        assert np.isfinite(obs).all() and np.isfinite(reward)


def test_diverged_observations_keep_normalize_observation_statistics_finite():
    """Gymnasium's NormalizeObservation keeps running statistics of the observations in their
    own dtype, float32, and scales the variance by the count (var · count, then / count): the
    clamp on a diverged run's state must keep that finite for any realistic count, or the
    variance becomes inf and every later normalised observation 0 for good. With the old clamp
    (1e30), and with 1e18, it was inf after the first batch of diverged observations."""
    venv = gym.wrappers.vector.NormalizeObservation(optenv.numpy_vector_env(
        gym.make_vec("optenv/Quadratic-v0", num_envs=64, max_step=1e300)))
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    diverged = 0
    for _ in range(40):
        obs, _, terminated, _, _ = venv.step(rng.choice([-1.0, 1.0], (64, 10)))
        diverged += int(terminated.sum())
    stats = venv.obs_rms
    assert stats.var.dtype == np.float32 and diverged > 500
    assert np.isfinite(stats.var).all() and np.isfinite(stats.mean).all()
    assert np.isfinite(obs).all() and obs.std() > 0
    # the margin: a variance at the clamp squared stays finite for 1e14 observations
    assert np.finfo(np.float32).max > optenv.core.STATE_LIMIT ** 2 * 1e14
