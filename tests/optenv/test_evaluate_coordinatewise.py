"""optenv.evaluate with coordinatewise observations: a policy callable sees the rows [B, d, k]
the env would emit, the mode and feature set come from the env (instance or id) or the
arguments, and bad combinations are named.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import optenv
from optenv.evaluate import evaluate

ENV = "optenv/LogisticRegression-v0"


class _RowPolicy:
    """Steps against one gradient-like column of each coordinate's row; records what it saw."""

    def __init__(self, column: int) -> None:
        self.column, self.seen = column, []

    def __call__(self, obs):
        self.seen.append(np.asarray(obs).copy())
        return -0.5 * obs[..., self.column]


@pytest.mark.parametrize(("features", "history", "column"), [
    ("li-malik-2016", 3, 9), ("li-malik-2017", 132, 50), ("li-malik-2017-psi", 2, 1)])
def test_policy_sees_the_envs_rows_step_for_step(features, history, column):
    # column 9 = CUR_GRAD (k = 3H + 1 = 10), 50 = the newest AVG_GRADS_NORMALISED, 1 = Ψ's
    policy = _RowPolicy(column)
    ev = evaluate(policy, ENV, n_test=2, horizon=14, seed=5, observation="coordinatewise",
                  features=features, history=history)
    assert ev.info["observation"] == "coordinatewise" and ev.info["features"] == features
    assert len(policy.seen) == 14 and policy.seen[0].shape == (2, 4, policy.seen[0].shape[2])
    env = gym.make(ENV, split="test", observation="coordinatewise", features=features,
                   history=history, max_episode_steps=100)
    for i in range(2):
        obs, info = env.reset(seed=5 + i)
        fs = [info["f"]]
        for t in range(14):
            np.testing.assert_array_equal(policy.seen[t][i], obs, err_msg=f"t = {t}")
            obs, _, _, _, info = env.step(-0.5 * obs[:, column])
            fs.append(info["f"])
        np.testing.assert_allclose(ev.f[i], fs, rtol=1e-12)


def test_mode_and_features_come_from_an_env_instance_or_a_registered_id():
    shapes = []

    def policy(obs):  # a zero step of the right length in either mode (d = 12, 6 or 4 here)
        shapes.append(tuple(obs.shape))
        return torch.zeros(obs.shape[0], obs.shape[1] if obs.dim() == 3 else 4)

    env = gym.make("optenv/NeuralNet-v0", observation="coordinatewise",
                   features="li-malik-2017-psi", history=4)
    ev = evaluate(policy, env, n_test=3, horizon=2)
    assert shapes == [(3, 12, 3)] * 2 and ev.info["history"] == 4
    env_id = "optenv-test/CoordinatewiseEvalLR-v0"
    optenv.register_objective(env_id, "LogisticRegression", observation="coordinatewise",
                              dim=5)
    shapes.clear()
    ev = evaluate(policy, env_id, n_test=2, horizon=1)
    assert shapes == [(2, 6, 76)] and ev.info["features"] == "li-malik-2016"
    shapes.clear()
    evaluate(policy, ENV, n_test=2, horizon=1)  # a flat id stays flat
    assert shapes == [(2, 229)]


def test_a_feature_set_named_here_takes_its_default_history_unless_the_env_fixes_one():
    def policy(obs):
        return torch.zeros(obs.shape[0], obs.shape[1])

    ev = evaluate(policy, ENV, n_test=2, horizon=1, observation="coordinatewise",
                  features="li-malik-2017")
    assert ev.info["history"] == 132
    fixed = gym.make(ENV, history=25)
    with pytest.raises(ValueError, match=r"history: got 25, allowed: an int >= 132"):
        evaluate(policy, fixed, n_test=2, horizon=1, observation="coordinatewise",
                 features="li-malik-2017")


def test_sb3_style_models_get_numpy_rows():
    seen = {}

    class FakeModel:
        def predict(self, obs, deterministic=False):
            seen["type"], seen["shape"] = type(obs), obs.shape
            return np.zeros(obs.shape[:2], dtype=np.float32), None

    evaluate(FakeModel(), ENV, n_test=4, horizon=2, observation="coordinatewise")
    assert seen == {"type": np.ndarray, "shape": (4, 4, 76)}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"observation": "rows"}, r"observation: got 'rows', allowed: 'flat', 'coordinatewise'"),
    ({"features": "li-malik-2017"}, r"features: got 'li-malik-2017' with observation='flat'"),
    ({"observation": "coordinatewise", "features": "li-malik-2018"},
     r"features: got 'li-malik-2018', allowed: 'li-malik-2016'"),
    ({"observation": "coordinatewise", "features": "li-malik-2017-psi", "history": 1},
     r"history: got 1, allowed: an int >= 2"),
])
def test_bad_observation_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(lambda obs: obs, ENV, n_test=1, horizon=1, **kwargs)
