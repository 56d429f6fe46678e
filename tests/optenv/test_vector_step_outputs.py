"""What the vector env's step returns: the divergence penalty with finite observations,
float32 agreement with the single env, and copies (default) or live buffers
(copy=False).
"""

from __future__ import annotations

import numpy as np
import torch

import optenv
from optenv import OptimizationVectorEnv


def test_vector_divergence_terminates_with_penalty_and_finite_observation():
    venv = OptimizationVectorEnv("Quadratic", 2, max_step=1e200, divergence_penalty=9.0)
    venv.reset(seed=0)
    obs, rew, term, trunc, infos = venv.step(torch.tensor([[1.0] * 10, [0.0] * 10]))
    assert term.tolist() == [True, False] and not trunc.any()
    assert float(rew[0]) == -9.0 and torch.isfinite(rew).all()
    assert torch.isfinite(obs).all() and infos["f"][1].isfinite()
    obs, rew, term, trunc, _ = venv.step(torch.zeros(2, 10))  # NEXT_STEP: env 0 restarts
    assert not term.any() and float(rew[0]) == 0.0 and torch.isfinite(obs).all()


def test_float32_vector_env_agrees_with_float32_single_env():
    venv = OptimizationVectorEnv("LogisticRegression", 2, dtype="float32")
    single = optenv.OptimizationEnv("LogisticRegression", dtype="float32")
    obs, _ = venv.reset(seed=8)
    s_obs, _ = single.reset(seed=8)
    assert venv.state.dtype == torch.float32
    np.testing.assert_allclose(obs[0].numpy(), s_obs, rtol=1e-5, atol=1e-6)
    a = np.full((2, 4), 0.3, np.float32)
    obs, *_ = venv.step(a)
    s_obs, *_ = single.step(a[0])
    np.testing.assert_allclose(obs[0].numpy(), s_obs, rtol=1e-5, atol=1e-6)


def test_live_buffers_are_updated_in_place_when_copy_is_false():
    venv = OptimizationVectorEnv("Quadratic", 2, copy=False)
    obs0, _ = venv.reset(seed=0)
    state_ptr = venv.state.data_ptr()
    obs1, rew1, *_ = venv.step(torch.zeros(2, 10))
    obs2, rew2, *_ = venv.step(torch.full((2, 10), 0.1))
    assert venv.state.data_ptr() == state_ptr
    assert obs0.data_ptr() == obs1.data_ptr() == obs2.data_ptr()
    assert rew1.data_ptr() == rew2.data_ptr()


def test_returned_tensors_are_not_overwritten_by_later_steps_by_default():
    venv = OptimizationVectorEnv("Quadratic", 2)
    obs0, _ = venv.reset(seed=0)
    kept0 = obs0.clone()
    obs1, rew1, *_ = venv.step(torch.full((2, 10), 0.5))
    kept1 = (obs1.clone(), rew1.clone())
    venv.step(torch.full((2, 10), -1.0))
    torch.testing.assert_close(obs0, kept0, rtol=0, atol=0)
    torch.testing.assert_close(obs1, kept1[0], rtol=0, atol=0)
    torch.testing.assert_close(rew1, kept1[1], rtol=0, atol=0)
    assert not torch.equal(obs0, obs1)
