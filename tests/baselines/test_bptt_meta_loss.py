"""The BPTT meta-loss is Σ_t mean_b f(x_t) over the unroll (Andrychowicz et al. 2016), checked
on cases computed by hand: a learned optimiser that always takes one fixed step s on
f(x) = ½‖x‖², so x_t = x₀ + t·s and f(x_t) = ½‖x₀ + t·s‖², and its meta-gradient
∂/∂s = mean_b Σ_t t·(x₀ + t·s). A loss that kept only the last step's f (or averaged instead of
summing) would pass a test that only checks that meta-training lowers the loss.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.bptt import unroll, unrolled_meta_loss
from optenv import FunctionFamily
from optenv.core import OptimizationCore, StateLayout

X0 = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]], dtype=torch.float64)


class FixedStep(nn.Module):
    """A 'learned optimiser' whose step is one parameter s, whatever it reads."""

    def __init__(self, step: list[float]) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.tensor(step, dtype=torch.float64))

    def inputs(self, layout: StateLayout, state: torch.Tensor, t: int = 0) -> torch.Tensor:
        return state[:, layout.state_slices["CUR_GRAD"]]

    def initial_state(self, batch: int, d: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> list:
        return []

    def forward(self, g: torch.Tensor, hidden: list) -> tuple[torch.Tensor, list]:
        return self.step.expand_as(g), hidden


def _core() -> OptimizationCore:
    fam = FunctionFamily(lambda x, data: 0.5 * (x * x).sum(-1), d=2, name="Bowl")
    return OptimizationCore(fam, history=3)


def _by_hand(step: list[float], steps: int) -> float:
    s = torch.tensor(step, dtype=torch.float64)
    return sum(float((0.5 * ((X0 + t * s) ** 2).sum(-1)).mean()) for t in range(1, steps + 1))


@pytest.mark.parametrize("step,steps", [([0.0, 0.0], 0), ([0.0, 0.0], 5), ([0.3, -0.1], 1),
                                        ([0.3, -0.1], 6)])
def test_meta_loss_is_the_sum_over_the_unroll_of_the_mean_objective(step, steps):
    res = unrolled_meta_loss(FixedStep(step), _core(), {}, X0, steps)
    assert float(res.loss.detach()) == pytest.approx(_by_hand(step, steps), rel=1e-12, abs=0.0)
    assert len(res.grads) == steps


def test_zero_steps_cost_the_horizon_times_the_mean_starting_objective():
    res = unrolled_meta_loss(FixedStep([0.0, 0.0]), _core(), {}, X0, 7)
    assert float(res.loss.detach()) == pytest.approx(7 * float((0.5 * (X0 ** 2).sum(-1)).mean()),
                                            rel=1e-12)


def test_meta_gradient_of_the_step_is_the_sum_of_t_times_the_mean_iterate():
    net = FixedStep([0.3, -0.1])
    steps = 4
    unrolled_meta_loss(net, _core(), {}, X0, steps).loss.backward()
    s = net.step.detach()
    want = sum(t * (X0 + t * s).mean(0) for t in range(1, steps + 1))
    torch.testing.assert_close(net.step.grad, want, rtol=1e-12, atol=1e-14)


def test_truncated_segments_add_up_to_the_whole_unroll():
    """meta_train sums the losses of truncated segments: two segments of 3 and 2 steps, each
    from where the last ended, give the loss of one unroll of 5."""
    core, net = _core(), FixedStep([0.3, -0.1])
    start = core.start({}, X0)
    first = unroll(net, core, {}, start.state, start.f, [], 3)
    second = unroll(net, core, {}, first.state, first.f, [], 2, t0=3)
    total = float((first.loss + second.loss).detach())
    assert total == pytest.approx(_by_hand([0.3, -0.1], 5), rel=1e-12)


class NaNGradientStep(FixedStep):
    """Takes the fixed step, plus sqrt(p − p) = 0: a finite loss whose gradient is NaN."""

    def forward(self, g: torch.Tensor, hidden: list) -> tuple[torch.Tensor, list]:
        zero = torch.sqrt(self.step - self.step.detach())
        return self.step.expand_as(g) + zero, hidden


def test_an_unroll_with_a_finite_loss_and_a_non_finite_meta_gradient_is_skipped():
    from baselines.bptt import MetaTrainConfig, meta_train

    net = NaNGradientStep([0.3, -0.1])
    before = net.step.detach().clone()
    fam = FunctionFamily(lambda x, data: 0.5 * (x * x).sum(-1), d=2, name="Bowl")
    log = meta_train(net, fam, MetaTrainConfig(iterations=1, batch_size=2, horizon=2, unroll=2,
                                               history=3, dtype="float64"))
    assert log.skipped_unrolls == 1
    torch.testing.assert_close(net.step.detach(), before, rtol=0, atol=0)
