"""The vector env's coordinatewise observations [N, d, k]: the flat vector observation rearranged
(2016 features) and the single env's rows (every feature set), step by step through autoresets
in every mode, on both reset paths; the CUDA-graph step path (with the CPU stand-in graph).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from vector_env_helpers import MODES, ReplayCalls, random_actions, step_eager_and_graphed, to_numpy

from optenv import OptimizationVectorEnv

N = 3


def _pair(env_id, mode, **kwargs):
    kw = {"num_envs": N, "vectorization_mode": "vector_entry_point", "autoreset_mode": mode,
          **kwargs}
    return gym.make_vec(env_id, **kw), gym.make_vec(env_id, observation="coordinatewise", **kw)


@pytest.mark.parametrize("masked_resets", [False, True], ids=["index-resets", "masked-resets"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_rows_are_the_flat_vector_observation_rearranged(mode, masked_resets):
    # Quadratic with a huge max_step: env 1 diverges at step 1, so episodes end out of step
    flat, coord = _pair("optenv/Quadratic-v0", mode, history=3, max_episode_steps=3,
                        max_step=1e200)
    if masked_resets:
        flat._index_resets = coord._index_resets = False
    lay = coord.layout

    def rearranged(obs):
        return lay.coordinatewise(obs, observation=True)

    (of, _), (oc, _) = flat.reset(seed=4), coord.reset(seed=4)
    assert oc.shape == (N, 10, 10) and oc.dtype == torch.float32
    assert coord.single_observation_space.shape == (10, 10)
    assert coord.observation_space.shape == (N, 10, 10)
    assert torch.equal(oc, rearranged(of))
    rng = np.random.default_rng(0)
    ends = 0
    for step in range(10):
        a = random_actions(rng, N, 10) * 1e-200
        if step == 1:
            a[1] = 1.0
        rf, rc = flat.step(torch.as_tensor(a)), coord.step(torch.as_tensor(a))
        assert torch.equal(rc[0], rearranged(rf[0]))
        for k in (1, 2, 3):
            assert torch.equal(rc[k], rf[k])
        done = rf[2] | rf[3]
        ends += int(done.sum())
        if mode is AutoresetMode.SAME_STEP:
            assert torch.equal(rc[4]["_final_obs"], rf[4]["_final_obs"])
            assert torch.equal(rc[4]["final_obs"], rearranged(rf[4]["final_obs"]))
        if mode is AutoresetMode.DISABLED and bool(done.any()):
            (of, _), (oc, _) = (e.reset(options={"reset_mask": done}) for e in (flat, coord))
            assert torch.equal(oc, rearranged(of))
    assert ends >= 2 * N and torch.equal(coord.state, flat.state)


def _compare_with_singles(env_id, mode, *, horizon, n_steps, masked_resets=False, **kwargs):
    """Step a coordinatewise vector env and N single envs side by side; their observations
    (and SAME_STEP's final observations) agree at every step."""
    venv = gym.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point",
                        max_episode_steps=horizon, autoreset_mode=mode, **kwargs)
    if masked_resets:
        venv._index_resets = False
    singles = [gym.make(env_id, max_episode_steps=horizon, **kwargs) for _ in range(N)]
    obs, _ = venv.reset(seed=20)
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(to_numpy(obs[i]), env.reset(seed=20 + i)[0])
    d = venv.single_action_space.shape[0]
    rng = np.random.default_rng(1)
    restart = [False] * N
    for _ in range(n_steps):
        a = random_actions(rng, N, d, scale=0.5)
        obs, _, term, trunc, infos = venv.step(torch.as_tensor(a))
        for i, env in enumerate(singles):
            if restart[i]:  # NEXT_STEP: this step restarted env i
                np.testing.assert_array_equal(to_numpy(obs[i]), env.reset()[0])
                restart[i] = False
                continue
            s_obs, _, s_term, s_trunc, _ = env.step(a[i])
            ended = s_term or s_trunc
            if mode is AutoresetMode.SAME_STEP and ended:
                np.testing.assert_array_equal(to_numpy(infos["final_obs"][i]), s_obs)
                s_obs = env.reset()[0]
            np.testing.assert_array_equal(to_numpy(obs[i]), s_obs)
            restart[i] = mode is AutoresetMode.NEXT_STEP and ended
        done = term | trunc
        if mode is AutoresetMode.DISABLED and bool(done.any()):
            obs, _ = venv.reset(options={"reset_mask": done})
            for i, env in enumerate(singles):
                if done[i]:
                    np.testing.assert_array_equal(to_numpy(obs[i]), env.reset()[0])
    return venv


