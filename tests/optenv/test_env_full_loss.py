"""info["f_full"]: when each env computes the full training loss (the f_full argument)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from optenv.env import OptimizationEnv
from optenv.vector import OptimizationVectorEnv

KW = {"hidden": 4, "batch_size": 4, "history": 2}
ID = "optenv/MLPClassifier-v0"


def _full_loss(env, x):
    return env.family.full_objective(x, env.problem)


def test_vector_env_reports_f_full_only_where_an_episode_ends_by_default():
    venv = OptimizationVectorEnv("MLPClassifier", num_envs=3, max_episode_steps=3, **KW)
    venv.reset(seed=0)
    zeros = torch.zeros(3, venv.family.d)
    for t in range(1, 4):
        _, _, _, trunc, info = venv.step(zeros)
        assert torch.equal(info["_f_full"], trunc)
        if t < 3:
            assert torch.isnan(info["f_full"]).all()
    assert trunc.all()
    torch.testing.assert_close(info["f_full"], _full_loss(venv, venv.x), rtol=0, atol=0)


def test_vector_env_every_step_schedule_matches_the_final_schedule_at_the_end():
    envs = [OptimizationVectorEnv("MLPClassifier", num_envs=2, max_episode_steps=2,
                                  f_full=s, **KW) for s in ("every_step", "final")]
    infos = [e.reset(seed=4)[1] for e in envs]
    assert "f_full" in infos[0] and "f_full" not in infos[1]
    a = torch.full((2, envs[0].family.d), 0.5)
    for _ in range(2):
        every, final = (e.step(a)[-1] for e in envs)
        assert not torch.isnan(every["f_full"]).any()
    torch.testing.assert_close(final["f_full"], every["f_full"], rtol=0, atol=0)


def test_same_step_final_info_carries_the_full_loss_of_the_final_iterate():
    kw = {**KW, "num_envs": 2, "max_episode_steps": 2}
    same = OptimizationVectorEnv("MLPClassifier", autoreset_mode=AutoresetMode.SAME_STEP, **kw)
    ref = OptimizationVectorEnv("MLPClassifier", f_full="every_step", **kw)
    a = torch.full((2, same.family.d), -0.3)
    for e in (same, ref):
        e.reset(seed=9)
    for _ in range(2):
        info = same.step(a)[-1]
        ref_info = ref.step(a)[-1]
    assert info["_final_info"].all() and "f_full" not in info
    torch.testing.assert_close(info["final_info"]["f_full"], ref_info["f_full"], rtol=0, atol=0)
    # the envs restarted: their iterates are new, the final loss is the old episode's
    assert not torch.equal(_full_loss(same, same.x), info["final_info"]["f_full"])


def test_single_env_computes_f_full_on_every_step_only_when_asked():
    final = gym.make(ID, max_episode_steps=3, **KW)
    every = gym.make(ID, max_episode_steps=3, f_full="every_step", **KW)
    _, info_final = final.reset(seed=1)
    _, info_every = every.reset(seed=1)
    assert "f_full" not in info_final and "f_full" in info_every
    a = np.zeros(final.action_space.shape, dtype=np.float32)
    for _ in range(3):
        info_final, info_every = final.step(a)[-1], every.step(a)[-1]
        assert "f_full" not in info_final and isinstance(info_every["f_full"], np.float64)


def test_single_env_reports_f_full_on_the_step_that_diverges():
    env = OptimizationEnv("MLPClassifier", max_step=1e13, **KW)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.ones(env.action_space.shape))
    assert terminated and "f_full" in info


@pytest.mark.parametrize("make", [lambda v: gym.make(ID, f_full=v),
                                  lambda v: gym.make_vec(ID, num_envs=2, f_full=v)],
                         ids=["single", "vector"])
def test_an_unknown_f_full_schedule_is_refused_naming_the_argument(make):
    with pytest.raises(ValueError, match=r"f_full: got 'always', allowed: final, every_step"):
        make("always")
