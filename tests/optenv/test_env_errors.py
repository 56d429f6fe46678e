"""The single env's errors: bad reset options, bad actions and bad constructor arguments
raise ValueError naming them and leave the env as it was; stepping before reset is an
error.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from optenv import OptimizationEnv


def _bad_reset_options(env):
    d = env.action_space.shape[0]
    problem = env.unwrapped.problem
    key = sorted(problem)[0]
    missing = {k: v for k, v in problem.items() if k != key}
    wrong_shape = {**problem, key: np.zeros((*problem[key].shape, 2))}
    nan_problem = {**problem, key: np.full(problem[key].shape, np.nan)}
    return [
        {"x0": np.zeros(d + 1)},
        {"x0": np.full(d, np.nan)},
        {"x0": np.full(d, np.inf)},
        {"problem": missing},
        {"problem": {**problem, "extra": np.zeros(3)}},
        {"problem": wrong_shape},
        {"problem": nan_problem},
        {"problem": "not a dict"},
        {"x0": np.zeros(d), "problem": nan_problem},
        {"unknown_option": 1},
    ]


def test_bad_reset_option_raises_and_leaves_the_env_unchanged(env_id):
    env, twin = gym.make(env_id).unwrapped, gym.make(env_id).unwrapped
    for e in (env, twin):
        e.reset(seed=8)
        e.step(np.full(e.action_space.shape, 0.3, np.float32))
    for options in _bad_reset_options(env):
        with pytest.raises(ValueError, match="options"):
            env.reset(options=options)
        np.testing.assert_array_equal(env.state, twin.state)
        assert env.problem.keys() == twin.problem.keys()
        for key, value in env.problem.items():
            np.testing.assert_array_equal(value, twin.problem[key])
    # nothing moved, np_random included: the next reset draws what the twin's draws
    (oa, ia), (ob, ib) = env.reset(), twin.reset()
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["x"], ib["x"])
    assert ia["episode_index"] == ib["episode_index"] == 1


def test_a_failed_reset_under_time_limit_cannot_stretch_the_episode(env_id):
    """Gymnasium's TimeLimit zeroes its step count before it calls the env's reset; were the
    env to go on with the old episode after a failed reset, that episode would run past its
    horizon (40 steps became 70). The env refuses to step until a reset succeeds, and the
    episode after it ends at the horizon."""
    env = gym.make(env_id, max_episode_steps=5)
    env.reset(seed=1)
    a = np.zeros(env.action_space.shape, np.float32)
    for _ in range(3):
        env.step(a)
    with pytest.raises(ValueError, match="x0"):
        env.reset(options={"x0": np.full(env.action_space.shape, np.nan)})
    with pytest.raises(RuntimeError, match=r"reset\(\) raised \(ValueError: options\['x0'\]"):
        env.step(a)
    env.reset()
    steps = [env.step(a) for _ in range(5)]
    assert [out[3] for out in steps] == [False] * 4 + [True]
    assert int(steps[-1][4]["t"]) == 5


def _bad_actions(d):
    return [
        (np.zeros(d + 1, np.float32), rf"\({d},\)"),
        (np.zeros((1, d), np.float32), rf"\({d},\)"),
        (np.zeros(0, np.float32), rf"\({d},\)"),
        (np.float32(0.5), rf"\({d},\)"),
        (np.full(d, np.nan, np.float32), "action"),
        (np.array([np.inf] + [0.0] * (d - 1), np.float32), "action"),
        (np.array([0.0] * (d - 1) + [-np.inf], np.float64), "action"),
        (["a"] * d, "action"),
    ]


def test_bad_actions_raise_value_error_and_leave_the_env_unchanged(env_id):
    env, twin = gym.make(env_id), gym.make(env_id)
    for e in (env, twin):
        e.reset(seed=2)
        e.step(np.full(e.action_space.shape, 0.1, np.float32))
    d = env.action_space.shape[0]
    for action, pattern in _bad_actions(d):
        with pytest.raises(ValueError, match=pattern):
            env.step(action)
        np.testing.assert_array_equal(env.unwrapped.state, twin.unwrapped.state)
    a = np.full(d, 0.7, np.float32)
    ra, rb = env.step(a), twin.step(a)
    np.testing.assert_array_equal(ra[0], rb[0])
    assert ra[1:4] == rb[1:4] and ra[4]["t"] == rb[4]["t"] == 2


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"history": 0}, "history"),
        ({"history": 2.5}, "history"),
        ({"wobble": 3}, "wobble"),
        ({"split": "validation"}, "split"),
        ({"dtype": "float16"}, "dtype"),
        ({"dtype": "int64"}, "dtype"),
        ({"max_step": 0.0}, "max_step"),
        ({"max_step": float("nan")}, "max_step"),
        ({"divergence_penalty": -1.0}, "divergence_penalty"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(env_id, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        gym.make(env_id, **kwargs)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"render_mode": "human"}, "render_mode"),
        ({"family": "NoSuchFamily"}, "family"),
        ({"family": "Quadratic", "dim": 0}, "dim"),
        ({"family": "NeuralNet", "hidden": -2}, "hidden"),
    ],
)
def test_bad_direct_constructor_arguments_raise_value_error(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        OptimizationEnv(**kwargs)


def test_step_before_reset_is_an_error():
    env = OptimizationEnv("Quadratic")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(10, np.float32))


@pytest.mark.parametrize("make", [gym.make, gym.make_vec])
def test_unknown_keyword_is_a_type_error_in_pythons_words(make):
    # Clients probe constructors with keywords and drop the ones refused this way (TorchRL's
    # GymEnv passes frameskip and retries without it on such a TypeError)
    with pytest.raises(TypeError, match="unexpected keyword argument 'frameskip'") as err:
        make("optenv/Quadratic-v0", frameskip=4)
    assert isinstance(err.value, ValueError), "still the package's error for a bad argument"
    assert "allowed: dim, condition_number" in str(err.value)


def test_unknown_keywords_with_a_ready_family_instance_are_a_type_error_too():
    family = OptimizationEnv("Quadratic").family
    with pytest.raises(TypeError, match="unexpected keyword argument 'dim'"):
        OptimizationEnv(family, dim=3)
