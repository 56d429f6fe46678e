"""The policy's precision-weighted training (gps.policy_fit.train_policy), eager and graphed."""

from __future__ import annotations

import pytest
import torch

from gps.agent import GPSAgent, GPSConfig
from gps.policy_fit import GRAPH_CHUNK, train_policy
from optenv.families import make_family
from optenv.policy import GaussianMLPPolicy


def _regression(device: str, seed: int = 0) -> tuple[GaussianMLPPolicy, torch.optim.Adam,
                                                     tuple[torch.Tensor, ...]]:
    """A policy, its Adam, and a linear target with random SPD precisions and weights."""
    g = torch.Generator().manual_seed(seed)
    R, obs_dim, dU = 200, 6, 2
    obs = torch.randn(R, obs_dim, generator=g, dtype=torch.float64)
    target = obs[:, :dU] - 0.5 * obs[:, dU:2 * dU]
    a = torch.randn(R, dU, dU, generator=g, dtype=torch.float64)
    prec = a @ a.mT + torch.eye(dU, dtype=torch.float64)
    weight = torch.rand(R, generator=g, dtype=torch.float64)
    weight[:10] = 0.0  # ignored rows
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(obs_dim, dU, (16,)).to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2, capturable=device == "cuda")
    return policy, opt, (obs, target, prec, weight)


def test_train_policy_lowers_the_weighted_loss_and_is_reproducible() -> None:
    results = []
    for _ in range(2):
        policy, opt, data = _regression("cpu")
        first = train_policy(policy, opt, *data, steps=10, batch_size=32,
                             generator=torch.Generator().manual_seed(1))
        last = train_policy(policy, opt, *data, steps=300, batch_size=32,
                            generator=torch.Generator().manual_seed(2))
        results.append((first, last, policy.mean_net[0].weight.detach().clone()))
    assert results[0][1] < 0.2 * results[0][0]
    assert results[0][:2] == results[1][:2]
    assert torch.equal(results[0][2], results[1][2])


def test_train_policy_sets_the_variance_to_the_inverse_mean_precision() -> None:
    policy, opt, (obs, target, prec, weight) = _regression("cpu")
    train_policy(policy, opt, obs, target, prec, weight, steps=2, batch_size=8,
                 generator=torch.Generator().manual_seed(0))
    want = 1.0 / torch.diagonal(prec[weight > 0].mean(0))
    torch.testing.assert_close(policy.variance.double(), want, rtol=1e-5, atol=0)


def test_train_policy_refuses_a_cuda_graph_off_cuda() -> None:
    policy, opt, data = _regression("cpu")
    before = [p.detach().clone() for p in policy.parameters()]
    with pytest.raises(ValueError, match="cuda_graph"):
        train_policy(policy, opt, *data, steps=5, batch_size=8,
                     generator=torch.Generator().manual_seed(0), cuda_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def _train_on_cuda(steps: int, graphed: bool, capturable: bool = True
                   ) -> tuple[float, list[torch.Tensor]]:
    """The regression trained on CUDA, graphed or eagerly: its loss and parameters."""
    policy, _opt, data = _regression("cuda")
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2, capturable=capturable)
    loss = train_policy(policy, opt, *data, steps=steps, batch_size=32,
                        generator=torch.Generator().manual_seed(3), cuda_graph=graphed)
    return loss, [p.detach().clone() for p in policy.parameters()]


def _assert_same_training(a: tuple[float, list[torch.Tensor]],
                          b: tuple[float, list[torch.Tensor]]) -> None:
    assert b[0] == pytest.approx(a[0], rel=1e-5)
    for pa, pb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphed_policy_training_equals_eager_training() -> None:
    steps = 3 + 2 * GRAPH_CHUNK + 7  # warm-up, two replays, an eager remainder
    _assert_same_training(_train_on_cuda(steps, False), _train_on_cuda(steps, True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_failed_capture_warns_and_trains_eagerly_to_the_same_policy() -> None:
    steps = 3 + GRAPH_CHUNK + 2
    eager = _train_on_cuda(steps, False, capturable=False)
    with pytest.warns(RuntimeWarning, match="training eagerly"):  # not capturable: it fails
        graphed = _train_on_cuda(steps, True, capturable=False)
    _assert_same_training(eager, graphed)


def test_graphed_steps_run_warm_up_then_whole_chunks_in_order(monkeypatch) -> None:
    # the bookkeeping of the graphed path, on the CPU: the "graph" reruns the captured chunk
    import gps.policy_fit as fit

    class Replays:
        def __init__(self, work):
            self.replay = work

    monkeypatch.setattr(fit, "warm_up", lambda work, device=None: work())
    monkeypatch.setattr(fit, "capture", lambda work, *a, **k: Replays(work))
    steps = 3 + 2 * GRAPH_CHUNK + 7
    rows = torch.arange(steps * 2).reshape(steps, 2)
    seen: list[int] = []

    def step(r: torch.Tensor) -> torch.Tensor:
        seen.append(int(r[0]))
        return r.sum().double()

    losses = torch.zeros(steps, dtype=torch.float64)
    done = fit._graphed_steps(step, rows, losses)
    assert done == 3 + 2 * GRAPH_CHUNK
    assert seen == rows[:done, 0].tolist()
    torch.testing.assert_close(losses[:done], rows[:done].sum(1).double())
    assert bool((losses[done:] == 0).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_checkpoint_resumes_on_cuda_with_a_capturable_adam() -> None:
    cfg = GPSConfig(conditions=2, samples=3, horizon=4, iterations=1, lqr_history=2,
                    inner_iterations=1, policy_steps=40, policy_batch=8, gmm_iters=5,
                    lqr_max_iter=10, momentum_lr_grid=(0.1, 1.0), momentum_grid=(0.5, 0.9))
    fam = make_family("LogisticRegression")
    cpu = GPSAgent(fam, cfg, history=25)
    cpu.initialise()
    cpu.iteration()
    cuda = GPSAgent(fam, cfg, history=25, device="cuda")
    cuda.load_state_dict(cpu.state_dict())
    assert all(g["capturable"] for g in cuda.optimizer.param_groups)
    assert all(st["step"].device.type == "cuda" for st in cuda.optimizer.state.values())
    cuda.iteration()
    assert torch.isfinite(cuda.policy.mean_net[0].weight).all()


def test_the_loss_weighs_each_rows_error_by_its_precision() -> None:
    """Two rows with the same observation, targets (1, 0) and (0, 1), precisions diag(10, 0.01)
    and diag(0.01, 10): the precision-weighted optimum of a constant output is ≈ (1, 1) per
    coordinate ((10·1 + 0.01·0) / 10.01); an unweighted fit would give (0.5, 0.5)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (8,))
    opt = torch.optim.Adam(policy.parameters(), lr=2e-2)
    obs = torch.zeros(2, 3, dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    prec = torch.stack([torch.diag(torch.tensor(p, dtype=torch.float64))
                        for p in ([10.0, 0.01], [0.01, 10.0])])
    train_policy(policy, opt, obs, target, prec, torch.ones(2, dtype=torch.float64), steps=400,
                 batch_size=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = policy(obs[:1].float())[0].double()
    torch.testing.assert_close(out, torch.tensor([0.999, 0.999], dtype=torch.float64),
                               rtol=0, atol=0.02)
