"""The single env's coordinatewise observation: the flat one rearranged (2016 features), the 2017
features against their definitions on the env's own trajectory, shapes, the env checkers, the
spec's JSON round trip, pickling, registration and argument errors.
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import optenv
from optenv.features import FEATURE_SETS

#: (features, history) small enough for fast tests, each set at or near its shortest history
SETS = [("li-malik-2016", 4), ("li-malik-2017", 132), ("li-malik-2017-psi", 2)]
#: SB3's checker warns about every Box whose rank is neither 1 nor 3 ("unconventional shape ...
#: flatten the observation ... or use a custom policy"). A [d, k] Box is what the coordinatewise
#: mode is for, and SB3's MlpPolicy flattens it (tests/optenv/test_sb3.py trains on it), so that
#: advisory is expected here, in the SB3 check of this mode only.
SB3_TWO_DIM_BOX = "has an unconventional shape (neither an image, nor a 1D vector)"


def _actions(env, n, seed=0, scale=0.6):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-scale, scale, env.action_space.shape).astype(np.float32)
            for _ in range(n)]


def test_2016_rows_are_the_flat_observation_rearranged(env_id):
    h = 4
    flat = gym.make(env_id, history=h)
    coord = gym.make(env_id, history=h, observation="coordinatewise")
    d = flat.action_space.shape[0]
    flat_lay, cols = flat.unwrapped.observation_layout, coord.unwrapped.coordinate_layout
    assert coord.unwrapped.observation_layout == cols

    def check(o_flat, o_coord):
        assert o_coord.shape == (d, 3 * h + 1) and o_coord.dtype == np.float32
        grads = o_flat[flat_lay["PAST_GRADS"]].reshape(h, d)
        steps = o_flat[flat_lay["PAST_LOC_DELTAS"]].reshape(h, d)
        for j in range(d):
            np.testing.assert_array_equal(o_coord[j, cols["PAST_OBJ_VAL_DELTAS"]],
                                          o_flat[flat_lay["PAST_OBJ_VAL_DELTAS"]])
            np.testing.assert_array_equal(o_coord[j, cols["PAST_GRADS"]], grads[:, j])
            np.testing.assert_array_equal(o_coord[j, cols["CUR_GRAD"]],
                                          o_flat[flat_lay["CUR_GRAD"]][j:j + 1])
            np.testing.assert_array_equal(o_coord[j, cols["PAST_LOC_DELTAS"]], steps[:, j])

    check(flat.reset(seed=5)[0], coord.reset(seed=5)[0])
    for a in _actions(flat, h + 3):
        rf, rc = flat.step(a), coord.step(a)
        check(rf[0], rc[0])
        assert rf[1:4] == rc[1:4]
    np.testing.assert_array_equal(flat.unwrapped.state, coord.unwrapped.state)


def _average(seq, i):
    """The paper's recent average: mean over iterates max(i−2, 0) .. i."""
    return np.mean(seq[max(i - 2, 0):i + 1], axis=0)


def _phi_reference(xs, fs, gs, t):
    """Li & Malik 2017's Φ, straight from its definition on the raw trajectory (xs, fs, gs
    indexed by iteration), each block oldest first."""
    s = t % 5
    obj = [(_average(fs, t - 5 * i) - _average(fs, t - 5 * (i + 1)))
           / _average(fs, t - 5 * (i + 1)) if t - 5 * (i + 1) >= 0 else 0.0
           for i in range(24, -1, -1)]
    grads = [_average(gs, t - 5 * i) / (np.abs(_average(gs, max(t - 5 * (i + 1), s))) + 1)
             if t - 5 * i >= 0 else np.zeros_like(gs[0]) for i in range(25, -1, -1)]
    ratios = [np.abs(_average(xs, max(t - 5 * (i + 1), s + 5))
                     - _average(xs, max(t - 5 * (i + 2), s)))
              / (np.abs(_average(xs, t - 5 * i) - _average(xs, t - 5 * (i + 1))) + 0.1)
              if t - 5 * (i + 1) >= 0 else np.zeros_like(xs[0]) for i in range(24, -1, -1)]
    d = len(xs[0])
    return np.concatenate([np.tile(np.array(obj, dtype=float), (d, 1)),
                           np.array(grads).T, np.array(ratios).T], axis=1)


def _psi_reference(xs, fs, gs, t):
    """Li & Malik 2017's Ψ from its definition on the raw trajectory."""
    d = len(xs[0])
    obj = (fs[t] - fs[t - 1]) / fs[t - 1] if t >= 1 else 0.0
    grad = gs[t] / (np.abs(gs[max(t - 1, 0)]) + 1)
    ratio = (np.abs((xs[max(t - 1, 1)] - xs[max(t - 2, 0)]) / (np.abs(xs[t] - xs[t - 1]) + 0.1))
             if t >= 1 else np.zeros(d))
    return np.stack([np.full(d, obj), grad, ratio], axis=1)


@pytest.mark.parametrize(("features", "history", "reference"), [
    ("li-malik-2017", 132, _phi_reference), ("li-malik-2017-psi", 2, _psi_reference)])
