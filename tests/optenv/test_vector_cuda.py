"""The vector env's CUDA paths: the CUDA-graph warm-up/capture/replay bookkeeping (on the
CPU, with a stand-in graph), and, on a CUDA device, agreement with the CPU env and of
graph replays with eager steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from vector_env_helpers import MODES, ReplayCalls, random_actions, step_eager_and_graphed

from optenv import OptimizationVectorEnv


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_graph_step_sequence_equals_eager_steps_when_the_graph_replays_faithfully(
        mode, monkeypatch):
    # the warm-up / capture / replay bookkeeping of cuda_graph=True, on the CPU: the graph is
    # replaced by a stand-in that reruns the captured work on every replay
    import optenv.vector as vector_mod

    monkeypatch.setattr(vector_mod, "warm_up", lambda work, device=None: work())
    monkeypatch.setattr(vector_mod, "capture", lambda work, *a, **k: ReplayCalls(work))
    envs = [OptimizationVectorEnv("LogisticRegression", num_envs=4, max_episode_steps=3,
                                  autoreset_mode=mode, check_actions=False) for _ in range(2)]
    step_eager_and_graphed(envs, mode, steps=10, reset_at=5)
    assert envs[1].graph_captured and not envs[0].graph_captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_cuda_vector_env_matches_the_cpu_one_through_autoresets(mode):
    envs = [OptimizationVectorEnv("LogisticRegression", num_envs=8, max_episode_steps=4,
                                  autoreset_mode=mode, device=dev, check_actions=False)
            for dev in ("cpu", "cuda")]
    outs = [e.reset(seed=11) for e in envs]
    rng = np.random.default_rng(0)
    for step in range(13):
        a = torch.as_tensor(random_actions(rng, 8, envs[0].family.d))
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
        a = torch.as_tensor(random_actions(rng, 8, envs[0].family.d), device="cuda")
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
