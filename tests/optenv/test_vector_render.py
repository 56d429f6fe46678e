"""The vector env's render: each env's frame as the single env would draw it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optenv
from optenv import OptimizationVectorEnv


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


def _tensor_bytes(obj, seen=None) -> int:
    """Bytes of every tensor an object holds (attributes, lists, dicts), each counted once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if isinstance(obj, OptimizationVectorEnv):
        return _tensor_bytes(vars(obj), seen)
    return 0


@pytest.mark.parametrize("mode", ["NextStep", "Disabled"])
def test_render_history_stays_the_same_size_however_long_the_run(mode):
    venv = OptimizationVectorEnv("Quadratic", 64, dim=2, render_mode="rgb_array",
                                 max_episode_steps=5, autoreset_mode=mode)
    venv.reset(seed=0)
    a = torch.full((64, 2), 0.01)
    venv.step(a)
    held = _tensor_bytes(venv)
    for _ in range(120):  # DISABLED: stepped on past the horizon, never reset
        infos = venv.step(a)[4]
    assert _tensor_bytes(venv) == held
    frame = venv.render()[0]
    assert frame.dtype == np.uint8 and frame.ndim == 3
    if mode == "NextStep":  # the current episode's curve, as the single env draws it
        single = optenv.OptimizationEnv("Quadratic", dim=2, render_mode="rgb_array")
        single.reset(seed=0)
        for _ in range(121 // 6):  # NEXT_STEP: 5 steps and the reset step per episode
            single.reset()
        for _ in range(int(infos["t"][0])):
            single.step(a[0].numpy())
        np.testing.assert_array_equal(frame, single.render())
