"""BPTT on the coordinatewise policy class: rows, exact meta-gradients, truncation, and transfer.

``optenv train bptt --arch coordinatewise-mlp|coordinatewise-lstm`` trains Li & Malik 2017's
:class:`~optenv.policy.CoordinatewisePolicy`; a policy trained on one family must evaluate,
unchanged, on families with other d and other coordinate groups.
"""

from __future__ import annotations

import json

import pytest
import torch
from meta_gradient_check import assert_grads_match_finite_differences

import optenv
from baselines.bptt import (
    DEFAULT_FEATURES,
    CoordinatewiseOptimizer,
    MetaTrainConfig,
    meta_train,
    unroll,
    unrolled_meta_loss,
)
from baselines.bptt_train import ARCHS, load_for_compare, row_scale
from optenv import OptimizationCore
from optenv.core import StateLayout
from optenv.features import FEATURE_SETS
from optenv.lab.cli import main
from optenv.policy import (
    CoordinatewisePolicy,
    load_coordinatewise_policy,
    save_coordinatewise_policy,
)

TINY = ["--iterations", "2", "--batch-size", "4", "--horizon", "5", "--quiet"]
CELLS = ["mlp", "lstm"]


def _net(fam: optenv.ObjectiveFamily, history: int, cell: str,
         features: str = "li-malik-2016") -> CoordinatewiseOptimizer:
    torch.manual_seed(0)
    width = FEATURE_SETS[features].width(history)
    hidden = (6,) if cell == "lstm" else (6, 5)
    pol = CoordinatewisePolicy(width, features=features, hidden=hidden, cell=cell)
    return CoordinatewiseOptimizer(pol, fam.coordinate_groups()).double()


def _context(fam: optenv.ObjectiveFamily, history: int = 25) -> dict:
    return {"family": fam, "history": history, "max_step": fam.default_max_step, "device": "cpu"}


def test_rows_are_the_feature_sets_at_the_unrolls_iteration_and_unknown_sets_are_refused(
) -> None:
    fam = optenv.LogisticRegression(dim=2)
    layout = StateLayout(fam.d, 4)
    core = OptimizationCore(fam, 4)
    data, x0 = fam.sample([0, 1], split="train")
    start = core.start(data, x0)
    state = core.step(data, start.state, start.f, -0.1 * x0).state
    net = _net(fam, 4, "mlp")
    torch.testing.assert_close(net.inputs(layout, state, 1), layout.coordinatewise(state))
    psi = _net(fam, 4, "mlp", "li-malik-2017-psi")
    obs = layout.observation(state)
    for t in (0, 1):
        torch.testing.assert_close(psi.inputs(layout, state, t),
                                   FEATURE_SETS["li-malik-2017-psi"].rows(layout, obs, t))
    assert not torch.equal(psi.inputs(layout, state, 0), psi.inputs(layout, state, 1))
    pol = CoordinatewisePolicy(13, features="nope")
    with pytest.raises(ValueError, match="features: got 'nope'"):
        CoordinatewiseOptimizer(pol, fam.coordinate_groups())


@pytest.mark.parametrize("cell", CELLS)
def test_meta_gradient_with_second_order_terms_matches_finite_differences(cell: str) -> None:
    fam = optenv.LogisticRegression(dim=2, n_points=8)
    core = OptimizationCore(fam, history=2)
    net = _net(fam, 2, cell)
    data, x0 = fam.sample([0, 1], split="train", dtype=torch.float64)
    # log_std is the policy's exploration noise: the mean step (all BPTT trains) ignores it.
    params = [p for name, p in net.named_parameters() if not name.endswith("log_std")]

    def loss() -> torch.Tensor:
        return unrolled_meta_loss(net, core, data, x0, 3, second_order=True).loss

    assert_grads_match_finite_differences(params, loss, abs_tol=1e-9)


def test_the_lstm_state_is_carried_across_unroll_segments() -> None:
    """Two segments with the state handed on are one unroll (what meta_train's truncation
    relies on); restarting the state in the middle changes the run."""
    fam = optenv.NeuralNet(inputs=2, hidden=2)
    core = OptimizationCore(fam, history=3)
    net = _net(fam, 3, "lstm")
    data, x0 = fam.sample([0, 1, 2], split="train", dtype=torch.float64)
    with torch.no_grad():
        whole = unrolled_meta_loss(net, core, data, x0, 4)
        first = unrolled_meta_loss(net, core, data, x0, 2)
        second = unroll(net, core, data, first.state, first.f, first.hidden, 2)
        fresh = unroll(net, core, data, first.state, first.f,
                       net.initial_state(3, fam.d, dtype=torch.float64), 2)
    assert len(first.hidden) == 1 and first.hidden[0][0].shape == (3 * fam.d, 6)
    torch.testing.assert_close(second.state, whole.state, rtol=0, atol=0)
    assert not torch.allclose(fresh.state, whole.state)


def test_meta_training_lowers_the_meta_loss_and_keeps_the_kinds_out_of_the_weights() -> None:
    fam = optenv.LogisticRegression()
    width = FEATURE_SETS["li-malik-2016"].width(25)
    torch.manual_seed(0)
    pol = CoordinatewisePolicy(width, cell="mlp", obs_scale=row_scale(fam, 25, 10, n=8))
    net = CoordinatewiseOptimizer(pol, fam.coordinate_groups())
    log = meta_train(net, fam, MetaTrainConfig(iterations=12, batch_size=8, horizon=10,
                                               unroll=10, lr=3e-3))
    assert log.skipped_unrolls == 0
    assert sum(log.meta_loss[-4:]) / 4 < 0.8 * sum(log.meta_loss[:4]) / 4
    assert "kinds" not in net.state_dict()  # the training family's, not the policy's


