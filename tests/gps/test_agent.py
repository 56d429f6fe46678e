"""Tests of the GPS agent (gps.agent, gps.model, gps.controller, gps.policy_fit, gps.train).

Everything small and on CPU: a few conditions, samples and steps, short policy updates.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import optenv
from gps.agent import GPSAgent, GPSConfig, SampleBatch, _load_prev
from gps.controller import LinearGaussianController, LQRStateMap, momentum_controller
from gps.model import expand_cost, fit_dynamics
from gps.train import load_for_compare, load_optimizer, make_config, train
from optenv.core import OptimizationCore, StateLayout
from optenv.families import FunctionFamily, ObjectiveFamily
from optenv.flags import config_from_flags
from optenv.registration import family_of

SMALL = {"conditions": 2, "samples": 3, "horizon": 4, "iterations": 1, "lqr_history": 2,
         "inner_iterations": 2, "policy_steps": 5, "policy_batch": 16, "gmm_iters": 5,
         "lqr_max_iter": 10, "momentum_lr_grid": (0.1, 1.0), "momentum_grid": (0.5, 0.9)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _quadratic_family(scales: tuple[float, ...] = (1.0, 0.3)) -> FunctionFamily:
    a = torch.tensor(scales, dtype=torch.float64)

    def f(x: torch.Tensor, data: dict) -> torch.Tensor:
        return 0.5 * (a.to(x) * x * x).sum(-1)

    return FunctionFamily(f, d=len(scales), name="TinyLQ")


def test_momentum_controller_is_exact() -> None:
    """The encoded controller reproduces torch-style momentum step for step."""
    fam = family_of("optenv/Quadratic-v0")
    core = OptimizationCore(fam, history=3)
    smap = LQRStateMap(core.layout, 2)
    ctrl = momentum_controller(smap, 2, 5, lr=0.1, momentum=0.9)
    data, x0 = fam.sample([0, 1], split="train")
    step = core.start(data, x0)
    state, f = step.state, step.f
    buf = torch.zeros_like(x0)
    for t in range(5):
        z = smap(state)[:, None]
        u = ctrl.act(z, t, torch.zeros(2, 1, fam.d, dtype=z.dtype))[:, 0]
        g = state[:, core.layout.state_slices["CUR_GRAD"]]
        buf = 0.9 * buf + g
        torch.testing.assert_close(u, -0.1 * buf)
        step = core.step(data, state, f, u)
        state, f = step.state, step.f


def _sampled(fam: ObjectiveFamily, history: int, **cfg: Any) -> tuple[GPSAgent, SampleBatch]:
    """An initialised agent with a one-point momentum grid, and one batch of its samples."""
    agent = GPSAgent(fam, GPSConfig(**cfg, momentum_lr_grid=(0.5,), momentum_grid=(0.5,)),
                     history=history)
    agent.initialise()
    assert agent.ctrl is not None
    return agent, agent.sample(agent.ctrl)


def test_lifted_dynamics_exact_on_quadratic() -> None:
    """On a quadratic, x' = x + u and g' = A(x + u) are linear: the lifted fit predicts the
    next LQR state (all but the nonlinear objective delta) to high accuracy."""
    agent, batch = _sampled(_quadratic_family(), 2, conditions=2, samples=12, horizon=5,
                            lqr_history=2)
    dyn, _res, _gmm = fit_dynamics(batch.Z, batch.U, agent.smap, reg=1e-9, prior=False)
    lay = agent.smap.layout
    keep = torch.ones(lay.state_dim, dtype=torch.bool)
    keep[lay.state_slices["PAST_OBJ_VAL_DELTAS"]] = False
    zu = torch.cat([batch.Z[:, :, :-1], batch.U[:, :, :-1]], -1)
    pred = torch.einsum("mtij,mntj->mnti", dyn.Fm[:, :-1], zu) + dyn.fv[:, None, :-1]
    err = (pred - batch.Z[:, :, 1:])[..., keep].abs().max()
    assert float(err) < 1e-6


def test_cost_expansion_is_exact_for_quadratic() -> None:
    fam = _quadratic_family()
    agent, b = _sampled(fam, 1, conditions=2, samples=4, horizon=3, lqr_history=1)
    cost = expand_cost(fam, agent.data, b.Z, b.U, agent.smap)
    zu = torch.cat([b.Z, b.U], -1)
    quad = 0.5 * torch.einsum("mnti,mtij,mntj->mnt", zu, cost.Cm, zu)
    model = quad + torch.einsum("mti,mnti->mnt", cost.cv, zu) + cost.c0[:, None]
    torch.testing.assert_close(model, b.F)


def test_psd_cost_expansion_clips_negative_curvature_and_keeps_convex_costs() -> None:
    from optenv.families import make_family

    sizes = {"conditions": 3, "samples": 4, "horizon": 4, "lqr_history": 1}
    # convex: the clip changes nothing
    agent, b = _sampled(_quadratic_family(), 1, **sizes)
    exact = expand_cost(agent.family, agent.data, b.Z, b.U, agent.smap, hessian="exact")
    psd = expand_cost(agent.family, agent.data, b.Z, b.U, agent.smap, hessian="psd")
    torch.testing.assert_close(psd.Cm, exact.Cm)
    # non-convex: Geman-McClure far from the data has negative curvature; the clipped cost is PSD
    fam = make_family("RobustRegression")
    agent, b = _sampled(fam, 1, **sizes)
    b.Z[..., agent.smap.layout.state_slices["CUR_LOC"]] += 5.0
    exact = expand_cost(fam, agent.data, b.Z, b.U, agent.smap, hessian="exact")
    psd = expand_cost(fam, agent.data, b.Z, b.U, agent.smap, hessian="psd")
    assert float(torch.linalg.eigvalsh(exact.Cm).min()) < -1e-6
    assert float(torch.linalg.eigvalsh(psd.Cm).min()) > -1e-10
    with pytest.raises(ValueError, match="hessian"):
        expand_cost(fam, agent.data, b.Z, b.U, agent.smap, hessian="gauss-newton")
    with pytest.raises(ValueError, match="cost_hessian"):
        GPSConfig(cost_hessian="none")


def test_config_round_trips_through_a_run_folders_json(tmp_path: Path) -> None:
    train("optenv/LogisticRegression-v0", tmp_path / "run", _tiny_config(1), quiet=True)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert GPSConfig.from_dict(saved) == _tiny_config(1)


def test_trajectory_optimisation_converges_to_known_optimum() -> None:
    """Tiny linear-quadratic problem: cost_t = f(x_t + u_t) = 1/2 (x+u)^T A (x+u), x' = x + u.
    The optimal time-varying controller's mean is u_t = −x_t (jump to the minimiser), which no
    momentum setting reproduces for A = diag(1, 0.3). GPS's trajectory optimisation (BADMM with
    the policy terms switched off) must converge to it."""
    fam = _quadratic_family()
    cfg = GPSConfig(conditions=3, samples=8, horizon=5, iterations=12, lqr_history=1,
                    kl_step=2.0, init_pol_wt=0.0, lg_step=0.0, policy_dual_rate=0.0,
                    inner_iterations=1, policy_steps=1, gmm_iters=10,
                    momentum_lr_grid=(0.25, 0.5), momentum_grid=(0.5,))
    agent = GPSAgent(fam, cfg, history=1)
    agent.initialise()

    def gap() -> float:
        b = agent.sample(agent.ctrl)
        x = b.Z[..., agent.smap.layout.state_slices["CUR_LOC"]]
        u_mean = agent.ctrl.mean(b.Z)
        return float((u_mean + x).abs().mean() / x.abs().mean())

    start = gap()
    for _ in range(cfg.iterations):
        row = agent.iteration()
    assert start > 0.2
    assert gap() < 0.05, row
    assert row["sampled_cost"] < 0.02


FAMILIES = [*optenv.BUILTIN_IDS, "custom"]


@pytest.mark.parametrize("algorithm", ["badmm", "mdgps"])
@pytest.mark.parametrize("env_id", FAMILIES, ids=lambda i: i.split("/")[-1])
def test_one_iteration_each_family(env_id: str, algorithm: str) -> None:
    fam = _quadratic_family((1.0, 0.5, 0.2)) if env_id == "custom" else family_of(env_id)
    cfg = GPSConfig(algorithm=algorithm, **SMALL)
    agent = GPSAgent(fam, cfg, history=25)
    agent.initialise()
    row = agent.iteration()
    for key in ("sampled_cost", "policy_cost", "kl", "eta", "step_mult", "dyn_residual",
                "wall_s", "t_sampling", "t_dynamics", "t_lqr", "t_policy", "t_linearise"):
        assert math.isfinite(row[key]), (key, row)
    # every inner iteration runs at least one backward+forward pass of the LQR
    assert row["lqr_evaluations"] >= (cfg.inner_iterations if algorithm == "badmm" else 1)
    assert row["bad_conditions"] == 0
    assert agent.ctrl is not None and bool(torch.isfinite(agent.ctrl.K).all())
    obs = torch.zeros(5, StateLayout(fam.d, 25).obs_dim)
    assert agent.policy(obs).shape == (5, fam.d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", ["badmm", "mdgps"])
def test_cuda_iteration_agrees_with_the_cpu_one(algorithm: str) -> None:
    from optenv.families import make_family

    rows = []
    for device in ("cpu", "cuda"):
        agent = GPSAgent(make_family("LogisticRegression"), _tiny_config(1, algorithm),
                         history=25, device=device)
        agent.initialise()
        rows.append(agent.iteration())
        assert agent.ctrl is not None and agent.ctrl.K.device.type == device
    for key in ("sampled_cost", "dyn_residual"):  # before any float32 policy arithmetic
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-6), key
    assert math.isfinite(rows[1]["policy_cost"])


def test_diverging_condition_is_reported_and_kept() -> None:
    """A condition whose samples blow up is reported and keeps its controller; others go on."""
    fam = _quadratic_family((1.0, 0.5))
    cfg = GPSConfig(**{**SMALL, "conditions": 3})
    agent = GPSAgent(fam, cfg, history=25)
    agent.initialise()
    assert agent.ctrl is not None
    agent.ctrl.k[1] = 1e40  # condition 1 jumps out of range at once
    before = agent.ctrl.k[1].clone()
    row = agent.iteration()
    assert "diverged samples: [1]" in row["failures"]
    assert row["bad_conditions"] == 1
    torch.testing.assert_close(agent.ctrl.k[1], before)
    assert bool(torch.isfinite(agent.ctrl.K).all())
    assert math.isfinite(row["sampled_cost"])


def _tiny_args(out: Path, *extra: str) -> list[str]:
    return ["train", "gps", "--env", "optenv/LogisticRegression-v0", "--out", str(out),
            "--conditions", "2", "--samples", "3", "--horizon", "4", "--lqr-history", "2",
            "--inner-iterations", "2", "--policy-steps", "5", "--policy-batch", "16",
            "--quiet", *extra]


def _tiny_config(iterations: int, algorithm: str = "badmm") -> GPSConfig:
    return make_config(algorithm, **{**SMALL, "iterations": iterations})


def _strip(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s" and not k.startswith("t_")}
            for r in log]


def test_checkpoints_keep_two_costs_per_condition_and_older_ones_still_load() -> None:
    """The step-size rule needs, from the last iteration, only the expected costs of its start
    and result under its model: checkpoints keep those [M] vectors, not the model (GBs at the
    authors' sizes). A checkpoint written before that kept the model; it loads to the same."""
    fam = _quadratic_family()
    agent, b = _sampled(fam, 2, conditions=2, samples=6, horizon=3, lqr_history=2)
    dyn, _res, _gmm = fit_dynamics(b.Z, b.U, agent.smap, reg=1e-6, prior=False)
    model = {"dyn": dyn, "cost": expand_cost(fam, agent.data, b.Z, b.U, agent.smap)}
    assert agent.ctrl is not None
    start = agent.ctrl
    result = LinearGaussianController(start.K + 0.1, start.k - 0.2, start.covar)
    legacy = {"dyn": {k: getattr(dyn, k) for k in ("Fm", "fv", "dyn_covar", "x0mu", "x0sigma")},
              "cost": {k: getattr(model["cost"], k) for k in ("Cm", "cv", "c0")},
              "anchor": start.state_dict(), "result": result.state_dict()}
    agent.prev = _load_prev(legacy, agent._estimate, agent.device, agent.dtype)
    assert agent.prev is not None
    torch.testing.assert_close(agent.prev["anchor_cost"], agent._estimate(model, start))
    torch.testing.assert_close(agent.prev["result_cost"], agent._estimate(model, result))
    assert not torch.allclose(agent.prev["anchor_cost"], agent.prev["result_cost"])
    saved = agent.state_dict()["prev"]
    assert set(saved) == {"anchor_cost", "result_cost"} and saved["anchor_cost"].shape == (2,)
    assert _load_prev(saved, agent._estimate, agent.device, agent.dtype).keys() == saved.keys()


@pytest.mark.parametrize("algorithm", ["badmm", "mdgps"])
def test_resume_reproduces_uninterrupted_run(tmp_path: Path, algorithm: str) -> None:
    env = "optenv/LogisticRegression-v0"
    full = train(env, tmp_path / "a", _tiny_config(2, algorithm), quiet=True)
    train(env, tmp_path / "b", _tiny_config(1, algorithm), quiet=True)  # "interrupted" here
    resumed = train(env, tmp_path / "b", _tiny_config(2, algorithm), quiet=True, resume=True)
    assert _strip(full) == _strip(resumed)
    pa = torch.load(tmp_path / "a" / "policy.pt", weights_only=True)["state_dict"]
    pb = torch.load(tmp_path / "b" / "policy.pt", weights_only=True)["state_dict"]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0)
    for name in ("log.csv", "curves.png", "checkpoint.pt", "config.json"):
        assert (tmp_path / "b" / name).exists()