@pytest.mark.parametrize(("features", "history"), [
    ("li-malik-2016", 3), ("li-malik-2017", 132), ("li-malik-2017-psi", 2)])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_rows_equal_the_single_envs_rows_through_autoresets(mode, features, history):
    # a horizon of 12 takes t past two strides of 5 before each restart (t goes back to 0)
    venv = _compare_with_singles("optenv/LogisticRegression-v0", mode, horizon=12, n_steps=30,
                                 observation="coordinatewise", features=features,
                                 history=history)
    assert venv.unwrapped.features == features
    assert bool((venv.unwrapped._t > 0).any()) and int(venv.unwrapped._episodes.max()) >= 1


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_2017_rows_equal_the_single_envs_rows_on_the_accelerator_reset_path(mode):
    _compare_with_singles("optenv/RobustRegression-v0", mode, horizon=7, n_steps=16,
                          masked_resets=True, observation="coordinatewise",
                          features="li-malik-2017", history=132)


def test_constructor_takes_the_mode_and_copy_false_hands_out_the_live_buffer():
    venv = OptimizationVectorEnv("NeuralNet", 2, observation="coordinatewise",
                                 features="li-malik-2017-psi", copy=False)
    assert venv.single_observation_space.shape == (12, 3)
    assert venv.coordinate_layout == {"OBJ_CHANGE": slice(0, 1),
                                      "GRAD_NORMALISED": slice(1, 2),
                                      "ITERATE_CHANGE_RATIO": slice(2, 3)}
    obs, _ = venv.reset(seed=0)
    buf = obs.data_ptr()
    obs, *_ = venv.step(torch.zeros(2, 12))
    assert obs.data_ptr() == buf and obs.shape == (2, 12, 3)




@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_graph_step_path_computes_the_2017_rows_inside_the_captured_work(mode, monkeypatch):
    # the rows are written into the preallocated buffer by the captured step (_advance_core),
    # from the state and t buffers: replaying the same work gives the eager env's rows
    import optenv.vector as vector_mod

    monkeypatch.setattr(vector_mod, "warm_up", lambda work, device=None: work())
    monkeypatch.setattr(vector_mod, "capture", lambda work, *a, **k: ReplayCalls(work))
    envs = [OptimizationVectorEnv("LogisticRegression", num_envs=4, max_episode_steps=6,
                                  autoreset_mode=mode, check_actions=False,
                                  observation="coordinatewise", features="li-malik-2017")
            for _ in range(2)]
    graphed = envs[1]
    obs_buffer = graphed._obs.data_ptr()
    graphed_out = step_eager_and_graphed(envs, mode, steps=14, reset_at=7)
    assert graphed.graph_captured and graphed._obs.data_ptr() == obs_buffer
    assert graphed_out[0].abs().max() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("features", ["li-malik-2016", "li-malik-2017", "li-malik-2017-psi"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_cuda_graph_coordinatewise_steps_equal_the_cpu_env(mode, features):
    envs = [OptimizationVectorEnv("LogisticRegression", num_envs=8, max_episode_steps=7,
                                  autoreset_mode=mode, device=dev, check_actions=False,
                                  cuda_graph=dev == "cuda", observation="coordinatewise",
                                  features=features) for dev in ("cpu", "cuda")]
    for e in envs:
        e.reset(seed=4)
    rng = np.random.default_rng(0)
    for step in range(16):
        a = torch.as_tensor(random_actions(rng, 8, envs[0].family.d))
        outs = [e.step(a.to(e.device)) for e in envs]
        for k in range(4):
            torch.testing.assert_close(outs[1][k].cpu(), outs[0][k], rtol=1e-5, atol=1e-7)
        if mode is AutoresetMode.DISABLED and step % 7 == 6:
            for e in envs:
                e.reset(options={"reset_mask": torch.ones(8, dtype=torch.bool, device=e.device)})
    assert envs[1].graph_captured
