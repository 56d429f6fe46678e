"""The single env's spaces and observation: the documented dimensions, the layout's slices
and what each slice holds step by step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from optenv.core import DELTA_EPS

LAYOUT_ORDER = ["PAST_OBJ_VAL_DELTAS", "PAST_GRADS", "CUR_GRAD", "PAST_LOC_DELTAS"]


def relative_change(f_prev: float, f: float) -> float:
    """The documented PAST_OBJ_VAL_DELTAS entry, (f_i − f_{i−1}) / f_{i−1}: divided by f_{i−1}
    itself (signed), its magnitude floored at DELTA_EPS."""
    mag = max(abs(f_prev), DELTA_EPS)
    return (f - f_prev) / (-mag if f_prev < 0 else mag)


@pytest.mark.parametrize(
    "env_id,d", [("optenv/Quadratic-v0", 10), ("optenv/LogisticRegression-v0", 4),
                 ("optenv/RobustRegression-v0", 4), ("optenv/NeuralNet-v0", 12)]
)
def test_spaces_match_the_documented_dimensions(env_id, d):
    env = gym.make(env_id)
    h = 25
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (d,), np.float32)
    assert env.observation_space.shape == (d + h + 2 * h * d,)
    assert env.observation_space.dtype == np.float32
    env.close()


def test_observation_layout_slices_tile_the_observation(env_id):
    env = gym.make(env_id, history=6)
    u = env.unwrapped
    d, h = u.family.d, 6
    layout = u.observation_layout
    assert list(layout) == LAYOUT_ORDER
    sizes = {"PAST_OBJ_VAL_DELTAS": h, "PAST_GRADS": h * d, "CUR_GRAD": d,
             "PAST_LOC_DELTAS": h * d}
    start = 0
    for name, sl in layout.items():
        assert sl.start == start and sl.stop - sl.start == sizes[name], name
        start = sl.stop
    assert start == sum(sizes.values()) == u.observation_space.shape[0] == d + h + 2 * h * d


def test_observation_content_follows_the_documented_layout(env_id):
    h = 4
    env = gym.make(env_id, history=h, max_step=0.3)
    u = env.unwrapped
    d = u.family.d
    lay = u.observation_layout
    obs, info = env.reset(seed=11)

    def part(o, name):
        return o[lay[name]]

    assert not part(obs, "PAST_OBJ_VAL_DELTAS").any()
    assert not part(obs, "PAST_GRADS").any()
    assert not part(obs, "PAST_LOC_DELTAS").any()
    np.testing.assert_array_equal(part(obs, "CUR_GRAD"), info["grad"].astype(np.float32))
    state = u.state
    np.testing.assert_array_equal(state[:d], info["x"])
    np.testing.assert_array_equal(state[d:].astype(np.float32), obs)

    rng = np.random.default_rng(1)
    fs, grads, steps, xs = [info["f"]], [info["grad"]], [], [info["x"]]
    for k in range(h + 2):
        a = rng.uniform(-1.5, 1.5, d).astype(np.float32)
        obs, reward, _, _, info = env.step(a)
        steps.append(0.3 * np.clip(a.astype(np.float64), -1, 1))
        fs.append(info["f"])
        grads.append(info["grad"])
        assert reward == np.float32(-info["f"])  # the float32 reward (reward_dtype default)
        assert info["action_clipped"] == bool((np.abs(a) > 1).any())
        xs.append(info["x"])
        np.testing.assert_allclose(xs[-1] - xs[-2], steps[-1], rtol=1e-9, atol=1e-12)
        assert info["grad_norm"] == pytest.approx(np.linalg.norm(info["grad"]), rel=1e-12)
        np.testing.assert_array_equal(info["x"], u.state[:d])
        n = min(k + 1, h)
        loc = part(obs, "PAST_LOC_DELTAS").reshape(h, d)
        np.testing.assert_allclose(loc[h - n:], np.array(steps[-n:]), rtol=1e-6, atol=1e-7)
        assert not loc[: h - n].any()
        past_g = part(obs, "PAST_GRADS").reshape(h, d)
        np.testing.assert_allclose(past_g[h - n:], np.array(grads[-n - 1:-1]), rtol=1e-6,
                                   atol=1e-7)
        np.testing.assert_allclose(part(obs, "CUR_GRAD"), info["grad"], rtol=1e-6, atol=1e-7)
        rel = [relative_change(fs[i - 1], fs[i]) for i in range(len(fs) - n, len(fs))]
        np.testing.assert_allclose(part(obs, "PAST_OBJ_VAL_DELTAS")[h - n:], rel, rtol=1e-5,
                                   atol=1e-7)
