"""SGD and Adam on the neural-net objective take torch.optim's steps on the same nn.Module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.optimizers import make_optimizer
from optenv.core import OptimizationCore
from optenv.families import MLPClassifier
from optenv.rollout import rollout


def torch_optim_trajectory(fam: MLPClassifier, data: dict, x0: torch.Tensor, steps: int,
                           make_opt) -> list[torch.Tensor]:
    """x after each of ``steps`` torch.optim steps on nn.Sequential nets with x0's weights, each
    step on the minibatch the family serves at that iteration."""
    nets = []
    for b in range(x0.shape[0]):
        layers: list[nn.Module] = []
        for W, bias in fam.unpack(x0[b:b + 1]):
            lin = nn.Linear(W.shape[2], W.shape[1]).double()
            with torch.no_grad():
                lin.weight.copy_(W[0])
                lin.bias.copy_(bias[0])
            layers += [lin, nn.ReLU()]
        nets.append(nn.Sequential(*layers[:-1]))
    opts = [make_opt(net.parameters()) for net in nets]
    data = {k: v.clone() for k, v in data.items()}
    out = []
    for t in range(steps):
        data["iteration"].fill_(float(t))
        X, y = fam.minibatch(data, x0)
        for b, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[b]), y[b]).backward()
            opt.step()
        out.append(torch.stack([torch.cat([p.detach().flatten() for p in net.parameters()])
                                for net in nets]))
    return out


@pytest.mark.parametrize(("name", "hyper", "make_opt"), [
    ("gd", {"lr": 0.3}, lambda p: torch.optim.SGD(p, lr=0.3)),
    ("adam", {"lr": 0.01, "beta1": 0.8}, lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8,
                                                                                     0.999))),
])
def test_sgd_and_adam_match_torch_optim_on_the_same_minibatches(name, hyper, make_opt):
    fam = MLPClassifier(hidden=6, inputs=10, batch_size=16)
    data, x0 = fam.sample([0, 1])
    steps = 6
    ref = torch_optim_trajectory(fam, data, x0, steps, make_opt)
    xs = []

    class Recording:
        def __init__(self) -> None:
            self.inner = make_optimizer(name, **hyper)

        def reset(self) -> None:
            self.inner.reset()

        def propose(self, x, f, g, oracle=None):
            xs.append(x.clone())
            return self.inner.propose(x, f, g, oracle)

    res = rollout(OptimizationCore(fam, 1), data, x0, steps, Recording())
    ours = [*xs[1:], res.x]  # x after steps 1..steps
    for t in range(steps):
        torch.testing.assert_close(ours[t], ref[t], rtol=0, atol=1e-12)