def test_policy_roundtrip_and_compare_loader(tmp_path: Path) -> None:
    env = "optenv/LogisticRegression-v0"
    cfg = _tiny_config(1)
    train(env, tmp_path / "run", cfg, quiet=True)
    pol = load_optimizer(tmp_path / "run")  # one call
    fam = family_of(env)
    obs = torch.randn(7, StateLayout(fam.d, 25).obs_dim)
    out = pol(obs)
    assert out.shape == (7, fam.d) and bool(torch.isfinite(out).all())
    torch.testing.assert_close(load_optimizer(tmp_path / "run" / "policy.pt")(obs), out)
    ctx = {"env_id": env, "family": fam, "history": 25, "max_step": 1.0, "device": "cpu"}
    method = load_for_compare(str(tmp_path / "run"), ctx)
    ev = optenv.evaluate(method, env, n_test=3, horizon=5)
    assert ev.f.shape == (3, 6) and np.isfinite(ev.f).all()
    other = family_of("optenv/NeuralNet-v0")
    with pytest.raises(ValueError, match="trained for d="):
        load_for_compare(str(tmp_path / "run"), {**ctx, "family": other,
                                                 "env_id": "optenv/NeuralNet-v0"})
    with pytest.raises(ValueError, match=r"policy\.pt"):
        load_optimizer(tmp_path / "nothing")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from optenv.lab.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def test_cli_train_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, err = _cli(_tiny_args(out, "--algorithm", "sgd"), capsys)
    assert code == 2 and "--algorithm" in err and err.count("\n") == 1
    code, err = _cli(_tiny_args(out, "--resume"), capsys)
    assert code == 2 and "--resume" in err
    code, err = _cli(_tiny_args(out, "--env", "optenv/Nope-v0"), capsys)
    assert code == 2 and "--env" in err
    code, _ = _cli(_tiny_args(out, "--iterations", "1"), capsys)
    assert code == 0 and (out / "policy.pt").exists()
    code, err = _cli(_tiny_args(out, "--iterations", "1"), capsys)
    assert code == 2 and "already holds a run" in err
    code, err = _cli(_tiny_args(out, "--iterations", "2", "--kl-step", "0.5", "--resume"),
                     capsys)
    assert code == 2 and "kl_step" in err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before["checkpoint.pt"] = b"not a checkpoint"
    code, err = _cli(_tiny_args(out, "--iterations", "2", "--resume"), capsys)
    assert code == 2 and "checkpoint" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten


