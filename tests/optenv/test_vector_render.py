"""The vector env's render: each env's frame as the single env would draw it."""

from __future__ import annotations

import numpy as np
import pytest

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
