"""The single Gymnasium env: checkers, seeding, pickling, spec JSON, rendering, bad input."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import optenv
from optenv import OptimizationEnv

LAYOUT_ORDER = ["PAST_OBJ_VAL_DELTAS", "PAST_GRADS", "CUR_GRAD", "PAST_LOC_DELTAS"]
RED = np.array([214, 39, 40])  # the colour of class-1 points in the data panel


def _rollout(env, seed, n_steps, action_seed=0, reset_after=True):
    """Observations, rewards, flags and infos of a seeded run with seeded random actions."""
    rng = np.random.default_rng(action_seed)
    d = env.action_space.shape[0]
    obs, info = env.reset(seed=seed)
    out = [(obs, info["x"], info["f"])]
    for _ in range(n_steps):
        a = rng.uniform(-1.5, 1.5, size=d).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, info["x"], info["grad"], info["f"]))
        if (term or trunc) and reset_after:
            obs, info = env.reset()
            out.append((obs, info["x"], info["f"]))
    return out


def _assert_same_run(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert len(ra) == len(rb)
        for va, vb in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(va, vb)


def _red_pixels(frame: np.ndarray) -> np.ndarray:
    return (np.abs(frame.astype(int) - RED) < 12).all(-1)


# ---------------------------------------------------------------------------- checkers


def test_every_registered_id_passes_gymnasium_check_env(env_id, no_unexpected_warnings):
    env = gym.make(env_id)
    with no_unexpected_warnings():
        check_env(env.unwrapped)
    env.close()


def test_every_registered_id_passes_sb3_check_env(env_id, no_unexpected_warnings):
    env = gym.make(env_id, render_mode="rgb_array")
    with no_unexpected_warnings():
        sb3_check_env(env.unwrapped, warn=True, skip_render_check=False)
        sb3_check_env(env, warn=True)
    env.close()


def test_registered_ids_have_both_entry_points_and_a_40_step_horizon():
    assert len(optenv.BUILTIN_IDS) == 4
    for env_id in optenv.BUILTIN_IDS:
        spec = gym.spec(env_id)
        assert spec.entry_point == "optenv.env:OptimizationEnv"
        assert spec.vector_entry_point == "optenv.vector:OptimizationVectorEnv"
        assert spec.max_episode_steps == 40
    optenv.register_envs()  # idempotent
    assert all(i in gym.registry for i in optenv.BUILTIN_IDS)


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


def test_episode_is_truncated_exactly_at_the_horizon(env_id):
    env = gym.make(env_id, max_episode_steps=7)
    env.reset(seed=0)
    flags = [env.step(np.zeros(env.action_space.shape, np.float32))[2:4] for _ in range(7)]
    assert flags == [(False, False)] * 6 + [(False, True)]
    env.close()


# ---------------------------------------------------------------------------- seeding


def test_same_seed_gives_same_problem_start_and_trajectory(env_id):
    a, b = gym.make(env_id, max_episode_steps=6), gym.make(env_id, max_episode_steps=6)
    _assert_same_run(_rollout(a, 123, 14), _rollout(b, 123, 14))
    for k, v in a.unwrapped.problem.items():
        np.testing.assert_array_equal(v, b.unwrapped.problem[k])


def test_different_seeds_and_episodes_give_different_problems(env_id):
    env = gym.make(env_id)
    _, i1 = env.reset(seed=1)
    p1 = env.unwrapped.problem
    env.reset()
    p1b = env.unwrapped.problem
    _, i2 = env.reset(seed=2)
    p2 = env.unwrapped.problem
    for k in p1:
        if k == "y" and env_id.endswith("LogisticRegression-v0"):
            continue
        assert not np.array_equal(p1[k], p1b[k])
        assert not np.array_equal(p1[k], p2[k])
    assert not np.array_equal(i1["x"], i2["x"])
    _, again = env.reset(seed=1)
    np.testing.assert_array_equal(again["x"], i1["x"])


def test_env_instance_matches_family_sample_for_the_seed(env_id):
    env = gym.make(env_id)
    _, info = env.reset(seed=77)
    fam = optenv.family_of(env_id)
    data, x0 = fam.sample([77])
    np.testing.assert_array_equal(info["x"], x0[0].numpy())
    for k, v in env.unwrapped.problem.items():
        np.testing.assert_array_equal(v, data[k][0].numpy())


def test_test_split_env_differs_from_train_split_env(env_id):
    train, test = gym.make(env_id), gym.make(env_id, split="test")
    _, a = train.reset(seed=5)
    _, b = test.reset(seed=5)
    assert not np.array_equal(a["x"], b["x"])


def test_record_episode_statistics_wrapper_reports_episode_return_and_length():
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("optenv/Quadratic-v0",
                                                        max_episode_steps=3))
    env.reset(seed=0)
    total = 0.0
    for _ in range(3):
        _, r, _, truncated, info = env.step(np.zeros(10, np.float32))
        total += r
    assert truncated
    assert info["episode"]["l"] == 3
    assert info["episode"]["r"] == pytest.approx(total)


def test_out_of_range_seed_raises_value_error_naming_the_seed():
    env = gym.make("optenv/Quadratic-v0")
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed=2**63)


def test_unseeded_envs_draw_different_problems():
    a, b = gym.make("optenv/Quadratic-v0"), gym.make("optenv/Quadratic-v0")
    assert not np.array_equal(a.reset()[1]["x"], b.reset()[1]["x"])


# ---------------------------------------------------------------------------- pickling, spec


def test_pickle_round_trip_mid_episode_continues_identically(env_id):
    env = gym.make(env_id, max_episode_steps=8)
    rng = np.random.default_rng(0)
    env.reset(seed=9)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone.unwrapped.state, env.unwrapped.state)
    for _ in range(10):
        a = rng.uniform(-1.2, 1.2, env.action_space.shape).astype(np.float32)
        ra, rb = env.step(a), clone.step(a)
        for va, vb in zip(ra[:4], rb[:4], strict=True):
            np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(ra[4]["x"], rb[4]["x"])
        if ra[2] or ra[3]:
            oa, ia = env.reset()
            ob, ib = clone.reset()
            np.testing.assert_array_equal(oa, ob)
            np.testing.assert_array_equal(ia["x"], ib["x"])


@pytest.mark.parametrize("kwargs", [{}, {"history": 5, "max_step": 0.25, "split": "test"}])
def test_spec_json_round_trip_remakes_the_same_env(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    text = env.spec.to_json()
    spec = EnvSpec.from_json(text)
    assert spec.id == env_id
    assert spec.kwargs == env.spec.kwargs
    remade = gym.make(spec)
    assert remade.observation_space == env.observation_space
    o1, i1 = env.reset(seed=4)
    o2, i2 = remade.reset(seed=4)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(i1["x"], i2["x"])
    a = np.full(env.action_space.shape, 0.5, np.float32)
    np.testing.assert_array_equal(env.step(a)[0], remade.step(a)[0])
    assert remade.unwrapped.max_step == env.unwrapped.max_step
    assert remade.unwrapped.split == env.unwrapped.split


def test_spec_json_round_trip_keeps_family_arguments():
    env = gym.make("optenv/LogisticRegression-v0", dim=2)
    remade = gym.make(EnvSpec.from_json(env.spec.to_json()))
    assert remade.action_space.shape == (3,)
    assert remade.unwrapped.family.dim == 2


# ---------------------------------------------------------------------------- rendering


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


# ---------------------------------------------------------------------------- layout


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
        assert reward == -info["f"]
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
        rel = [(fs[i] - fs[i - 1]) / abs(fs[i - 1]) for i in range(len(fs) - n, len(fs))]
        np.testing.assert_allclose(part(obs, "PAST_OBJ_VAL_DELTAS")[h - n:], rel, rtol=1e-5,
                                   atol=1e-7)


# ---------------------------------------------------------------------------- reset options


def test_reset_with_problem_and_x0_options_reproduces_a_run(env_id):
    src, dst = gym.make(env_id), gym.make(env_id)
    obs, info = src.reset(seed=21)
    problem = src.unwrapped.problem
    obs2, info2 = dst.reset(seed=999, options={"problem": problem, "x0": info["x"]})
    np.testing.assert_array_equal(obs, obs2)
    assert info["f"] == info2["f"]
    for k, v in dst.unwrapped.problem.items():
        np.testing.assert_array_equal(v, problem[k])
    a = np.full(src.action_space.shape, -0.4, np.float32)
    np.testing.assert_array_equal(src.step(a)[0], dst.step(a)[0])


def test_reset_with_x0_option_starts_from_that_point(env_id):
    env = gym.make(env_id)
    d = env.action_space.shape[0]
    x0 = np.linspace(-1, 1, d)
    _, info_rand = env.reset(seed=3)
    assert not np.array_equal(info_rand["x"], x0)
    problem = env.unwrapped.problem
    _, info = env.reset(seed=3, options={"x0": x0})
    np.testing.assert_array_equal(info["x"], x0)
    for k, v in env.unwrapped.problem.items():
        np.testing.assert_array_equal(v, problem[k])
    fam = env.unwrapped.family
    import torch

    data = {k: torch.as_tensor(v)[None] for k, v in problem.items()}
    f, g = fam.value_and_grad(torch.as_tensor(x0)[None], data)
    assert info["f"] == pytest.approx(float(f[0]), rel=1e-12)
    np.testing.assert_allclose(info["grad"], g[0].numpy(), rtol=1e-12)


def _bad_reset_options(env):
    d = env.action_space.shape[0]
    problem = env.unwrapped.problem
    key = sorted(problem)[0]
    missing = {k: v for k, v in problem.items() if k != key}
    wrong_shape = {**problem, key: np.zeros((*problem[key].shape, 2))}
    nan_problem = {**problem, key: np.full(problem[key].shape, np.nan)}
    return [
        {"x0": np.zeros(d + 1)},
        {"x0": np.full(d, np.nan)},
        {"x0": np.full(d, np.inf)},
        {"problem": missing},
        {"problem": {**problem, "extra": np.zeros(3)}},
        {"problem": wrong_shape},
        {"problem": nan_problem},
        {"problem": "not a dict"},
        {"x0": np.zeros(d), "problem": nan_problem},
        {"unknown_option": 1},
    ]


def test_bad_reset_option_raises_and_leaves_the_env_unchanged(env_id):
    # On the unwrapped env: Gymnasium's TimeLimit zeroes its own step counter before it calls
    # the env's reset, whatever the env then does; that wrapper is not optenv's to pin down.
    env, twin = gym.make(env_id).unwrapped, gym.make(env_id).unwrapped
    for e in (env, twin):
        e.reset(seed=8)
        e.step(np.full(e.action_space.shape, 0.3, np.float32))
    for options in _bad_reset_options(env):
        with pytest.raises(ValueError, match="options"):
            env.reset(options=options)
        np.testing.assert_array_equal(env.state, twin.state)
    a = np.full(env.action_space.shape, -0.2, np.float32)
    for _ in range(3):
        ra, rb = env.step(a), twin.step(a)
        np.testing.assert_array_equal(ra[0], rb[0])
        assert ra[1:4] == rb[1:4]
        assert ra[4]["t"] == rb[4]["t"] and ra[4]["f0"] == rb[4]["f0"]
    assert ra[4]["t"] == 4, "the step counter was not disturbed"
    (oa, ia), (ob, ib) = env.reset(), twin.reset()
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["x"], ib["x"])


# ---------------------------------------------------------------------------- bad actions


def _bad_actions(d):
    return [
        (np.zeros(d + 1, np.float32), rf"\({d},\)"),
        (np.zeros((1, d), np.float32), rf"\({d},\)"),
        (np.zeros(0, np.float32), rf"\({d},\)"),
        (np.float32(0.5), rf"\({d},\)"),
        (np.full(d, np.nan, np.float32), "action"),
        (np.array([np.inf] + [0.0] * (d - 1), np.float32), "action"),
        (np.array([0.0] * (d - 1) + [-np.inf], np.float64), "action"),
        (["a"] * d, "action"),
    ]


def test_bad_actions_raise_value_error_and_leave_the_env_unchanged(env_id):
    env, twin = gym.make(env_id), gym.make(env_id)
    for e in (env, twin):
        e.reset(seed=2)
        e.step(np.full(e.action_space.shape, 0.1, np.float32))
    d = env.action_space.shape[0]
    for action, pattern in _bad_actions(d):
        with pytest.raises(ValueError, match=pattern):
            env.step(action)
        np.testing.assert_array_equal(env.unwrapped.state, twin.unwrapped.state)
    a = np.full(d, 0.7, np.float32)
    ra, rb = env.step(a), twin.step(a)
    np.testing.assert_array_equal(ra[0], rb[0])
    assert ra[1:4] == rb[1:4] and ra[4]["t"] == rb[4]["t"] == 2


def test_out_of_bound_actions_are_clipped_and_reported():
    env = gym.make("optenv/Quadratic-v0", max_step=0.5)
    _, info = env.reset(seed=0)
    x0 = info["x"]
    a = np.array([3.0, -7.0, 0.5] + [0.0] * 7, np.float32)
    _, _, _, _, info = env.step(a)
    assert info["action_clipped"]
    np.testing.assert_allclose(info["x"] - x0, 0.5 * np.clip(a, -1, 1), rtol=1e-12, atol=1e-15)
    _, _, _, _, info = env.step(np.zeros(10, np.float32))
    assert not info["action_clipped"]


# ---------------------------------------------------------------------------- divergence


def test_quadratic_divergence_terminates_with_the_finite_penalty():
    env = gym.make("optenv/Quadratic-v0", max_step=1e200)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.ones(10, np.float32))
    assert terminated and not truncated and info["diverged"]
    assert reward == -env.unwrapped.divergence_penalty == -optenv.env.DEFAULT_DIVERGENCE_PENALTY
    assert np.isfinite(obs).all() and obs.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_env_diverging_keeps_reward_and_observation_finite(env_id, dtype):
    env = gym.make(env_id, max_step=1e300, divergence_penalty=7.5, dtype=dtype)
    obs, _ = env.reset(seed=1)
    a = np.ones(env.action_space.shape, np.float32)
    obs, reward, terminated, truncated, info = env.step(a)
    assert terminated and not truncated and info["diverged"]
    assert reward == -7.5
    assert np.isfinite(obs).all()
    assert np.isfinite(env.unwrapped.state).all()
    for _ in range(3):  # stepping on after termination never produces NaN either
        obs, reward, terminated, _, _ = env.unwrapped.step(-a)
        assert np.isfinite(obs).all() and np.isfinite(reward)


def test_a_normal_step_is_not_terminated(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert not terminated and not info["diverged"] and np.isfinite(reward)


# ---------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"history": 0}, "history"),
        ({"history": 2.5}, "history"),
        ({"wobble": 3}, "wobble"),
        ({"split": "validation"}, "split"),
        ({"dtype": "float16"}, "dtype"),
        ({"dtype": "int64"}, "dtype"),
        ({"max_step": 0.0}, "max_step"),
        ({"max_step": float("nan")}, "max_step"),
        ({"divergence_penalty": -1.0}, "divergence_penalty"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(env_id, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        gym.make(env_id, **kwargs)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"render_mode": "human"}, "render_mode"),
        ({"family": "NoSuchFamily"}, "family"),
        ({"family": "Quadratic", "dim": 0}, "dim"),
        ({"family": "NeuralNet", "hidden": -2}, "hidden"),
    ],
)
def test_bad_direct_constructor_arguments_raise_value_error(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        OptimizationEnv(**kwargs)


def test_step_before_reset_is_an_error():
    env = OptimizationEnv("Quadratic")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(10, np.float32))


def test_float32_env_computes_in_float32():
    env = gym.make("optenv/LogisticRegression-v0", dtype="float32")
    obs, info = env.reset(seed=0)
    assert env.unwrapped.state.dtype == np.float32 and obs.dtype == np.float32
    ref = gym.make("optenv/LogisticRegression-v0")
    _, info64 = ref.reset(seed=0)
    assert info["f"] == pytest.approx(info64["f"], rel=1e-5)


# ---------------------------------------------------------------------------- properties

_ENVS: dict[tuple[str, str], gym.Env] = {}


def _cached_env(env_id: str, dtype: str) -> gym.Env:
    if (env_id, dtype) not in _ENVS:
        _ENVS[env_id, dtype] = gym.make(env_id, dtype=dtype, history=3).unwrapped
    return _ENVS[env_id, dtype]


_EXTREME = st.sampled_from([1e300, -1e300, 3.4e38, -3.4e38, 1e-300, -0.0, 1.0, -1.0, 1e10])
_FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64) | _EXTREME


@pytest.mark.parametrize("eid", optenv.BUILTIN_IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_random_and_extreme_finite_actions_keep_observation_and_reward_finite(
    eid, dtype, data, seed
):
    env = _cached_env(eid, dtype)
    d = env.action_space.shape[0]
    env.reset(seed=seed)
    actions = data.draw(st.lists(hnp.arrays(np.float64, (d,), elements=_FLOATS),
                                 min_size=1, max_size=12))
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert np.isfinite(obs).all()
        assert np.isfinite(reward)
        assert not truncated
        assert info["diverged"] == terminated
        assert np.isfinite(info["x"]).all()


@pytest.mark.parametrize("eid", optenv.BUILTIN_IDS)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.sampled_from([1e3, 1e30, 1e200, 1e300]))
def test_huge_max_step_never_yields_nan(eid, seed, scale):
    env = gym.make(eid, max_step=scale, history=2).unwrapped
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        obs, reward, _, _, _ = env.step(rng.choice([-1.0, 1.0], env.action_space.shape))
        assert np.isfinite(obs).all() and np.isfinite(reward)