def test_every_config_field_is_a_train_flag_that_reaches_the_config(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The README promises every GPS option is a flag. The flags are generated from the
    GPSConfig fields declared with ``option()``: a field declared without it gets no flag and
    fails here, as does a flag whose value does not reach the config with the field's type
    (tuples as comma-separated lists)."""
    from optenv.lab.cli import build_parser

    given = {"algorithm": "mdgps", "conditions": "3", "samples": "4", "horizon": "5",
             "iterations": "6", "kl_step": "0.3", "min_step_mult": "0.02", "max_step_mult": "9",
             "inner_iterations": "3", "policy_dual_rate": "0.3", "lg_step": "0.5",
             "init_pol_wt": "0.02", "init_var": "0.05", "lqr_history": "2",
             "lqr_max_iter": "7", "dynamics_reg": "0.01", "cost_hessian": "psd",
             "gmm_clusters": "3", "gmm_min_samples": "4", "gmm_iters": "5",
             "prior_strength": "2", "policy_hidden": "8,6", "policy_lr": "0.002",
             "policy_weight_decay": "0.001", "policy_steps": "11", "policy_batch": "12",
             "momentum_lr_grid": "0.5,1", "momentum_grid": "0.3,0.6", "seed": "7",
             "policy": "coordinatewise", "hessian_exact_max": "32", "hessian_probes": "4",
             "gmm_max_samples": "9", "features": "li-malik-2017-psi"}
    fields = {f.name for f in dataclasses.fields(GPSConfig)}
    assert set(given) == fields
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "gps", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "BADMM inner iterations (default 4; --quick 2)" in text  # both presets are shown
    assert "(default 0.0009765625," in text  # 2**-10 in full
    assert "history of the LQR state (default the env's; --quick 3)" in text
    argv = ["train", "gps", "--out", "unused"]
    for name, value in given.items():
        argv += ["--" + name.replace("_", "-"), value]
    args = build_parser().parse_args(argv)
    config = config_from_flags(GPSConfig, args, quick=args.quick)
    default = GPSConfig()
    for name, value in given.items():
        got, before = getattr(config, name), getattr(default, name)
        kind = int if before is None else type(before[0] if isinstance(before, tuple) else before)
        want = (tuple(kind(v) for v in value.split(",")) if isinstance(before, tuple)
                else kind(value))
        assert got == want and type(got) is type(want) and got != before, name
    quick = config_from_flags(GPSConfig, build_parser().parse_args(
        ["train", "gps", "--out", "unused", "--quick", "--samples", "5"]), quick=True)
    assert (quick.samples, quick.inner_iterations, quick.policy_steps) == (5, 2, 400)


def test_a_bad_option_value_names_its_flag_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    for flag, value in [("--momentum-grid", "0.5,1.2"), ("--policy-hidden", "8,x"),
                        ("--policy-hidden", "0"), ("--init-var", "0"),
                        ("--momentum-lr-grid", ""), ("--max-step-mult", "0.005")]:
        code, err = _cli(_tiny_args(out, flag, value), capsys)
        assert code == 2 and flag in err and err.count("\n") == 1, (flag, value, err)
        assert not out.exists()


def test_a_resumed_run_keeps_its_thread_count_and_the_callers_is_restored(
        tmp_path: Path) -> None:
    """The thread count sets the order of the CPU's parallel sums, so a resumed run keeps the
    one its config.json recorded unless told otherwise; train() leaves the caller's alone."""
    env, out = "optenv/LogisticRegression-v0", tmp_path / "run"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train(env, out, _tiny_config(1), quiet=True, threads=1)
        assert torch.get_num_threads() == 2
        assert json.loads((out / "config.json").read_text())["threads"] == 1
        train(env, out, _tiny_config(2), quiet=True, resume=True)
        assert torch.get_num_threads() == 2
        assert json.loads((out / "config.json").read_text())["threads"] == 1
        with pytest.raises(ValueError, match="--threads: got 0"):
            train(env, tmp_path / "other", _tiny_config(1), quiet=True, threads=0)
        assert not (tmp_path / "other").exists()
    finally:
        torch.set_num_threads(before)
