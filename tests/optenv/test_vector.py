"""The torch-batched vector env: agreement with the single env, autoreset modes, make_vec."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import optenv
from optenv import OptimizationVectorEnv

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]
N_ENVS, HORIZON, N_STEPS = 3, 3, 9


def _np(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _actions(rng, n, d, scale=1.5):
    return rng.uniform(-scale, scale, size=(n, d))


def _assert_env_i_matches(venv_out, i, single_out, *, same=True):
    """venv (obs, reward, terminated, truncated, infos) at env i vs the single env's tuple."""
    obs, rew, term, trunc, infos = venv_out
    s_obs, s_rew, s_term, s_trunc, s_info = single_out
    np.testing.assert_array_equal(_np(obs[i]), s_obs)
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
    seeds = seeds_list if seeds_list is not None else [seed + i for i in range(N_ENVS)]
    obs, infos = venv.reset(seed=seeds_list if seeds_list is not None else seed)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32
    for i, env in enumerate(singles):
        s_obs, s_info = env.reset(seed=seeds[i])
        np.testing.assert_array_equal(_np(obs[i]), s_obs)
        np.testing.assert_array_equal(_np(venv.x[i]), s_info["x"])
        assert float(infos["f"][i]) == s_info["f"]
    d = venv.single_action_space.shape[0]
    rng = np.random.default_rng(seed)
    needs_reset = [False] * N_ENVS
    n_ends = 0
    for step in range(N_STEPS):
        a = _actions(rng, N_ENVS, d)
        if diverge_at is not None:
            a = a * 1e-200
            if step == diverge_at:
                a[1] = 1.0
        out = venv.step(torch.as_tensor(a))
        done = torch.zeros(N_ENVS, dtype=torch.bool)
        for i, env in enumerate(singles):
            if mode is AutoresetMode.NEXT_STEP and needs_reset[i]:
                s_obs, s_info = env.reset()
                _assert_env_i_matches(out, i, (s_obs, 0.0, False, False, s_info))
                needs_reset[i] = False
                continue
            s = env.step(a[i])
            s_done = s[2] or s[3]
            n_ends += s_done
            if mode is AutoresetMode.SAME_STEP and s_done:
                assert bool(out[4]["_final_obs"][i])
                np.testing.assert_array_equal(_np(out[4]["final_obs"][i]), s[0])
                np.testing.assert_equal(float(out[4]["final_info"]["f"][i]), s[4]["f"])
                r_obs, r_info = env.reset()
                _assert_env_i_matches(out, i, (r_obs, *s[1:4], {**s[4], "t": 0,
                                                                "f": r_info["f"]}))
                continue
            if mode is AutoresetMode.SAME_STEP:
                assert not bool(out[4]["_final_obs"][i])
            _assert_env_i_matches(out, i, s)
            needs_reset[i] = s_done
            done[i] = s_done
        if mode is AutoresetMode.DISABLED and bool(done.any()):
            keep = _np(venv.state).copy()
            obs, _ = venv.reset(options={"reset_mask": done})
            for i, env in enumerate(singles):
                if done[i]:
                    s_obs, s_info = env.reset()
                    np.testing.assert_array_equal(_np(obs[i]), s_obs)
                    np.testing.assert_array_equal(_np(venv.x[i]), s_info["x"])
                else:
                    np.testing.assert_array_equal(_np(venv.state[i]), keep[i])
    assert n_ends >= N_ENVS * 2, "the run crossed episode boundaries"
    return venv


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


