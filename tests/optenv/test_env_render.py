"""The single env's rendering: rgb_array images, ansi text lines, the data panel of the
2-D data families, and a frame after divergence.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

RED = np.array([214, 39, 40])  # the colour of class-1 points in the data panel


def _red_pixels(frame: np.ndarray) -> np.ndarray:
    return (np.abs(frame.astype(int) - RED) < 12).all(-1)


def test_rgb_array_render_is_a_uint8_image(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frames = [env.render()]
    for _ in range(3):
        env.step(env.action_space.sample())
    frames.append(env.render())
    for frame in frames:
        assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
        assert frame.ndim == 3 and frame.shape[2] == 3 and min(frame.shape[:2]) > 50
        assert frame.std() > 0
    assert not np.array_equal(frames[0], frames[1])


def test_ansi_render_is_a_text_line_with_f(env_id):
    env = gym.make(env_id, render_mode="ansi")
    _, info = env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and "f=" in text and text.endswith("\n")
    assert f"{info['f']:.6g}" in text
    env.step(env.action_space.sample())
    assert "t=   1" in env.render()


@pytest.mark.parametrize(
    "env_id,kwargs,has_data_panel",
    [
        ("optenv/LogisticRegression-v0", {"dim": 2}, True),
        ("optenv/NeuralNet-v0", {}, True),
        ("optenv/LogisticRegression-v0", {}, False),
        ("optenv/RobustRegression-v0", {}, False),
        ("optenv/Quadratic-v0", {"dim": 2}, False),
    ],
)
def test_2d_data_families_draw_the_data_panel(env_id, kwargs, has_data_panel):
    env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    env.reset(seed=3)
    env.step(env.action_space.sample())
    frame = env.render()
    red = _red_pixels(frame)
    half = frame.shape[1] // 2
    if has_data_panel:
        assert red[:, half:].sum() > 50, "class-1 points drawn on the right panel"
        assert red[:, :half].sum() == 0
    else:
        assert red.sum() == 0


def test_render_survives_divergence(no_unexpected_warnings):
    env = gym.make("optenv/NeuralNet-v0", render_mode="rgb_array", max_step=1e300)
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(np.ones(env.action_space.shape, np.float32))
    assert terminated
    with no_unexpected_warnings():
        frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3
