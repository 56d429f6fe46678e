"""The vector env against N single envs, step by step through episode ends, in every
autoreset mode (NEXT_STEP, SAME_STEP, DISABLED), on both reset paths (by index on the
CPU, by masked select as on accelerators).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from vector_env_helpers import MODES, random_actions, to_numpy

from optenv import OptimizationVectorEnv

N_ENVS, HORIZON, N_STEPS = 3, 3, 9


def _assert_env_i_matches(venv_out, i, single_out, *, same=True):
    """venv (obs, reward, terminated, truncated, infos) at env i vs the single env's tuple."""
    obs, rew, term, trunc, infos = venv_out
    s_obs, s_rew, s_term, s_trunc, s_info = single_out
    np.testing.assert_array_equal(to_numpy(obs[i]), s_obs)
    assert float(rew[i]) == s_rew
    assert bool(term[i]) == s_term and bool(trunc[i]) == s_trunc
    np.testing.assert_equal(float(infos["f"][i]), s_info["f"])  # NaN == NaN on divergence
    assert int(infos["t"][i]) == s_info["t"]


def _run_and_compare(env_id, mode, seed, *, seeds_list=None, diverge_at=None,
                     masked_resets=False, **kwargs):
    """Step a vector env and N single envs side by side through several episode ends
    (``masked_resets``: with the accelerators' reset path, on the CPU)."""
    venv = gym.make_vec(env_id, num_envs=N_ENVS, vectorization_mode="vector_entry_point",
                        max_episode_steps=HORIZON, autoreset_mode=mode, **kwargs)
    assert isinstance(venv, OptimizationVectorEnv)
    if masked_resets:
        venv._index_resets = False
    singles = [gym.make(env_id, max_episode_steps=HORIZON, **kwargs) for _ in range(N_ENVS)]
    _reset_and_compare(venv, singles, seed, seeds_list)
    d = venv.single_action_space.shape[0]
    rng = np.random.default_rng(seed)
    needs_reset = [False] * N_ENVS
    n_ends = 0
    for step in range(N_STEPS):
        a = random_actions(rng, N_ENVS, d)
        if diverge_at is not None:
            a = a * 1e-200
            if step == diverge_at:
                a[1] = 1.0
        out = venv.step(torch.as_tensor(a))
        done = torch.zeros(N_ENVS, dtype=torch.bool)
        for i, env in enumerate(singles):
            ended, done[i] = _step_and_compare_env_i(out, i, env, a[i], mode, needs_reset)
            n_ends += ended
        if mode is AutoresetMode.DISABLED and bool(done.any()):
            _reset_mask_and_compare(venv, singles, done)
    assert n_ends >= N_ENVS * 2, "the run crossed episode boundaries"
    return venv


def _reset_and_compare(venv, singles, seed, seeds_list):
    """The first reset: env i of the vector env starts where single env i reset with its seed
    does (seed + i, or the i-th of ``seeds_list``)."""
    seeds = seeds_list if seeds_list is not None else [seed + i for i in range(N_ENVS)]
    obs, infos = venv.reset(seed=seeds_list if seeds_list is not None else seed)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32
    for i, env in enumerate(singles):
        s_obs, s_info = env.reset(seed=seeds[i])
        np.testing.assert_array_equal(to_numpy(obs[i]), s_obs)
        np.testing.assert_array_equal(to_numpy(venv.x[i]), s_info["x"])
        assert float(infos["f"][i]) == s_info["f"]