class _ReplayCalls:
    """Stands in for a captured CUDA graph on the CPU: replaying runs the captured work."""

    def __init__(self, work):
        self.work = work

    def replay(self):
        self.work()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_graph_step_sequence_equals_eager_steps_when_the_graph_replays_faithfully(
        mode, monkeypatch):
    # the warm-up / capture / replay bookkeeping of cuda_graph=True, on the CPU: the graph is
    # replaced by a stand-in that reruns the captured work on every replay
    import optenv.vector as vector_mod

    monkeypatch.setattr(vector_mod, "warm_up", lambda work, device=None: work())
    monkeypatch.setattr(vector_mod, "capture", lambda work, *a, **k: _ReplayCalls(work))
    envs = [OptimizationVectorEnv("LogisticRegression", num_envs=4, max_episode_steps=3,
                                  autoreset_mode=mode, check_actions=False) for _ in range(2)]
    graphed = envs[1]
    graphed._graph_actions = torch.zeros(4, graphed.family.d, dtype=torch.float64)
    graphed._index_resets = envs[0]._index_resets = False  # the accelerators' reset path
    for e in envs:
        e.reset(seed=2)
    rng = np.random.default_rng(3)
    for step in range(10):
        a = torch.as_tensor(_actions(rng, 4, graphed.family.d))
        eager_out, graphed_out = (e.step(a) for e in envs)
        for k in range(4):
            torch.testing.assert_close(graphed_out[k], eager_out[k], rtol=0, atol=0)
        if mode is AutoresetMode.DISABLED and step == 5:
            for e in envs:
                e.reset(options={"reset_mask": torch.tensor([True, False, True, False])})
    assert graphed.graph_captured and not envs[0].graph_captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_cuda_vector_env_matches_the_cpu_one_through_autoresets(mode):
    envs = [OptimizationVectorEnv("LogisticRegression", num_envs=8, max_episode_steps=4,
                                  autoreset_mode=mode, device=dev, check_actions=False)
            for dev in ("cpu", "cuda")]
    outs = [e.reset(seed=11) for e in envs]
    rng = np.random.default_rng(0)
    for step in range(13):
        a = torch.as_tensor(_actions(rng, 8, envs[0].family.d))
        outs = [e.step(a.to(e.device)) for e in envs]
        for k in range(4):  # obs, reward, terminated, truncated
            torch.testing.assert_close(outs[1][k].cpu(), outs[0][k], rtol=1e-6, atol=1e-9)
        if mode is AutoresetMode.DISABLED and step % 4 == 3:
            for e in envs:
                e.reset(options={"reset_mask": torch.ones(8, dtype=torch.bool, device=e.device)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_cuda_graph_steps_equal_eager_cuda_steps_through_autoresets_and_resets(mode):
    envs = [OptimizationVectorEnv("LogisticRegression", num_envs=8, max_episode_steps=3,
                                  autoreset_mode=mode, device="cuda", check_actions=False,
                                  cuda_graph=graphed) for graphed in (False, True)]
    for e in envs:
        e.reset(seed=4)
    rng = np.random.default_rng(1)
    for step in range(11):
        a = torch.as_tensor(_actions(rng, 8, envs[0].family.d), device="cuda")
        eager, graphed = (e.step(a) for e in envs)
        for k in range(4):
            torch.testing.assert_close(graphed[k], eager[k], rtol=0, atol=0)
        torch.testing.assert_close(graphed[4]["f"], eager[4]["f"], rtol=0, atol=0)
        if mode is AutoresetMode.SAME_STEP:
            torch.testing.assert_close(graphed[4]["final_obs"], eager[4]["final_obs"])
        if step == 6:  # a reset between replays: the graph reads the buffers reset rewrote
            for e in envs:
                e.reset(seed=9)
    assert envs[1].graph_captured and not envs[0].graph_captured


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_batched_equals_single_on_the_test_split_with_family_options(mode):
    _run_and_compare("optenv/NeuralNet-v0", mode, seed=7, split="test", hidden=3, history=2)


def test_vector_divergence_terminates_with_penalty_and_finite_observation():
    venv = OptimizationVectorEnv("Quadratic", 2, max_step=1e200, divergence_penalty=9.0)
    venv.reset(seed=0)
    obs, rew, term, trunc, infos = venv.step(torch.tensor([[1.0] * 10, [0.0] * 10]))
    assert term.tolist() == [True, False] and not trunc.any()
    assert float(rew[0]) == -9.0 and torch.isfinite(rew).all()
    assert torch.isfinite(obs).all() and infos["f"][1].isfinite()
    obs, rew, term, trunc, _ = venv.step(torch.zeros(2, 10))  # NEXT_STEP: env 0 restarts
    assert not term.any() and float(rew[0]) == 0.0 and torch.isfinite(obs).all()


def test_reset_seed_gives_env_i_the_instances_of_seed_plus_i():
    venv = OptimizationVectorEnv("RobustRegression", 4)
    venv.reset(seed=50)
    fam = optenv.family_of("optenv/RobustRegression-v0")
    data, x0 = fam.sample([50, 51, 52, 53])
    torch.testing.assert_close(venv.x, x0, rtol=0, atol=0)
    for k in data:
        torch.testing.assert_close(venv.problem[k], data[k], rtol=0, atol=0)


def test_reset_without_seed_moves_every_env_to_its_next_episode():
    venv = OptimizationVectorEnv("Quadratic", 3, dim=4)
    venv.reset(seed=10)
    venv.reset()
    data, x0 = optenv.Quadratic(dim=4).sample([10, 11, 12], episodes=1)
    torch.testing.assert_close(venv.x, x0, rtol=0, atol=0)
    torch.testing.assert_close(venv.problem["A"], data["A"], rtol=0, atol=0)


def test_reset_seed_list_must_have_one_seed_per_env():
    venv = OptimizationVectorEnv("Quadratic", 3)
    with pytest.raises(ValueError, match="seed"):
        venv.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="seed"):
        venv.reset(seed=[1, -2, 3])


def test_reset_mask_resets_only_the_masked_envs():
    venv = OptimizationVectorEnv("LogisticRegression", 4, autoreset_mode="Disabled")
    assert venv.autoreset_mode is AutoresetMode.DISABLED
    assert venv.metadata["autoreset_mode"] is AutoresetMode.DISABLED
    venv.reset(seed=30)
    for _ in range(2):
        venv.step(torch.full((4, 4), 0.5))
    before = venv.state.clone()
    t_before = venv._t.clone()
    mask = torch.tensor([True, False, True, False])
    obs, _ = venv.reset(options={"reset_mask": mask})
    _, x_ep1 = optenv.LogisticRegression().sample([30, 32], episodes=1)
    torch.testing.assert_close(venv.x[mask], x_ep1, rtol=0, atol=0)
    torch.testing.assert_close(venv.state[~mask], before[~mask], rtol=0, atol=0)
    torch.testing.assert_close(obs, venv.state[:, 4:].float(), rtol=0, atol=0)
    _, _, _, _, infos = venv.step(torch.zeros(4, 4))
    assert infos["t"].tolist() == [1, int(t_before[1]) + 1, 1, int(t_before[3]) + 1]
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": torch.ones(4)})


def test_reset_mask_with_seed_reseeds_only_the_masked_envs():
    venv = OptimizationVectorEnv("Quadratic", 3, dim=2, autoreset_mode=AutoresetMode.DISABLED)
    venv.reset(seed=0)
    x_before = venv.x.clone()
    venv.reset(seed=100, options={"reset_mask": torch.tensor([False, True, False])})
    _, x0 = optenv.Quadratic(dim=2).sample([101])
    torch.testing.assert_close(venv.x[1], x0[0], rtol=0, atol=0)
    torch.testing.assert_close(venv.x[[0, 2]], x_before[[0, 2]], rtol=0, atol=0)


def test_disabled_mode_keeps_stepping_finished_envs_until_reset():
    venv = OptimizationVectorEnv("Quadratic", 2, max_episode_steps=2,
                                 autoreset_mode=AutoresetMode.DISABLED)
    venv.reset(seed=0)
    for _ in range(2):
        _, _, _, trunc, _ = venv.step(torch.zeros(2, 10))
    assert trunc.all()
    _, _, _, trunc, infos = venv.step(torch.zeros(2, 10))
    assert infos["t"].tolist() == [3, 3]


def test_reset_options_problem_and_x0_for_the_batch():
    src = OptimizationVectorEnv("NeuralNet", 2)
    src.reset(seed=4)
    problem = {k: v.clone() for k, v in src.problem.items()}
    x0 = src.x.clone()
    dst = OptimizationVectorEnv("NeuralNet", 2)
    obs, _ = dst.reset(seed=77, options={"problem": problem, "x0": x0})
    torch.testing.assert_close(obs, src._obs, rtol=0, atol=0)
    a = torch.full((2, 12), 0.25)
    torch.testing.assert_close(dst.step(a)[0], src.step(a)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="x0"):
        dst.reset(options={"x0": torch.zeros(12)})
    with pytest.raises(ValueError, match="problem"):
        dst.reset(options={"problem": {"X": problem["X"]}})
    with pytest.raises(ValueError, match="options"):
        dst.reset(options={"nope": 1})


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


def test_observation_layout_matches_the_single_env(env_id):
    venv = gym.make_vec(env_id, num_envs=2, history=3)
    single = gym.make(env_id, history=3)
    assert venv.observation_layout == single.unwrapped.observation_layout
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space.shape == (2, *single.observation_space.shape)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"num_envs": 0}, "num_envs"),
        ({"history": 0}, "history"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"autoreset_mode": "sometimes"}, "autoreset_mode"),
        ({"split": "dev"}, "split"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "not-a-device"}, "device"),
        ({"render_mode": "human"}, "render_mode"),
        ({"max_step": -1.0}, "max_step"),
        ({"cuda_graph": True}, "cuda_graph"),  # on the CPU
        ({"wobble": 1}, "wobble"),
    ],
)
def test_bad_vector_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        OptimizationVectorEnv("Quadratic", **{"num_envs": 2, **kwargs})


