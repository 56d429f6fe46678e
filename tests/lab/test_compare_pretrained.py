"""``optenv compare --methods pretrained:NAME``, and a real BPTT run as a torch optimiser."""

from __future__ import annotations

import pytest
import torch

import optenv
from optenv.lab.cli import main


def test_compare_evaluates_a_pretrained_optimiser_like_any_method(tmp_path, capsys) -> None:
    name = optenv.pretrained.names()[0]
    code = main(["compare", "--env", "optenv/NeuralNet-v0", "--methods", f"gd,pretrained:{name}",
                 "--no-tune", "--n-test", "3", "--horizon", "5", "--quiet", "--no-plots",
                 "--out", str(tmp_path / "cmp")])
    assert code == 0 and f"pretrained:{name}" in capsys.readouterr().out


@pytest.mark.parametrize("spec,message", [
    ("pretrained:no-such", "name: got 'no-such', allowed: one of the pretrained optimisers"),
])
def test_an_unknown_pretrained_name_is_one_line_error(tmp_path, capsys, spec, message) -> None:
    code = main(["compare", "--methods", f"gd,{spec}", "--no-tune", "--n-test", "2",
                 "--horizon", "3", "--quiet", "--no-plots", "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err


def test_an_env_of_another_history_is_one_line_error(tmp_path, capsys) -> None:
    """A 2016-row policy needs the history it was trained with (here a run of H = 25)."""
    run = tmp_path / "bptt"
    assert main(["train", "bptt", "--arch", "coordinatewise-mlp", "--iterations", "1",
                 "--batch-size", "2", "--horizon", "3", "--quiet", "--out", str(run)]) == 0
    learned = optenv.learned.load_run(run)
    assert learned.history == 25 and learned.trained_kinds == ("weight", "bias")
    with pytest.raises(ValueError, match="need history 25, the env has 10"):
        learned.env_policy(optenv.NeuralNet(), {"history": 10, "max_step": 1.0}, "bptt")


def test_a_bptt_run_folder_trains_a_torch_model(tmp_path) -> None:
    run = tmp_path / "bptt"
    assert main(["train", "bptt", "--arch", "coordinatewise-lstm", "--features",
                 "li-malik-2017-psi", "--iterations", "1", "--batch-size", "2", "--horizon", "3",
                 "--quiet", "--out", str(run)]) == 0
    model = torch.nn.Linear(4, 2)
    opt = optenv.LearnedOptimizer(model.parameters(), run)
    assert opt.learned.policy.recurrent and opt.learned.trained_kinds == ("weight", "bias")
    x = torch.randn(8, 4)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss
    before = model.weight.detach().clone()
    opt.step(closure)
    opt.step(closure)
    assert not torch.equal(before, model.weight) and "lstm_h" in opt.state[model.weight]