def _step_and_compare_env_i(out, i, env, action, mode, needs_reset):
    """Advance single env i as the vector env's step advanced env i — a reset where NEXT_STEP
    restarted it, else a step (and, in SAME_STEP, the reset that follows an ending) — and
    compare; returns (an episode ended on this step, env i awaits a DISABLED-mode reset)."""
    if mode is AutoresetMode.NEXT_STEP and needs_reset[i]:
        s_obs, s_info = env.reset()
        _assert_env_i_matches(out, i, (s_obs, 0.0, False, False, s_info))
        needs_reset[i] = False
        return False, False
    s = env.step(action)
    s_done = s[2] or s[3]
    if mode is AutoresetMode.SAME_STEP and s_done:
        assert bool(out[4]["_final_obs"][i])
        np.testing.assert_array_equal(to_numpy(out[4]["final_obs"][i]), s[0])
        np.testing.assert_equal(float(out[4]["final_info"]["f"][i]), s[4]["f"])
        r_obs, r_info = env.reset()
        _assert_env_i_matches(out, i, (r_obs, *s[1:4], {**s[4], "t": 0,
                                                        "f": r_info["f"]}))
        return s_done, False
    if mode is AutoresetMode.SAME_STEP:
        assert not bool(out[4]["_final_obs"][i])
    _assert_env_i_matches(out, i, s)
    needs_reset[i] = s_done
    return s_done, s_done


def _reset_mask_and_compare(venv, singles, done):
    """DISABLED mode: reset the finished envs by mask; they restart as the single envs do,
    the others keep their state."""
    keep = to_numpy(venv.state).copy()
    obs, _ = venv.reset(options={"reset_mask": done})
    for i, env in enumerate(singles):
        if done[i]:
            s_obs, s_info = env.reset()
            np.testing.assert_array_equal(to_numpy(obs[i]), s_obs)
            np.testing.assert_array_equal(to_numpy(venv.x[i]), s_info["x"])
        else:
            np.testing.assert_array_equal(to_numpy(venv.state[i]), keep[i])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_batched_equals_single_step_by_step_across_autoresets(env_id, mode):
    _run_and_compare(env_id, mode, seed=100)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_batched_equals_single_with_a_seed_list(mode):
    _run_and_compare("optenv/LogisticRegression-v0", mode, seed=0, seeds_list=[17, 3, 2**40])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_batched_equals_single_through_a_divergence(mode):
    venv = _run_and_compare("optenv/Quadratic-v0", mode, seed=5, diverge_at=1, max_step=1e200)
    assert torch.isfinite(venv.state).all()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_accelerator_reset_path_equals_single_through_staggered_resets(mode):
    # the masked-select resets used on GPUs, run here on the CPU: a divergence at step 1 puts
    # env 1 out of step with the others, so some steps reset a strict subset of the envs
    _run_and_compare("optenv/Quadratic-v0", mode, seed=5, diverge_at=1, max_step=1e200,
                     masked_resets=True)
    _run_and_compare("optenv/LogisticRegression-v0", mode, seed=3, masked_resets=True)


def test_accelerator_reset_path_draws_instances_only_on_steps_where_an_env_resets(monkeypatch):
    venv = OptimizationVectorEnv("Quadratic", num_envs=4, max_episode_steps=3)
    venv._index_resets = False
    draws = []
    real = venv.family.sample_keys
    monkeypatch.setattr(venv.family, "sample_keys",
                        lambda keys, **kw: draws.append(len(keys)) or real(keys, **kw))
    venv.reset(seed=0)
    assert draws == [4]
    for _ in range(8):  # NEXT_STEP: the envs end on steps 3 and 7 and restart on 4 and 8
        venv.step(torch.zeros(4, venv.family.d))
    assert draws == [4, 4, 4]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_batched_equals_single_on_the_test_split_with_family_options(mode):
    _run_and_compare("optenv/NeuralNet-v0", mode, seed=7, split="test", hidden=3, history=2)


def test_disabled_mode_keeps_stepping_finished_envs_until_reset():
    venv = OptimizationVectorEnv("Quadratic", 2, max_episode_steps=2,
                                 autoreset_mode=AutoresetMode.DISABLED)
    venv.reset(seed=0)
    for _ in range(2):
        _, _, _, trunc, _ = venv.step(torch.zeros(2, 10))
    assert trunc.all()
    _, _, _, trunc, infos = venv.step(torch.zeros(2, 10))
    assert infos["t"].tolist() == [3, 3]