def test_first_reset_must_reset_every_env_outside_disabled_mode():
    venv = OptimizationVectorEnv("Quadratic", 2)
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": torch.tensor([True, False])})
    with pytest.raises(RuntimeError, match="reset"):
        OptimizationVectorEnv("Quadratic", 2).step(torch.zeros(2, 10))


@pytest.mark.parametrize("mode", ["rgb_array", "ansi"])
def test_vector_render_shows_each_env_as_the_single_env_would_across_an_autoreset(mode):
    venv = OptimizationVectorEnv("NeuralNet", 2, render_mode=mode, max_episode_steps=2)
    venv.reset(seed=0)
    a = np.full(12, 0.1)
    for _ in range(4):  # two steps, the NEXT_STEP reset, one step
        venv.step(np.stack([a, a]))
    frames = venv.render()
    assert len(frames) == 2
    single = optenv.OptimizationEnv("NeuralNet", render_mode=mode)
    single.reset(seed=1)
    single.step(a)
    single.step(a)
    single.reset()
    single.step(a)
    if mode == "ansi":
        assert frames[1] == single.render()
    else:
        assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)
        np.testing.assert_array_equal(frames[1], single.render())


# ---------------------------------------------------------------------------- make_vec modes


def _make_vec_rollout(env_id, mode, **extra):
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, max_episode_steps=3,
                        **extra)
    obs, _ = venv.reset(seed=12)
    out = [_np(obs)]
    d = venv.single_action_space.shape[0]
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, rew, term, trunc, _ = venv.step(rng.uniform(-1, 1, (2, d)).astype(np.float32))
        out.append((_np(obs), _np(rew).astype(np.float64), _np(term), _np(trunc)))
    venv.close()
    return out


