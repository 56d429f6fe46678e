"""LearnedOptimizer takes the steps the policy takes in the env, on the same weights and data.

Each case is a family of the registered envs and a torch model whose parameters, in order, are
the family's x split into its coordinate groups. The env and the optimiser start from the same
x(0) and data; at each iteration the policy acts in the env (through its env wrapper, on the
env's rows) and the optimiser steps the model; the parameter changes must equal the env's steps
``max_step · clip(action, −1, 1)``.

Two ways of computing the gradient:

* the family's own ``value_and_grad`` in the closure: every number the optimiser sees is the
  env's, so its rows and steps must be IDENTICAL (bit for bit) — this pins down that the
  optimiser's state is the env's transition, not a re-derivation;
* an ``nn.Module`` and autograd, the way a user trains: equal up to the rounding of the two
  gradient computations.

Each family is one :class:`Case`; the 2017 MLP classifier's (optenv/MLPClassifier-v0: groups W1,
b1, W2, b2, minibatches of 64) reads the minibatch of each iteration, as the env serves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import optenv
from optenv.policy import CoordinatewisePolicy

HORIZON = 12


class NeuralNetModule(nn.Module):
    """The NeuralNet family's net as a torch model: Linear(W, b), ReLU, Linear(U, c), its loss
    the family's (cross-entropy plus (λ/2)(‖W‖² + ‖U‖²))."""

    def __init__(self, x: torch.Tensor, family: optenv.NeuralNet) -> None:
        super().__init__()
        h, i = family.hidden, family.inputs
        self.first, self.second = nn.Linear(i, h).double(), nn.Linear(h, 2).double()
        W, b, U, c = family.unpack(x.reshape(1, -1).double())
        with torch.no_grad():
            for p, v in zip(self.parameters(), (W[0], b[0], U[0], c[0]), strict=True):
                p.copy_(v)
        self.lam = family.lam

    def loss(self, data: dict[str, np.ndarray]) -> torch.Tensor:
        X, y = torch.as_tensor(data["X"]), torch.as_tensor(data["y"]).long()
        logits = self.second(torch.relu(self.first(X)))
        reg = 0.5 * self.lam * (self.first.weight.square().sum()
                                + self.second.weight.square().sum())
        return nn.functional.cross_entropy(logits, y) + reg


class MLPClassifierModule(nn.Module):
    """The MLPClassifier family's net as nn.Linear layers with ReLU between them (its
    parameters, in order, are the family's coordinate groups W1, b1, W2, b2, ...), trained on
    the minibatch the family serves at each iteration, with torch's cross-entropy."""

    def __init__(self, x: torch.Tensor, family: optenv.MLPClassifier) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for W, b in family.unpack(x.reshape(1, -1).double()):
            linear = nn.Linear(W.shape[2], W.shape[1]).double()
            with torch.no_grad():
                linear.weight.copy_(W[0])
                linear.bias.copy_(b[0])
            layers += [linear, nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])
        self.family = family
        self.iteration = 0  # one loss per step: the k-th call reads iteration k's minibatch

    def loss(self, data: dict[str, np.ndarray]) -> torch.Tensor:
        batch = _batched(data)
        batch["iteration"].fill_(float(self.iteration))
        self.iteration += 1
        X, y = self.family.minibatch(batch, torch.zeros(1, dtype=torch.float64))
        return nn.functional.cross_entropy(self.net(X[0]), y[0])


class LogisticModule(nn.Module):
    """Logistic regression (w, b) as a torch model, for the family's loss."""

    def __init__(self, x: torch.Tensor, family: optenv.LogisticRegression) -> None:
        super().__init__()
        self.linear = nn.Linear(family.dim, 1).double()
        with torch.no_grad():
            self.linear.weight.copy_(x[: family.dim].reshape(1, -1))
            self.linear.bias.copy_(x[family.dim:])
        self.family = family

    def loss(self, data: dict[str, np.ndarray]) -> torch.Tensor:
        x = torch.cat([self.linear.weight.reshape(-1), self.linear.bias]).unsqueeze(0)
        return self.family.objective(x, {k: torch.as_tensor(v).unsqueeze(0)
                                         for k, v in data.items()})[0]


@dataclass(frozen=True)
class Case:
    env_id: str
    module: Callable[[torch.Tensor, object], nn.Module]


