"""The vector env's reset: seeds (env i gets seed + i, or one seed per env), the next
episode without a seed, reset masks, and the problem/x0 options.
"""

from __future__ import annotations

import pytest
import torch
from gymnasium.vector import AutoresetMode

import optenv
from optenv import OptimizationVectorEnv


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


@pytest.mark.parametrize(
    "seed,pattern",
    [
        (1.5, r"seed: got 1.5, allowed: None, an int in \[0, 2\*\*63\) or a sequence of 3"),
        (True, "seed: got True"),
        ("7", "seed: got '7'"),
        ([1, 2.0, 3], r"seed\[1\]: got 2.0"),
        (2**63 - 2, r"seed: got .* must stay below 2\*\*63"),
    ],
)
def test_bad_seed_says_what_a_seed_may_be_and_changes_nothing(seed, pattern):
    venv = OptimizationVectorEnv("Quadratic", 3, dim=2)
    venv.reset(seed=4)
    venv.step(torch.full((3, 2), 0.5))
    state, rng_state = venv.state.clone(), venv.np_random.bit_generator.state
    with pytest.raises(ValueError, match=pattern):
        venv.reset(seed=seed)
    torch.testing.assert_close(venv.state, state, rtol=0, atol=0)
    assert venv.np_random.bit_generator.state == rng_state


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


def test_first_reset_must_reset_every_env_outside_disabled_mode():
    venv = OptimizationVectorEnv("Quadratic", 2)
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": torch.tensor([True, False])})
    with pytest.raises(RuntimeError, match="reset"):
        OptimizationVectorEnv("Quadratic", 2).step(torch.zeros(2, 10))