def _assert_rollouts_equal(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    for ra, rb in zip(a[1:], b[1:], strict=True):
        for va, vb in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(va, vb)


def test_make_vec_sync_mode_agrees_with_vector_entry_point(env_id):
    ref = _make_vec_rollout(env_id, "vector_entry_point")
    _assert_rollouts_equal(ref, _make_vec_rollout(env_id, "sync"))
    assert any(r[3].any() for r in ref[1:]), "the rollout crossed a truncation"


def test_make_vec_default_mode_is_the_batched_env():
    venv = gym.make_vec("optenv/LogisticRegression-v0", num_envs=3)
    assert isinstance(venv, OptimizationVectorEnv)
    assert venv.max_episode_steps == 40 and venv.num_envs == 3
    obs, _ = venv.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (3, venv.single_observation_space
                                                           .shape[0])


def test_make_vec_async_with_spawn_agrees_with_vector_entry_point():
    env_id = "optenv/LogisticRegression-v0"
    ref = _make_vec_rollout(env_id, "vector_entry_point")
    got = _make_vec_rollout(env_id, "async", vector_kwargs={"context": "spawn"})
    _assert_rollouts_equal(ref, got)


def test_gym_make_with_module_prefix_works_in_a_fresh_subprocess():
    code = textwrap.dedent("""
        import gymnasium as gym, numpy as np
        env = gym.make("optenv:optenv/LogisticRegression-v0")
        obs, info = env.reset(seed=0)
        obs, r, term, trunc, info = env.step(np.zeros(4, np.float32))
        assert obs.shape == (4 + 25 + 2 * 25 * 4,) and np.isfinite(r) and not term
        venv = gym.make_vec("optenv:optenv/Quadratic-v0", num_envs=2)
        print(type(venv).__name__, round(float(info["f"]), 12))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    name, f = res.stdout.split()
    assert name == "OptimizationVectorEnv"
    env = gym.make("optenv/LogisticRegression-v0")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(4, np.float32))
    assert float(f) == round(info["f"], 12)


def test_numpy_vector_env_gives_numpy_arrays():
    venv = optenv.numpy_vector_env(OptimizationVectorEnv("Quadratic", 2))
    obs, infos = venv.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32
    obs, rew, term, trunc, infos = venv.step(np.zeros((2, 10), np.float32))
    assert all(isinstance(v, np.ndarray) for v in (obs, rew, term, trunc))
    assert isinstance(infos["f"], np.ndarray)
