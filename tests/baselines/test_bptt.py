"""The BPTT learned optimiser: preprocessing, exact meta-gradients, and that training learns."""

from __future__ import annotations

import math

import pytest
import torch
from meta_gradient_check import assert_grads_match_finite_differences

from baselines.bptt import (
    CoordinatewiseLSTM,
    MetaTrainConfig,
    meta_train,
    preprocess_gradients,
    unrolled_meta_loss,
)
from optenv import OptimizationCore, make_family


def test_preprocessing_matches_its_formula_on_both_sides_of_the_threshold() -> None:
    p = 10.0
    thr = math.exp(-p)
    g = torch.tensor([3.0, -0.5, thr, -thr, thr * 0.5, -thr * 0.25, 0.0], dtype=torch.float64)
    out = preprocess_gradients(g, p)
    expected = torch.tensor([
        [math.log(3.0) / p, 1.0],
        [math.log(0.5) / p, -1.0],
        [-1.0, 1.0],
        [-1.0, -1.0],
        [-1.0, 0.5],
        [-1.0, -0.25],
        [-1.0, 0.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def _tiny_problem() -> tuple[CoordinatewiseLSTM, OptimizationCore, dict, torch.Tensor]:
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden=4, layers=2, output_scale=0.5).double()
    fam = make_family("LogisticRegression", dim=2, n_points=8)
    data, x0 = fam.sample([0, 1], split="train")
    return net, OptimizationCore(fam, history=2), data, x0


def _fd_check(net, loss_fn, n_checks: int = 6) -> None:
    assert_grads_match_finite_differences(net.parameters(), loss_fn, n_checks=n_checks)


def test_meta_gradient_with_second_order_terms_matches_finite_differences() -> None:
    net, core, data, x0 = _tiny_problem()
    _fd_check(net, lambda: unrolled_meta_loss(net, core, data, x0, 4, second_order=True).loss)


def test_first_order_meta_gradient_matches_finite_differences_with_gradients_held_fixed() -> None:
    net, core, data, x0 = _tiny_problem()
    frozen = unrolled_meta_loss(net, core, data, x0, 4).grads
    first = torch.autograd.grad(unrolled_meta_loss(net, core, data, x0, 4).loss,
                                list(net.parameters()))
    fixed = torch.autograd.grad(
        unrolled_meta_loss(net, core, data, x0, 4, frozen_grads=frozen).loss,
        list(net.parameters()))
    for a, b in zip(first, fixed, strict=True):
        torch.testing.assert_close(a, b)
    _fd_check(net, lambda: unrolled_meta_loss(net, core, data, x0, 4, frozen_grads=frozen).loss)
    second = torch.autograd.grad(
        unrolled_meta_loss(net, core, data, x0, 4, second_order=True).loss,
        list(net.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(first, second, strict=True))


def test_quick_meta_training_lowers_the_meta_loss() -> None:
    torch.manual_seed(0)
    net = CoordinatewiseLSTM()
    fam = make_family("LogisticRegression")
    log = meta_train(net, fam, MetaTrainConfig(iterations=30, batch_size=16))
    assert log.skipped_unrolls == 0
    first, last = sum(log.meta_loss[:5]) / 5, sum(log.meta_loss[-5:]) / 5
    assert last < 0.8 * first


def test_a_diverging_unroll_is_skipped_and_never_applied() -> None:
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(output_scale=1e300)
    before = [p.detach().clone() for p in net.parameters()]
    fam = make_family("Quadratic", dim=3)
    log = meta_train(net, fam, MetaTrainConfig(iterations=2, batch_size=4, horizon=4, unroll=2,
                                               dtype="float64"))
    assert log.skipped_unrolls == 4
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)
        assert torch.isfinite(p).all()


def test_meta_train_config_rejects_bad_arguments_by_name() -> None:
    with pytest.raises(ValueError, match="unroll"):
        MetaTrainConfig(unroll=0)
    with pytest.raises(ValueError, match="dtype"):
        MetaTrainConfig(dtype="float16")


def test_saved_lstm_round_trips_and_a_bad_file_is_a_clear_error(tmp_path) -> None:
    from baselines.bptt import load_lstm, save_lstm

    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden=5)
    path = str(tmp_path / "lstm.pt")
    save_lstm(path, net, {"env_id": "optenv/LogisticRegression-v0"})
    loaded, extra = load_lstm(path)
    assert extra == {"env_id": "optenv/LogisticRegression-v0"}
    g = torch.randn(3, 4)
    s1, _ = net(g, net.initial_state(3, 4))
    s2, _ = loaded(g, loaded.initial_state(3, 4))
    torch.testing.assert_close(s1, s2)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="path"):
        load_lstm(str(bad))


def test_lstm_policy_in_the_vector_env_equals_the_direct_unroll() -> None:
    import gymnasium as gym

    from baselines.bptt import LSTMPolicy

    torch.manual_seed(0)
    net = CoordinatewiseLSTM().double()
    venv = gym.make_vec("optenv/LogisticRegression-v0", num_envs=3, max_step=1e6,
                        max_episode_steps=5)
    obs, info = venv.reset(seed=7)
    policy = LSTMPolicy(net, venv.unwrapped.observation_layout, venv.unwrapped.max_step)
    for _ in range(5):
        obs, *_ , info = venv.step(policy(obs))
    fam = venv.unwrapped.family
    data, x0 = fam.sample([7, 8, 9], split="train")
    core = OptimizationCore(fam, history=25)
    with torch.no_grad():
        res = unrolled_meta_loss(net, core, data, x0, 5)
    torch.testing.assert_close(info["f"], res.f)
    # After the horizon the env starts new episodes; the policy restarts its LSTM state there.
    obs, *_ = venv.step(policy(obs))
    assert bool((venv.unwrapped._t == 0).all())
