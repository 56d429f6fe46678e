"""MLPClassifier: f and ∇f against torch.nn, the minibatch stream, curvature, bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import optenv
from optenv.core import OptimizationCore
from optenv.families import MLPClassifier
from optenv.rollout import rollout

ACT = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def reference_net(family: MLPClassifier, x: torch.Tensor) -> nn.Sequential:
    """The nn.Sequential MLP with the weights of one instance's x [d]."""
    mods: list[nn.Module] = []
    for W, b in family.unpack(x.unsqueeze(0)):
        lin = nn.Linear(W.shape[2], W.shape[1]).to(x.dtype)
        with torch.no_grad():
            lin.weight.copy_(W[0])
            lin.bias.copy_(b[0])
        mods += [lin, ACT[family.activation]()]
    return nn.Sequential(*mods[:-1])


def reference_loss(family: MLPClassifier, net: nn.Sequential, X: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    reg = sum((m.weight ** 2).sum() for m in net if isinstance(m, nn.Linear))
    return nn.functional.cross_entropy(net(X), y) + 0.5 * family.l2 * reg


def reference_grad(family: MLPClassifier, x: torch.Tensor, X: torch.Tensor,
                   y: torch.Tensor) -> tuple[float, torch.Tensor]:
    net = reference_net(family, x)
    loss = reference_loss(family, net, X, y)
    loss.backward()
    grads = [t for m in net if isinstance(m, nn.Linear)
             for t in (m.weight.grad.flatten(), m.bias.grad)]
    return float(loss.detach()), torch.cat(grads)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_f_and_grad_equal_a_torch_sequential_on_the_same_minibatch(activation):
    fam = MLPClassifier(hidden=(7, 5), inputs=12, activation=activation, l2=0.01,
                        batch_size=16)
    data, x = fam.sample([0, 1, 2])
    data["iteration"] += 3.0
    f, g = fam.value_and_grad(x, data)
    X, y = fam.minibatch(data, x)
    for b in range(3):
        f_ref, g_ref = reference_grad(fam, x[b], X[b], y[b])
        assert f[b].item() == pytest.approx(f_ref, abs=1e-12)
        torch.testing.assert_close(g[b], g_ref, atol=1e-12, rtol=1e-10)
    assert torch.equal(fam.objective(x, data), f)


def test_full_batch_and_full_objective_are_the_loss_on_the_whole_train_part():
    full = MLPClassifier(batch_size=None, hidden=6, inputs=None)
    noisy = MLPClassifier(batch_size=32, hidden=6, inputs=None)
    data, x = noisy.sample([5, 6])
    X, y = noisy.train_tensors(x.device, x.dtype)
    f, g = full.value_and_grad(x, full.sample([5, 6])[0])
    for b in range(2):
        f_ref, g_ref = reference_grad(full, x[b], X, y)
        assert f[b].item() == pytest.approx(f_ref, abs=1e-12)
        torch.testing.assert_close(g[b], g_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(noisy.full_objective(x, data), f)
    assert full.full_objective(x, data) is None
    assert not torch.allclose(noisy.objective(x, data), f)  # a minibatch is not the data


def test_minibatches_depend_on_key_and_iteration_only():
    fam = MLPClassifier(batch_size=8)
    data, _ = fam.sample([3, 4, 5])
    alone, _ = fam.sample([4])
    idx = optenv.families.mlp_classifier.minibatch_index
    n = fam.n_train
    torch.testing.assert_close(idx(data, 8, n)[1:2], idx(alone, 8, n))
    test, _ = fam.sample([3, 4, 5], split="test")
    assert not torch.equal(idx(data, 8, n), idx(test, 8, n))
    later = {k: v.clone() for k, v in data.items()}
    fam.advance(later)
    assert not torch.equal(idx(data, 8, n), idx(later, 8, n))
    fam.rewind(later)
    assert torch.equal(idx(data, 8, n), idx(later, 8, n))
    as32 = {k: v.float() for k, v in data.items()}
    assert torch.equal(idx(data, 8, n), idx(as32, 8, n))  # the key words are exact in float32
    assert int(idx(data, 8, n).min()) >= 0 and int(idx(data, 8, n).max()) < n


def test_core_steps_move_the_minibatch_and_restarts_rewind_it():
    fam = MLPClassifier(hidden=4, batch_size=4)
    core = OptimizationCore(fam, history=2)
    data, x0 = fam.sample([0, 1])
    start = core.start(data, x0)
    step = core.step(data, start.state, start.f, torch.zeros_like(x0))
    assert data["iteration"].tolist() == [1.0, 1.0]
    at_one = {k: v.clone() for k, v in data.items()}
    torch.testing.assert_close(step.f, fam.objective(x0, at_one))  # x unchanged, batch moved
    assert not torch.allclose(step.f, start.f)
    again = core.start(data, x0)
    torch.testing.assert_close(again.f, start.f)


def test_every_method_of_a_comparison_sees_the_same_minibatches():
    class Recorder:
        def __init__(self, lr: float) -> None:
            self.lr, self.seen = lr, []

        def reset(self) -> None:
            self.seen = []

        def propose(self, x, f, g, oracle=None):
            self.seen.append(data["iteration"].clone())
            return -self.lr * g

    fam = MLPClassifier(hidden=4, batch_size=4)
    core = OptimizationCore(fam, history=1)
    data, x0 = fam.sample([0, 1])
    a, b = Recorder(0.1), Recorder(1.0)
    ra = rollout(core, data, x0, 5, a)
    rb = rollout(core, data, x0, 5, b)
    assert [s.tolist() for s in a.seen] == [s.tolist() for s in b.seen] == [
        [float(t)] * 2 for t in range(5)]
    assert ra.f_full is not None and ra.f_full.shape == (2, 6)
    assert torch.isclose(ra.f[:, 0], rb.f[:, 0]).all()  # same x0, same minibatch 0


def test_vector_env_autoreset_restarts_the_minibatch_stream_like_the_single_env():
    kw = {"hidden": 4, "batch_size": 4, "history": 2, "max_episode_steps": 3,
          "f_full": "every_step"}
    venv = gym.make_vec("optenv/MLPClassifier-v0", num_envs=2, **kw)
    env = gym.make("optenv/MLPClassifier-v0", **kw)
    venv.reset(seed=7)
    env.reset(seed=8)  # env 1 of the vector env
    zeros_v, zeros = np.zeros((2, venv.single_action_space.shape[0])), np.zeros(
        env.action_space.shape)
    fs_v, fs, fulls = [], [], []
    for _ in range(5):  # 3 steps, the autoreset step, one step of episode 2
        _, _, _, _, info_v = venv.step(zeros_v)
        fs_v.append(float(info_v["f"][1]))
        fulls.append(float(info_v["f_full"][1]))
    for _ in range(3):
        _, _, _, trunc, info = env.step(zeros)
        fs.append(info["f"])
    assert "f_full" in info and trunc
    _, info = env.reset()
    fs.append(info["f"])
    _, _, _, _, info = env.step(zeros)
    fs.append(info["f"])
    np.testing.assert_allclose(fs_v, fs, rtol=1e-12)
    assert len(set(fulls[:3])) == 1  # zero steps: the full loss does not move


def test_hessian_and_hessian_vector_product_agree_with_torch_func():
    fam = MLPClassifier(hidden=3, inputs=4, batch_size=8, activation="tanh", l2=0.1)
    data, x = fam.sample([0, 1])
    H = fam.hessian(x, data)

    torch.testing.assert_close(H[0], torch.func.hessian(
        lambda xi: fam.objective(xi.unsqueeze(0), {k: v[:1] for k, v in data.items()})[0])(x[0]))
    v = torch.randn_like(x)
    torch.testing.assert_close(fam.hessian_vector_product(x, data, v),
                               torch.einsum("bij,bj->bi", H, v))
    assert H.shape == (2, fam.d, fam.d)
    big = MLPClassifier(hidden=200, inputs=100)
    with pytest.raises(ValueError, match="hessian_vector_product"):
        big.hessian(*reversed(big.sample([0])))


def test_value_and_grad_is_differentiable_for_bptt():
    fam = MLPClassifier(hidden=5, inputs=6, batch_size=8, activation="sigmoid")
    data, x = fam.sample([0])
    x = x.clone().requires_grad_(True)
    f, g = fam.value_and_grad(x, data)
    (auto,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    torch.testing.assert_close(auto, g)
    (second,) = torch.autograd.grad((g * g).sum(), x)  # through the closed-form gradient
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def test_float32_matches_float64_and_groups_partition_x():
    fam = MLPClassifier(hidden=(6, 5))
    d64, x64 = fam.sample([0, 1])
    d32, x32 = fam.sample([0, 1], dtype=torch.float32)
    f64, g64 = fam.value_and_grad(x64, d64)
    f32, g32 = fam.value_and_grad(x32, d32)
    torch.testing.assert_close(f32.double(), f64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-5)
    groups = fam.coordinate_groups()
    assert [g.name for g in groups] == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert sum(g.size for g in groups) == fam.d == 48 * 6 + 6 + 6 * 5 + 5 + 5 * 10 + 10
    bound = torch.cat([torch.full((o * i + o,), i ** -0.5) for o, i in fam.layer_shapes])
    assert (x64.abs() <= bound.double()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_numbers():
    fam = MLPClassifier()
    data, x = fam.sample([0, 1])
    f, g = fam.value_and_grad(x, data)
    dc, xc = fam.sample([0, 1], device="cuda")
    fc, gc = fam.value_and_grad(xc, dc)
    torch.testing.assert_close(fc.cpu(), f)
    torch.testing.assert_close(gc.cpu(), g)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"dataset": "imagenet"}, "dataset"),
    ({"hidden": 0}, "hidden"),
    ({"hidden": (48, 0)}, "hidden"),
    ({"hidden": "wide"}, "hidden"),
    ({"batch_size": 1443}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"activation": "gelu"}, "activation"),
    ({"inputs": 0}, "inputs"),
    ({"l2": -1.0}, "l2"),
    ({"dataset": "mnist", "data_dir": "/nonexistent"}, "data_dir"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: got"if name != "data_dir" else "^data_dir"):
        MLPClassifier(**kwargs)


def test_registered_variants_and_check_env():
    from gymnasium.utils.env_checker import check_env

    assert optenv.MLP_IDS[0] == "optenv/MLPClassifier-v0"
    specs = {i: gym.spec(i) for i in optenv.MLP_IDS}
    assert specs["optenv/MLPClassifier-v0"].max_episode_steps == 400
    assert specs["optenv/MLPClassifierLong-v0"].max_episode_steps == 800
    assert optenv.family_of("optenv/MLPClassifier-v0").d == 48 * 48 + 48 + 48 * 10 + 10
    assert optenv.family_of("optenv/MLPClassifierLarge-v0").d == 100 * 200 + 200 + 2000 + 10
    assert optenv.family_of("optenv/MLPClassifierNoisy-v0").batch_size == 10
    env = gym.make("optenv/MLPClassifier-v0", history=2, observation="coordinatewise",
                   features="li-malik-2017-psi")
    with warnings.catch_warnings():  # only the infinite observation bounds may warn
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*Box observation space m.*infinity")
        check_env(env.unwrapped, skip_render_check=True)