CASES = [Case("optenv/NeuralNet-v0", NeuralNetModule),
         Case("optenv/LogisticRegression-v0", LogisticModule),
         Case("optenv/MLPClassifier-v0", MLPClassifierModule)]
#: (features, cell): the three feature sets, and the LSTM (state carried between steps).
POLICIES = [("li-malik-2016", "mlp"), ("li-malik-2017-psi", "mlp"), ("li-malik-2017-psi", "lstm"),
            ("li-malik-2017", "mlp")]


def _policy(features: str, cell: str) -> CoordinatewisePolicy:
    width = optenv.FEATURE_SETS[features].width(4 if features == "li-malik-2016" else 132)
    torch.manual_seed(3)
    return CoordinatewisePolicy(width, features=features, hidden=(8,), cell=cell)


def _batched(problem: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The env's instance (numpy, no batch dimension) as the family's data, batch of one (a
    copy: the env advances its own minibatch iteration)."""
    return {k: torch.tensor(v).unsqueeze(0) for k, v in problem.items()}


def _family_closure(model: nn.Module, family: object, data: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
    """A closure that sets the gradients from the family's own value_and_grad (on the minibatch
    of the step's iteration, for a minibatch family: the k-th call reads iteration k's)."""
    params = list(model.parameters())
    calls = [0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        if "iteration" in data:
            data["iteration"].fill_(float(calls[0]))
            calls[0] += 1
        x = torch.cat([p.detach().reshape(-1) for p in params]).unsqueeze(0)
        f, g = family.value_and_grad(x, data)  # type: ignore[attr-defined]
        start = 0
        for p in params:
            p.grad = g[0, start:start + p.numel()].reshape(p.shape).clone()
            start += p.numel()
        return f[0]
    return closure


def _run_both(case: Case, features: str, cell: str, exact: bool, max_step: float = 1.0
              ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                         list[torch.Tensor]]:
    """HORIZON iterations side by side: the env's steps and the optimiser's parameter changes,
    then the env's iterates and the model's parameters after each."""
    history = 4 if features == "li-malik-2016" else None
    env = gym.make(case.env_id, observation="coordinatewise", features=features,
                   history=history, dtype="float64", max_step=max_step)
    base = env.unwrapped
    policy = _policy(features, cell)
    act = policy.as_env_policy(max_step, base.family.coordinate_groups())
    obs, info = env.reset(seed=7)
    model = case.module(torch.as_tensor(info["x"]), base.family)
    opt = optenv.LearnedOptimizer(model.parameters(),
                                  optenv.learned.LearnedPolicy(policy, max_step=max_step))
    if exact:
        closure = _family_closure(model, base.family, _batched(base.problem), opt)
    else:
        problem = base.problem

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = model.loss(problem)
            loss.backward()
            return loss
    env_steps, opt_steps, env_x, opt_x = [], [], [], []
    for _ in range(HORIZON):
        action = act(obs)
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        obs, _r, _term, _trunc, info = env.step(action)
        opt.step(closure)
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        env_steps.append(max_step * torch.as_tensor(action, dtype=torch.float64).clamp(-1, 1))
        opt_steps.append(after - before)
        env_x.append(torch.as_tensor(info["x"]))
        opt_x.append(after)
    return env_steps, opt_steps, env_x, opt_x


@pytest.mark.parametrize("features,cell", POLICIES, ids=lambda v: str(v))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.env_id.split("/")[1])
def test_iterates_are_the_envs_bit_for_bit_with_the_familys_gradients(
        case: Case, features: str, cell: str) -> None:
    env_steps, opt_steps, env_x, opt_x = _run_both(case, features, cell, exact=True,
                                                   max_step=0.5)
    for t in range(HORIZON):
        assert torch.equal(opt_x[t], env_x[t]), f"iteration {t}"
        # p + Δ − p is Δ only up to rounding
        torch.testing.assert_close(opt_steps[t], env_steps[t], rtol=1e-12, atol=1e-15)
    assert any(float(s.abs().max()) > 1e-3 for s in env_steps)  # the policy moves


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.env_id.split("/")[1])
def test_steps_match_the_env_with_autograd_on_a_torch_model(case: Case) -> None:
    env_steps, opt_steps, _env_x, _opt_x = _run_both(case, "li-malik-2017-psi", "mlp",
                                                     exact=False)
    for t, (e, o) in enumerate(zip(env_steps, opt_steps, strict=True)):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-7, msg=f"iteration {t}")
