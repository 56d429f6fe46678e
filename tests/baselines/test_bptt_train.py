"""``optenv train bptt``: run folders, resume, errors, and evaluation through optenv compare."""

from __future__ import annotations

import json

import pytest
import torch

from baselines.bptt import MLPOptimizer, unrolled_meta_loss
from baselines.bptt_train import ARCHS, load_for_compare, observation_scale
from optenv import OptimizationCore, make_family
from optenv.lab.cli import main
from optenv.policy import GaussianMLPPolicy

TINY = ["--iterations", "3", "--batch-size", "4", "--horizon", "6", "--quiet"]


@pytest.mark.parametrize("arch", ARCHS)
def test_train_bptt_writes_a_run_folder_that_compare_can_load(tmp_path, arch) -> None:
    out = tmp_path / arch
    assert main(["train", "bptt", "--arch", arch, "--out", str(out), *TINY]) == 0
    for name in ("config.json", "checkpoint.pt", "log.csv", "curves.png", "optimizer.pt"):
        assert (out / name).exists(), name
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("iteration,meta_loss") and len(rows) == 4
    fam = make_family("LogisticRegression")
    policy = load_for_compare(str(out), {"family": fam, "history": 25, "max_step": 1.0,
                                         "device": "cpu"})
    obs = torch.zeros(3, OptimizationCore(fam, 25).layout.obs_dim)
    assert policy(obs).shape == (3, fam.d)


@pytest.mark.parametrize("arch", ARCHS)
def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path, arch) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    base = ["train", "bptt", "--arch", arch, "--batch-size", "4", "--horizon", "6", "--quiet"]
    assert main([*base, "--iterations", "4", "--out", str(whole)]) == 0
    assert main([*base, "--iterations", "2", "--out", str(part)]) == 0
    assert main([*base, "--iterations", "4", "--out", str(part), "--resume"]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for k, v in a["state"]["net"].items():
        torch.testing.assert_close(v, b["state"]["net"][k], rtol=0, atol=0)
    log_a, log_b = json.loads(a["log_json"]), json.loads(b["log_json"])
    assert [r["meta_loss"] for r in log_a] == [r["meta_loss"] for r in log_b]


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path) -> None:
    """Such a folder holds config.json alone; --resume starts it afresh with that configuration
    (the same numbers as an uninterrupted run), where it used to be a dead end."""
    whole, dead = tmp_path / "whole", tmp_path / "dead"
    assert main(["train", "bptt", "--out", str(whole), *TINY]) == 0
    dead.mkdir()
    (dead / "config.json").write_bytes((whole / "config.json").read_bytes())
    assert main(["train", "bptt", "--out", str(dead), "--resume", *TINY]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(dead / "checkpoint.pt", weights_only=True)
    for k, v in a["state"]["net"].items():
        torch.testing.assert_close(v, b["state"]["net"][k], rtol=0, atol=0)
    assert a["log_json"].count("meta_loss") == 3


def test_existing_run_is_not_overwritten_and_mismatched_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "bptt", "--out", str(out), *TINY]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", "bptt", "--out", str(out), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "bptt", "--out", str(out), "--resume", "--lr", "0.1", *TINY]) == 2
    err = capsys.readouterr().err
    assert "lr" in err and err.count("\n") == 1
    assert (out / "checkpoint.pt").read_bytes() == before
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "bptt", "--out", str(out), *TINY]) == 0
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["train", "bptt", "--out", str(out), "--resume", *TINY]) == 2
    assert "checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv, word", [
    (["--env", "CartPole-v1"], "--env"),
    (["--iterations", "0"], "--iterations"),
    (["--device", "nonsense"], "--device"),
])
def test_bad_arguments_name_themselves(tmp_path, capsys, argv, word) -> None:
    assert main(["train", "bptt", "--out", str(tmp_path / "r"), "--quiet", *argv]) == 2
    assert word in capsys.readouterr().err


def test_mlp_meta_gradient_with_second_order_terms_matches_finite_differences() -> None:
    torch.manual_seed(0)
    fam = make_family("Quadratic", dim=2)
    core = OptimizationCore(fam, history=2)
    net = MLPOptimizer(GaussianMLPPolicy(core.layout.obs_dim, 2, hidden=(5,))).double()
    data, x0 = fam.sample([0, 1])
    loss = unrolled_meta_loss(net, core, data, x0, 3, second_order=True).loss
    w = net.policy.mean_net[0].weight
    (grad,) = torch.autograd.grad(loss, [w])
    eps = 1e-6
    for idx in [(0, 0), (2, 5), (4, 9)]:
        with torch.no_grad():
            w[idx] += eps
            up = float(unrolled_meta_loss(net, core, data, x0, 3, second_order=True).loss)
            w[idx] -= 2 * eps
            down = float(unrolled_meta_loss(net, core, data, x0, 3, second_order=True).loss)
            w[idx] += eps
        assert grad[idx].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_observation_scale_is_finite_positive_and_one_on_always_zero_features() -> None:
    fam = make_family("LogisticRegression")
    scale = observation_scale(fam, history=25, horizon=3, n=8)
    assert scale.shape == (OptimizationCore(fam, 25).layout.obs_dim,)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    # With horizon 3 the oldest history slots are never filled: their scale stays 1.
    assert scale[0] == 1.0


def test_the_presets_are_the_config_declarations(tmp_path) -> None:
    """--quick and the full run are MetaTrainConfig's quick values and defaults (one
    declaration); an explicit flag overrides the preset, and the MLP's truncation defaults to
    the horizon."""
    from baselines.bptt import MetaTrainConfig

    full = MetaTrainConfig()
    assert (full.iterations, full.batch_size, full.unroll) == (1000, 64, 20)
    out = tmp_path / "run"
    argv = ["train", "bptt", "--arch", "mlp", "--quick", "--iterations", "1", "--horizon", "3",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["iterations"], cfg["batch_size"], cfg["horizon"], cfg["unroll"]) == (1, 32, 3, 3)
