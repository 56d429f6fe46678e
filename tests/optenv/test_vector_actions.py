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


def test_actions_that_require_grad_never_join_the_env_to_the_autograd_graph():
    """The step is not differentiable: actions are detached, so an action carrying a graph
    (a policy's output, say) neither fails nor keeps every past step's graph alive through
    the env's buffers (memory grew without bound, 253 MB to 3.1 GB in 3 000 steps)."""
    venv = OptimizationVectorEnv("LogisticRegression", 4, max_episode_steps=3)
    policy = torch.nn.Linear(venv.single_observation_space.shape[0], 4).double()
    obs, _ = venv.reset(seed=0)
    for _ in range(5):  # across an autoreset
        actions = policy(obs.double())
        assert actions.requires_grad
        obs, reward, _, _, infos = venv.step(actions)
        for t in (obs, reward, infos["f"], venv.state, venv.x, *venv.problem.values()):
            assert not t.requires_grad and t.grad_fn is None
    x0 = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    venv.reset(options={"x0": x0 * 2})
    assert venv.state.grad_fn is None


def test_single_env_takes_an_action_tensor_that_requires_grad():
    env = gym.make("optenv/Quadratic-v0")
    env.reset(seed=0)
    action = torch.full((10,), 0.1, requires_grad=True)
    obs, _, _, _, info = env.step(action * 1.0)
    assert np.isfinite(obs).all() and int(info["t"]) == 1