def test_2017_features_follow_their_definitions_on_the_envs_own_trajectory(
        features, history, reference):
    env = gym.make("optenv/LogisticRegression-v0", observation="coordinatewise",
                   features=features, history=history, max_episode_steps=100)
    obs, info = env.reset(seed=3)
    xs, fs, gs = [info["x"]], [info["f"]], [info["grad"]]
    np.testing.assert_allclose(obs, reference(xs, fs, gs, 0), rtol=1e-5, atol=1e-6)
    for t, a in enumerate(_actions(env, 37, seed=1, scale=0.4), start=1):
        obs, *_, info = env.step(a)
        xs.append(info["x"])
        fs.append(info["f"])
        gs.append(info["grad"])
        np.testing.assert_allclose(obs, reference(xs, fs, gs, t), rtol=1e-5, atol=1e-6,
                                   err_msg=f"t = {t}")
    assert np.abs(obs).max() > 0.1, "the comparison saw non-trivial features"


@pytest.mark.parametrize(("features", "history"), SETS)
def test_k_is_independent_of_d(features, history):
    k = FEATURE_SETS[features].width(history)
    for dim in (1, 6, 30):
        env = gym.make("optenv/LogisticRegression-v0", dim=dim, observation="coordinatewise",
                       features=features, history=history)
        assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (dim + 1, k),
                                                       np.float32)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (dim + 1, k) and env.observation_space.contains(obs)


@pytest.mark.parametrize(("features", "history"), SETS)
def test_every_registered_id_passes_both_checkers_coordinatewise(env_id, features, history,
                                                                 no_unexpected_warnings):
    kwargs = {"observation": "coordinatewise", "features": features, "history": history}
    env = gym.make(env_id, **kwargs)
    with no_unexpected_warnings():
        check_env(env.unwrapped)
    env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    with no_unexpected_warnings() as caught:
        sb3_check_env(env.unwrapped, warn=True, skip_render_check=False)
        sb3_check_env(env, warn=True)
        expected = [w for w in caught if SB3_TWO_DIM_BOX in str(w.message)]
        for w in expected:
            caught.remove(w)
    assert expected, "SB3's checker looked at the 2-D observation"


@pytest.mark.parametrize(("features", "history"), SETS)
def test_spec_json_round_trip_and_pickle_keep_the_mode(features, history):
    env = gym.make("optenv/NeuralNet-v0", observation="coordinatewise", features=features,
                   history=history, max_episode_steps=60)
    spec = EnvSpec.from_json(env.spec.to_json())
    assert spec.kwargs == env.spec.kwargs
    assert (spec.kwargs["observation"], spec.kwargs["features"]) == ("coordinatewise", features)
    remade = gym.make(spec)
    assert remade.observation_space == env.observation_space
    np.testing.assert_array_equal(env.reset(seed=1)[0], remade.reset(seed=1)[0])
    for a in _actions(env, 12):
        np.testing.assert_array_equal(env.step(a)[0], remade.step(a)[0])
    clone = pickle.loads(pickle.dumps(env))
    for a in _actions(env, 6, seed=2):
        np.testing.assert_array_equal(env.step(a)[0], clone.step(a)[0])


def test_the_2017_set_defaults_to_its_history_and_2016_keeps_25():
    env = gym.make("optenv/Quadratic-v0", observation="coordinatewise", features="li-malik-2017")
    assert env.unwrapped.layout.history == 132 and env.observation_space.shape == (10, 76)
    assert gym.make("optenv/Quadratic-v0").unwrapped.layout.history == 25
    psi = gym.make("optenv/Quadratic-v0", observation="coordinatewise",
                   features="li-malik-2017-psi")
    assert psi.unwrapped.layout.history == 25 and psi.observation_space.shape == (10, 3)


def test_an_id_registered_coordinatewise_makes_both_envs_and_its_family():
    env_id = "optenv-test/CoordinatewiseLR-v0"
    optenv.register_objective(env_id, "LogisticRegression", observation="coordinatewise",
                              features="li-malik-2017-psi", history=3, dim=5)
    assert optenv.family_of(env_id).d == 6  # the env's own arguments do not reach the family
    assert gym.make(env_id).observation_space.shape == (6, 3)
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point")
    assert venv.observation_space.shape == (2, 6, 3)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"observation": "grid"}, r"observation: got 'grid', allowed: 'flat', 'coordinatewise'"),
    ({"observation": None}, r"observation: got None"),
    ({"observation": "coordinatewise", "features": "adam"},
     r"features: got 'adam', allowed: 'li-malik-2016', 'li-malik-2017', 'li-malik-2017-psi'"),
    ({"features": "li-malik-2017"},
     r"features: got 'li-malik-2017' with observation='flat', allowed: 'li-malik-2016'"),
    ({"observation": "coordinatewise", "features": "li-malik-2017", "history": 131},
     r"history: got 131, allowed: an int >= 132 for features='li-malik-2017'"),
    ({"observation": "coordinatewise", "features": "li-malik-2017-psi", "history": 1},
     r"history: got 1, allowed: an int >= 2 for features='li-malik-2017-psi'"),
    ({"observation": "coordinatewise", "history": 0}, r"history: got 0, allowed: an int >= 1"),
])
def test_bad_observation_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make("optenv/Quadratic-v0", **kwargs)
    with pytest.raises(ValueError, match=match):
        gym.make_vec("optenv/Quadratic-v0", num_envs=2, vectorization_mode="vector_entry_point",
                     **kwargs)
