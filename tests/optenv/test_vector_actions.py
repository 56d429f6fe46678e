"""The vector env's actions: bad ones raise and change nothing, unchecked non-finite
entries become 0 and are flagged, out-of-bound and huge finite ones are clipped.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from optenv import OptimizationVectorEnv


def test_bad_actions_raise_and_leave_the_vector_env_unchanged(env_id):
    venv = gym.make_vec(env_id, num_envs=2)
    venv.reset(seed=1)
    d = venv.single_action_space.shape[0]
    state, t = venv.state.clone(), venv._t.clone()
    bad = [torch.zeros(2, d + 1), torch.zeros(d), torch.zeros(3, d),
           torch.tensor([[np.nan] * d, [0.0] * d]), torch.full((2, d), np.inf),
           np.full((2, d), -np.inf), [["x"] * d] * 2]
    for a in bad:
        with pytest.raises(ValueError, match="actions"):
            venv.step(a)
        torch.testing.assert_close(venv.state, state, rtol=0, atol=0)
        assert torch.equal(venv._t, t)


def test_unchecked_actions_zero_non_finite_entries_and_flag_them(env_id):
    kw = {"num_envs": 3, "check_actions": False}
    venv, ref = gym.make_vec(env_id, **kw), gym.make_vec(env_id, **kw)
    venv.reset(seed=3)
    ref.reset(seed=3)
    d = venv.single_action_space.shape[0]
    a = torch.full((3, d), 0.5, dtype=torch.float64)
    a[0, 0] = float("nan")
    a[2, -1] = float("-inf")
    clean = a.clone()
    clean[0, 0] = 0.0
    clean[2, -1] = 0.0
    obs, rew, term, _, infos = venv.step(a)
    r_obs, r_rew, _, _, r_infos = ref.step(clean)
    assert infos["invalid_action"].tolist() == [True, False, True]
    assert not r_infos["invalid_action"].any()
    assert not infos["action_clipped"].any()
    torch.testing.assert_close(obs, r_obs, rtol=0, atol=0)
    torch.testing.assert_close(rew, r_rew, rtol=0, atol=0)
    assert not term.any() and torch.isfinite(obs).all()


def test_out_of_bound_actions_are_clipped_and_flagged():
    venv = OptimizationVectorEnv("Quadratic", 2, max_step=0.5)
    venv.reset(seed=0)
    x0 = venv.x.clone()
    a = torch.zeros(2, 10, dtype=torch.float64)
    a[0, 0] = 5.0
    a[1, 1] = -0.25
    _, _, _, _, infos = venv.step(a)
    assert infos["action_clipped"].tolist() == [True, False]
    torch.testing.assert_close(venv.x - x0, 0.5 * a.clamp(-1, 1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [
    "float64",
    "float32",
])
@pytest.mark.parametrize("check_actions", [True, False])
def test_huge_finite_actions_are_clipped_not_rejected(dtype, check_actions):
    venv = OptimizationVectorEnv("Quadratic", 2, dim=3, dtype=dtype, check_actions=check_actions)
    venv.reset(seed=0)
    x0 = venv.x.clone()
    _, rew, _, _, infos = venv.step(np.array([[1e300, -1e300, 0.0], [0.0, 0.0, 0.0]]))
    assert not infos["invalid_action"].any()
    assert infos["action_clipped"].tolist() == [True, False]
    torch.testing.assert_close(venv.x - x0, torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]],
                                                         dtype=venv.x.dtype))
    assert torch.isfinite(rew).all()
