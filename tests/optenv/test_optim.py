"""LearnedOptimizer as a torch optimiser: shapes, dtypes, groups and kinds, state_dict, errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

import optenv
import optenv.policy_inference
from optenv.learned import LearnedPolicy, load_run
from optenv.policy import CoordinatewisePolicy, save_coordinatewise_policy, save_policy

PSI = "li-malik-2017-psi"


def _policy(cell: str = "mlp", features: str = PSI, width: int = 3) -> CoordinatewisePolicy:
    torch.manual_seed(0)
    return CoordinatewisePolicy(width, features=features, hidden=(8,), cell=cell)


def _model(dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3),
                         nn.ReLU(), nn.Linear(3, 1)).to(dtype=dtype, device=device)


def _closure(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    p0 = next(model.parameters())
    x = torch.randn(16, 1, 4, 4, generator=g).to(p0)
    y = torch.randn(16, 1, generator=g).to(p0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss
    return closure


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_steps_every_parameter_of_any_shape_and_dtype(dtype: torch.dtype, cell: str) -> None:
    model = _model(dtype)
    opt = optenv.LearnedOptimizer(model.parameters(), _policy(cell), scale=0.1)
    closure = _closure(model, opt)
    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.dtype == dtype
    for b, p in zip(before, model.parameters(), strict=True):
        assert p.dtype == dtype and not torch.equal(b, p)  # 4-D, 1-D and 2-D tensors all move
        assert opt.state[p]["grads"].dtype == dtype


def test_zero_grad_and_a_parameter_without_gradient_is_skipped() -> None:
    model = _model()
    frozen = nn.Parameter(torch.ones(3))
    opt = optenv.LearnedOptimizer([*model.parameters(), frozen], _policy())
    opt.step(_closure(model, opt))
    assert torch.equal(frozen, torch.ones(3)) and frozen not in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_a_restored_optimiser_takes_the_uninterrupted_ones_steps(cell: str) -> None:
    model = _model(torch.float64)
    opt = optenv.LearnedOptimizer(model.parameters(), _policy(cell), scale=0.1)
    closure = _closure(model, opt)
    for _ in range(3):
        opt.step(closure)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    for _ in range(4):
        opt.step(closure)
    uninterrupted = _params(model)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = _model(torch.float64)
    model2.load_state_dict(saved["model"])
    opt2 = optenv.LearnedOptimizer(model2.parameters(), _policy(cell), scale=0.1)
    opt2.load_state_dict(saved["opt"])
    closure2 = _closure(model2, opt2)
    for _ in range(4):
        opt2.step(closure2)
    assert torch.equal(_params(model2), uninterrupted)


def test_parameter_groups_set_the_kind_and_the_scale() -> None:
    """The same tensors as weights or as biases take different steps; scale multiplies them."""
    def first_step(groups_of) -> torch.Tensor:
        model = _model(torch.float64)
        opt = optenv.LearnedOptimizer(groups_of(model), _policy())
        before = _params(model)
        opt.step(_closure(model, opt))
        return _params(model) - before

    inferred = first_step(lambda m: m.parameters())
    weights = [p for p in _model().parameters() if p.dim() >= 2]
    n_weight = sum(p.numel() for p in weights)
    as_biases = first_step(lambda m: [{"params": list(m.parameters()), "kind": "bias"}])
    assert not torch.allclose(inferred, as_biases)
    n_first = next(_model().parameters()).numel()
    assert torch.equal(inferred[n_first:], first_step(lambda m: [
        {"params": [next(m.parameters())], "kind": "bias"},
        {"params": list(m.parameters())[1:]}])[n_first:])  # the other group is unchanged
    scaled = first_step(lambda m: [{"params": list(m.parameters()), "scale": 0.5}])
    torch.testing.assert_close(scaled, 0.5 * inferred, rtol=0, atol=1e-15)
    assert n_weight > 0


def test_a_policy_trained_only_on_other_sees_every_tensor_as_other() -> None:
    learned = LearnedPolicy(_policy(), trained_kinds=("other",))
    assert learned.default_kind(2) == "other" and learned.default_kind(1) == "other"
    assert LearnedPolicy(_policy()).default_kind(4) == "weight"
    assert LearnedPolicy(_policy()).default_kind(0) == "bias"


def test_missing_closure_is_a_clear_error_and_changes_nothing() -> None:
    model = _model()
    opt = optenv.LearnedOptimizer(model.parameters(), _policy())
    _closure(model, opt)()
    before = _params(model)
    with pytest.raises(TypeError, match=r"closure: got NoneType, allowed: a callable .*LBFGS"):
        opt.step()
    with pytest.raises(TypeError, match="closure: returned Tensor of shape"):
        opt.step(lambda: torch.ones(2))
    assert torch.equal(_params(model), before) and not opt.state


def test_unknown_pretrained_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="policy: got 'no-such-optimiser', which is neither a "
                                         "pretrained optimiser"):
        optenv.LearnedOptimizer(_model().parameters(), "no-such-optimiser")
    with pytest.raises(ValueError, match="name: got 'no-such-optimiser', allowed: one of"):
        optenv.pretrained.load("no-such-optimiser")
    with pytest.raises(TypeError, match="policy: got int, allowed"):
        optenv.LearnedOptimizer(_model().parameters(), 3)


@pytest.mark.parametrize("policy,message", [
    (lambda: _policy(features="no-such-features"), "reads feature set 'no-such-features'"),
    (lambda: _policy(width=5), "has rows of width 5, which feature set 'li-malik-2017-psi' "
                               "never gives"),
    (lambda: _policy(features="li-malik-2016", width=6), "width 6, which feature set "
                                                          "'li-malik-2016' never gives"),
])
def test_a_policy_of_another_feature_set_is_a_clear_error(policy, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        optenv.LearnedOptimizer(_model().parameters(), policy())


def test_a_kind_the_policy_lacks_and_bad_parameters_are_clear_errors() -> None:
    weights_only = CoordinatewisePolicy(3, features=PSI, kinds=("weight",))
    with pytest.raises(ValueError, match="kind: a parameter of shape \\(2,\\) is a 'bias'"):
        optenv.LearnedOptimizer(_model().parameters(), weights_only)
    with pytest.raises(ValueError, match="kind: got 'gamma', allowed: None"):
        optenv.LearnedOptimizer([{"params": _model().parameters(), "kind": "gamma"}], _policy())
    with pytest.raises(ValueError, match=r"params: parameter 0 of group 0 has dtype "
                                         r"torch\.complex64"):
        optenv.LearnedOptimizer([nn.Parameter(torch.ones(2, dtype=torch.complex64))], _policy())
    with pytest.raises(ValueError, match="scale: got"):
        optenv.LearnedOptimizer(_model().parameters(), _policy(), scale=0.0)
    opt = optenv.LearnedOptimizer(_model().parameters(), _policy())
    with pytest.raises(ValueError, match="params: parameter 0 of group 1"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2, dtype=torch.complex64))]})
    assert len(opt.param_groups) == 1  # a refused group is not kept


def test_sparse_gradients_are_a_clear_error_before_any_state_changes() -> None:
    emb, lin = nn.Embedding(5, 2, sparse=True), nn.Linear(2, 1)
    opt = optenv.LearnedOptimizer([*lin.parameters(), *emb.parameters()], _policy())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = lin(emb(torch.tensor([0, 3]))).sum()
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step(closure)
    assert not opt.state


def _write_gps_run(folder: Path, policy: CoordinatewisePolicy) -> None:
    """A run folder as ``optenv train gps --policy coordinatewise`` leaves it (its policy.pt and
    the metadata keys gps.train and gps.coordinatewise write)."""
    folder.mkdir()
    save_coordinatewise_policy(str(folder / "policy.pt"), policy, {
        "env": "optenv/Quadratic-v0", "history": 25, "max_step": 0.25, "features": PSI,
        "groups": [["x", 10, "other"]]})


def test_a_gps_run_folder_is_a_policy_with_its_metadata(tmp_path: Path) -> None:
    _write_gps_run(tmp_path / "gps", _policy())
    learned = load_run(tmp_path / "gps")
    assert (learned.max_step, learned.history, learned.trained_kinds) == (0.25, 25, ("other",))
    model = _model()
    opt = optenv.LearnedOptimizer(model.parameters(), str(tmp_path / "gps"))
    assert opt.learned.max_step == 0.25
    before = _params(model)
    opt.step(_closure(model, opt))
    assert float((_params(model) - before).abs().max()) <= 0.25 + 1e-7


def test_a_bptt_run_folder_and_a_flat_policy(tmp_path: Path) -> None:
    (tmp_path / "bptt").mkdir()
    save_coordinatewise_policy(str(tmp_path / "bptt" / "optimizer.pt"), _policy("lstm"), {
        "env_id": "optenv/LogisticRegression-v0", "history": 25, "max_step": 1.0,
        "arch": "coordinatewise-lstm", "features": PSI,
        "train_groups": [["w", "weight", 3], ["b", "bias", 1]]})
    learned = load_run(tmp_path / "bptt")
    assert learned.trained_kinds == ("weight", "bias") and learned.policy.recurrent
    (tmp_path / "flat").mkdir()
    save_policy(str(tmp_path / "flat" / "policy.pt"), optenv.policy.GaussianMLPPolicy(10, 3))
    with pytest.raises(ValueError, match="holds a flat policy"):
        optenv.LearnedOptimizer(_model().parameters(), tmp_path / "flat")
    with pytest.raises(ValueError, match="neither a file nor a run folder"):
        load_run(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_cuda_steps_equal_the_cpu_steps(cell: str) -> None:
    results = []
    for device in ("cpu", "cuda"):
        model = _model(torch.float64, device)
        opt = optenv.LearnedOptimizer(model.parameters(), _policy(cell), scale=0.1)
        closure = _closure(model, opt)
        for _ in range(5):
            opt.step(closure)
        assert opt.state[next(model.parameters())]["grads"].device.type == device
        results.append(_params(model).cpu())
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_the_policy_in_cpu_blocks_takes_the_steps_of_one_call(
        cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    results = []
    for block in (10**9, 7):  # one call; blocks of 7 rows (the model has 43 coordinates)
        monkeypatch.setattr(optenv.policy_inference, "CPU_BLOCK", block)
        model = _model(torch.float64)
        opt = optenv.LearnedOptimizer(model.parameters(), _policy(cell), scale=0.1)
        closure = _closure(model, opt)
        for _ in range(3):
            opt.step(closure)
        results.append(_params(model))
    # rows are independent; only the GEMM's blocking can change the last bits
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cell", ["mlp", "lstm"])
def test_a_parameter_that_misses_steps_keeps_its_own_history(cell: str) -> None:
    """Packed histories (optenv.optim_history): a tensor without a gradient at some steps falls
    out of step with the others; its steps must stay those of an optimiser of its own."""
    def run(split: bool) -> list[torch.Tensor]:
        model = _model(torch.float64)
        params = list(model.parameters())
        late = params[-1]
        groups = [params[:-1], [late]] if split else [params]
        opts = [optenv.LearnedOptimizer(g, _policy(cell), scale=0.1) for g in groups]
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(16, 1, 4, 4, generator=g).double(), torch.randn(16, 1, generator=g)
        for i in range(6):
            def closure(i: int = i) -> torch.Tensor:
                model.zero_grad()
                loss = (model(x) - y.double()).square().mean()
                loss.backward()
                if i in (1, 2):
                    late.grad = None  # frozen for two steps
                return loss
            loss = opts[0].step(closure)
            if split and late.grad is not None:  # the same loss and gradient, its own history
                opts[1].step(lambda loss=loss: loss)
        return [p.detach().clone() for p in model.parameters()]
    torch.testing.assert_close(run(False), run(True), rtol=1e-9, atol=1e-12)