@pytest.mark.parametrize(("cell", "features", "history"), [
    ("mlp", "li-malik-2016", 25), ("lstm", "li-malik-2016", 25),
    ("mlp", "li-malik-2017-psi", 25), ("lstm", "li-malik-2017", 132)])
def test_the_env_policy_steps_as_the_training_unroll(cell: str, features: str,
                                                    history: int) -> None:
    """Evaluation computes the rows of the same feature set at the same iterations as
    training: the env policy built from the trained net, on flat observations or on the rows
    a coordinatewise env emits, reproduces the unroll's iterates on the same objectives."""
    fam = optenv.NeuralNet(inputs=2, hidden=2)
    net = _net(fam, history, cell, features)
    layout = StateLayout(fam.d, history)
    flat = net.policy.as_env_policy(1e6, fam.coordinate_groups(), layout)
    ev = optenv.evaluate(flat, fam, n_test=3, horizon=5, max_step=1e6, obs_dtype="float64",
                         history=history)
    rows = net.policy.as_env_policy(1e6, fam.coordinate_groups())
    ev_rows = optenv.evaluate(rows, fam, n_test=3, horizon=5, max_step=1e6,
                              obs_dtype="float64", history=history, observation="coordinatewise",
                              features=features)
    data, x0 = fam.sample([0, 1, 2], split="test", dtype=torch.float64)
    with torch.no_grad():
        res = unrolled_meta_loss(net, OptimizationCore(fam, history), data, x0, 5)
    torch.testing.assert_close(torch.as_tensor(ev_rows.f[:, -1]), res.f, rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(ev.f[:, -1]), res.f, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["coordinatewise-mlp", "coordinatewise-lstm"])
def test_a_policy_trained_on_one_family_evaluates_unchanged_on_others(tmp_path, arch) -> None:
    out = tmp_path / arch
    assert main(["train", "bptt", "--arch", arch, "--out", str(out), *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["arch"], cfg["features"]) == (arch, DEFAULT_FEATURES)
    policy, extra = load_coordinatewise_policy(str(out / "optimizer.pt"))
    assert extra["arch"] == arch and extra["features"] == DEFAULT_FEATURES
    assert extra["history"] == 25 and policy.features == DEFAULT_FEATURES
    assert extra["train_groups"] == [["w", "weight", 3], ["b", "bias", 1]]
    assert policy.cell == arch.split("-")[1]
    for fam in (optenv.LogisticRegression(), optenv.LogisticRegression(dim=20),
                optenv.LogisticRegression(dim=100), optenv.RobustRegression(),
                optenv.NeuralNet()):
        act = load_for_compare(str(out), _context(fam))
        ev = optenv.evaluate(act, fam, n_test=3, horizon=5)
        assert ev.f.shape == (3, 6), fam
        assert bool(torch.isfinite(torch.as_tensor(ev.f)).all()), fam
    # ... and through `optenv compare` on another env id.
    cmp_out = tmp_path / "compare"
    assert main(["compare", "--env", "optenv/NeuralNet-v0", "--methods", f"gd,bptt:{out}",
                 "--n-test", "3", "--horizon", "5", "--no-tune", "--no-plots", "--quiet",
                 "--out", str(cmp_out)]) == 0
    results = json.loads((cmp_out / "results.json").read_text())
    assert f"bptt:{out}" in json.dumps(results)


def test_a_history_mismatch_is_a_clear_error(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", "bptt", "--arch", "coordinatewise-mlp", "--out", str(out), *TINY]) == 0
    with pytest.raises(ValueError, match="need history 25, the env has 10"):
        load_for_compare(str(out), _context(optenv.NeuralNet(), history=10))


def test_a_policy_of_an_unknown_feature_set_is_refused_by_name(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", "bptt", "--arch", "coordinatewise-mlp", "--out", str(out), *TINY]) == 0
    policy, extra = load_coordinatewise_policy(str(out / "optimizer.pt"))
    other = CoordinatewisePolicy(policy.width, features="li-malik-2099")
    save_coordinatewise_policy(str(out / "optimizer.pt"), other, extra)
    with pytest.raises(ValueError, match="feature set 'li-malik-2099'"):
        load_for_compare(str(out), _context(optenv.LogisticRegression()))


def test_bad_arch_lists_the_allowed_ones_and_features_need_a_coordinatewise_arch(
        tmp_path, capsys) -> None:
    assert main(["train", "bptt", "--arch", "transformer", "--out", str(tmp_path / "a"),
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "--arch" in err and all(a in err for a in ARCHS) and err.count("\n") == 1
    assert main(["train", "bptt", "--arch", "lstm", "--features", DEFAULT_FEATURES,
                 "--out", str(tmp_path / "b"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--features" in err and "coordinatewise-mlp" in err
    assert not (tmp_path / "b").exists()


def test_the_2017_features_train_with_their_own_history_and_load_only_where_they_are_read(
        tmp_path) -> None:
    out = tmp_path / "run17"
    assert main(["train", "bptt", "--arch", "coordinatewise-mlp", "--features", "li-malik-2017",
                 "--out", str(out), *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["features"], cfg["history"]) == ("li-malik-2017", 132)
    fam = optenv.LogisticRegression(dim=3)
    act = load_for_compare(str(out), _context(fam, history=132))
    ev = optenv.evaluate(act, fam, n_test=2, horizon=4, history=132)
    assert ev.f.shape == (2, 5)
    wrong = {**_context(fam, history=132), "observation": "coordinatewise",
             "features": "li-malik-2017-psi"}
    with pytest.raises(ValueError, match="reads feature set 'li-malik-2017', the env emits "
                                         "'li-malik-2017-psi'"):
        load_for_compare(str(out), wrong)
