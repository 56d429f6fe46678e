"""CoordinatewisePolicy: one network per coordinate row, shared, so it runs on any d."""

from __future__ import annotations

import pytest
import torch

import optenv
from optenv.core import StateLayout
from optenv.policy import (
    CoordinatewisePolicy,
    load_coordinatewise_policy,
    save_coordinatewise_policy,
)

WIDTH = 3 * 4 + 1


def _policy(cell: str = "mlp") -> CoordinatewisePolicy:
    torch.manual_seed(0)
    hidden = (16,) if cell == "lstm" else (16, 8)
    return CoordinatewisePolicy(WIDTH, hidden=hidden, cell=cell).double()


@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_permuting_a_groups_rows_permutes_its_steps(cell: str) -> None:
    pol = _policy(cell)
    fam = optenv.NeuralNet(inputs=2, hidden=3)
    kinds = pol.kind_index(fam.coordinate_groups())
    rows = torch.randn(4, fam.d, WIDTH, dtype=torch.float64)
    group = fam.coordinate_groups()[0].index
    perm = torch.arange(fam.d)
    perm[group] = group[torch.randperm(group.numel(), generator=torch.Generator().manual_seed(1))]
    assert not torch.equal(perm, torch.arange(fam.d))
    mean, state = pol(rows, kinds)
    mean_p, state_p = pol(rows[:, perm], kinds[perm])
    torch.testing.assert_close(mean_p, mean[:, perm], rtol=0, atol=1e-12)
    if cell == "lstm":  # the next step too: the state travels with its coordinate
        again, _ = pol(rows, kinds, state)
        again_p, _ = pol(rows[:, perm], kinds[perm], state_p)
        torch.testing.assert_close(again_p, again[:, perm], rtol=0, atol=1e-12)


def test_the_kind_of_a_group_changes_the_step() -> None:
    pol = _policy()
    rows = torch.randn(1, 5, WIDTH, dtype=torch.float64)
    weight = pol(rows, torch.zeros(5, dtype=torch.int64))[0]
    bias = pol(rows, torch.ones(5, dtype=torch.int64))[0]
    assert not torch.allclose(weight, bias)
    assert pol.variance(torch.tensor([0, 1, 2])).shape == (3,)


@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_one_policy_acts_on_families_of_any_dimension(cell: str) -> None:
    pol = _policy(cell).float()
    for fam in (optenv.LogisticRegression(), optenv.LogisticRegression(dim=100),
                optenv.NeuralNet(), optenv.Quadratic()):
        layout = StateLayout(fam.d, 4)
        act = pol.as_env_policy(fam.default_max_step, fam.coordinate_groups(), layout)
        ev = optenv.evaluate(act, fam, n_test=3, horizon=5, history=4)
        assert ev.f.shape == (3, 6)
        assert bool(torch.isfinite(torch.as_tensor(ev.f)).all())


def test_env_policy_takes_flat_or_coordinatewise_observations_alike() -> None:
    pol = _policy().float()
    fam = optenv.LogisticRegression(dim=3)
    layout = StateLayout(fam.d, 4)
    obs = torch.randn(2, layout.obs_dim)
    flat = pol.as_env_policy(1.0, fam.coordinate_groups(), layout)(obs)
    rows = pol.as_env_policy(1.0, fam.coordinate_groups())(
        layout.coordinatewise(obs, observation=True))
    assert torch.equal(flat, rows)
    single = pol.as_env_policy(1.0, fam.coordinate_groups(), layout)(obs[0])
    torch.testing.assert_close(single, flat[0])


@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_a_saved_policy_loads_with_the_same_steps(tmp_path, cell: str) -> None:
    pol = _policy(cell)
    path = tmp_path / "policy.pt"
    save_coordinatewise_policy(str(path), pol, {"trained_on": "LogisticRegression"})
    back, extra = load_coordinatewise_policy(str(path))
    assert extra == {"trained_on": "LogisticRegression"} and back.config() == pol.config()
    rows, kinds = torch.randn(2, 7, WIDTH, dtype=torch.float64), torch.zeros(7, dtype=torch.int64)
    assert torch.equal(back(rows, kinds)[0], pol(rows, kinds)[0])
    assert "d" not in back.config()


