"""The shipped pretrained optimisers: each loads, says where it came from, and optimises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import optenv
from optenv.learned import LearnedPolicy
from optenv.policy import CoordinatewisePolicy, save_coordinatewise_policy
from optenv.pretrained import make

NAMES = optenv.pretrained.names()


def test_the_package_ships_pretrained_optimisers_for_every_2016_family() -> None:
    trained_on = {optenv.pretrained.info(n)["training_env"] for n in NAMES}
    assert trained_on >= set(optenv.BUILTIN_IDS)


@pytest.mark.parametrize("name", NAMES)
def test_each_records_its_provenance_and_held_out_figures(name: str) -> None:
    meta = optenv.pretrained.info(name)
    assert meta["name"] == name and meta["command"].startswith("optenv train ")
    assert meta["compare_command"].startswith("optenv compare ")
    assert meta["optenv_version"] and meta["torch_version"]
    held = meta["heldout"]
    assert held["split"] == "test" and held["n_test"] >= 100
    ours = [m for k, m in held["methods"].items() if ":" in k]
    assert len(ours) == 1 and ours[0]["final_mean_f"] is not None
    assert (optenv.pretrained.FOLDER / f"{name}.pt").stat().st_size < 64 * 1024  # KB, not MB


@pytest.mark.parametrize("name", NAMES)
def test_each_reduces_the_loss_of_fresh_problems(name: str) -> None:
    """Held-out objectives of its training env (seeds the comparison did not use), and a torch
    model it never saw: a two-layer net on random regression data."""
    learned = optenv.pretrained.load(name)
    assert isinstance(learned, LearnedPolicy)
    meta = learned.metadata
    family = optenv.family_of(meta["training_env"])
    act = learned.env_policy(family, {"history": 25, "max_step": family.default_max_step}, name)
    ev = optenv.evaluate(act, meta["training_env"], n_test=8, horizon=40, seed=10_000)
    assert float(ev.f[:, -1].mean()) < float(ev.f[:, 0].mean())

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(128, 6), torch.randn(128, 1)
    opt = optenv.LearnedOptimizer(model.parameters(), name, scale=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss
    first = float(opt.step(closure).detach())
    for _ in range(40):
        last = float(opt.step(closure).detach())
    assert last < first


def _fake_run(folder: Path) -> None:
    folder.mkdir()
    save_coordinatewise_policy(str(folder / "policy.pt"), CoordinatewisePolicy(
        3, features="li-malik-2017-psi", hidden=(4,)), {
        "env": "optenv/Quadratic-v0", "history": 25, "max_step": 1.0,
        "features": "li-malik-2017-psi", "groups": [["x", 10, "other"]]})
    (folder / "config.json").write_text(json.dumps({"trainer": "gps"}))


def _results(methods: dict[str, float]) -> dict:
    return {"schema": "optenv-compare/1", "env_id": "optenv/Quadratic-v0", "horizon": 40,
            "split": "test", "n_test": 100, "seed": 0,
            "methods": {k: {"mean_f": [1.0, v], "median_f": [1.0, v], "fraction_diverged": 0.0}
                        for k, v in methods.items()}}


def test_make_writes_the_weights_and_their_provenance(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run")
    (tmp_path / "results.json").write_text(json.dumps(_results({"gd": 0.5, "gps:run": 0.25})))
    path = make.make("my-opt", tmp_path / "run", command="optenv train gps --quick",
                     compare=tmp_path / "results.json", compare_command="optenv compare",
                     summary="test", folder=tmp_path)
    meta = json.loads(path.read_text())
    assert meta["heldout"]["methods"]["gps:run"]["final_mean_f"] == 0.25
    assert meta["trained_kinds"] == ["other"] and meta["trainer"] == "gps"
    assert meta["optenv_version"] == optenv.__version__
    assert (tmp_path / "my-opt.pt").stat().st_mode & 0o777 == 0o644


def test_make_refuses_a_file_that_is_not_a_comparison(tmp_path: Path, capsys) -> None:
    _fake_run(tmp_path / "run")
    (tmp_path / "results.json").write_text(json.dumps({"schema": "other"}))
    code = make.main(["x", str(tmp_path / "run"), "--command", "c", "--compare",
                      str(tmp_path / "results.json"), "--compare-command", "c", "--summary", "s",
                      "--folder", str(tmp_path)])
    assert code == 2 and "not an optenv compare results.json" in capsys.readouterr().err
    assert not list(tmp_path.glob("x.*"))


def test_an_env_emitting_another_feature_set_is_refused_by_name() -> None:
    learned = optenv.pretrained.load(NAMES[0])
    context = {"history": 25, "max_step": 1.0, "observation": "coordinatewise",
               "features": "li-malik-2016"}
    with pytest.raises(ValueError, match=f"pretrained:{NAMES[0]}: it reads feature set "
                                         "'li-malik-2017-psi', the env emits 'li-malik-2016'"):
        learned.env_policy(optenv.NeuralNet(), context, f"pretrained:{NAMES[0]}")