def test_bad_arguments_raise_naming_them(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"^cell: got 'gru'"):
        CoordinatewisePolicy(WIDTH, cell="gru")
    with pytest.raises(ValueError, match=r"^hidden: .*exactly one"):
        CoordinatewisePolicy(WIDTH, cell="lstm", hidden=(8, 8))
    with pytest.raises(ValueError, match=r"^kinds: got"):
        CoordinatewisePolicy(WIDTH, kinds=("weight", "matrix"))
    pol = CoordinatewisePolicy(WIDTH, kinds=("weight", "bias"))
    with pytest.raises(ValueError, match=r"^groups: group 'x' has kind 'other'"):
        pol.kind_index(optenv.Quadratic().coordinate_groups())
    with pytest.raises(ValueError, match=f"^rows: got 5 columns, allowed: {WIDTH}.*li-malik-2016"):
        pol(torch.zeros(1, 3, 5), torch.zeros(3, dtype=torch.int64))
    flat = tmp_path / "flat.pt"
    optenv.policy.save_policy(str(flat), optenv.policy.GaussianMLPPolicy(4, 2))
    with pytest.raises(ValueError, match="CoordinatewisePolicy"):
        load_coordinatewise_policy(str(flat))


def test_groups_a_family_reports_must_partition_its_coordinates_to_be_bound() -> None:
    class Overlapping(optenv.Quadratic):
        def coordinate_groups(self):
            return (optenv.CoordinateGroup("a", torch.arange(0, 6), "weight"),
                    optenv.CoordinateGroup("b", torch.arange(5, 10), "bias"))

    pol = CoordinatewisePolicy(WIDTH)
    with pytest.raises(ValueError, match=r"do not partition the 10 coordinates"):
        pol.kind_index(Overlapping().coordinate_groups())


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_given_t_restarts_each_env_of_a_vector_env_on_its_own(mode: str) -> None:
    """Autoresets restart the envs of a vector env at different times; with t = infos["t"]
    each env's steps are those of a fresh policy run on that env's episode alone."""
    import gymnasium as gym

    torch.manual_seed(0)
    pol = CoordinatewisePolicy(3, hidden=(8,), cell="lstm", features="li-malik-2017-psi")
    venv = gym.make_vec("optenv/LogisticRegression-v0", num_envs=2, max_episode_steps=5,
                        history=4, autoreset_mode=mode, dtype="float32")
    family, layout = venv.unwrapped.family, venv.unwrapped.layout
    act = pol.as_env_policy(1.0, family.coordinate_groups(), layout)
    obs, info = venv.reset(seed=3)
    seen: list[list[tuple[torch.Tensor, int, torch.Tensor]]] = [[], []]
    for i in range(14):
        if i == 2:  # env 1 restarts early, so the two envs' episodes are out of step
            obs, info = venv.reset(options={"reset_mask": torch.tensor([False, True])})
        steps = act(obs, t=info["t"])
        for e in range(2):
            seen[e].append((obs[e].clone(), int(info["t"][e]), steps[e].clone()))
        obs, _, _, _, info = venv.step(steps)
    starts = [[t for _, t, _ in s].count(0) for s in seen]
    assert starts[0] >= 2 and starts[1] >= 3  # each env restarted, env 1 more often
    fresh = pol.as_env_policy(1.0, family.coordinate_groups(), layout)
    for e in range(2):
        for o, t, step in seen[e]:
            if t == 0:
                fresh.reset()
            assert fresh.t == t
            torch.testing.assert_close(fresh(o), step, rtol=1e-5, atol=1e-6)


def test_given_t_must_be_integers_one_per_observation() -> None:
    pol = _policy().float()
    fam = optenv.LogisticRegression(dim=3)
    act = pol.as_env_policy(1.0, fam.coordinate_groups(), StateLayout(fam.d, 4))
    obs = torch.randn(2, StateLayout(fam.d, 4).obs_dim)
    with pytest.raises(ValueError, match=r"^t: got dtype torch.float"):
        act(obs, t=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"^t: got shape \(3,\), allowed: \(\) or \(2,\)"):
        act(obs, t=[0, 1, 2])
    with pytest.raises(ValueError, match=r"^t: got \[-1, 0\], allowed: iterations >= 0"):
        act(obs, t=[-1, 0])
    assert torch.equal(act(obs, t=0), act(obs, t=[0, 0]))
