"""``optenv train bptt``: meta-train a learned optimiser by BPTT, with checkpoints and resume.

Two architectures: ``lstm`` (Andrychowicz et al.'s coordinatewise LSTM; truncated unrolls of
``--unroll`` steps) and ``mlp`` (the GPS policy class on the observation Φ, trained by BPTT over
the whole horizon unless ``--unroll`` says otherwise). The run folder follows
:mod:`optenv.runs`; the trained optimiser is ``optimizer.pt`` and evaluates through
``optenv compare --methods bptt:DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from baselines.bptt import (
    CoordinatewiseLSTM,
    LSTMPolicy,
    MetaTrainConfig,
    MLPOptimizer,
    load_lstm,
    meta_train,
    save_lstm,
)
from optenv.core import OptimizationCore
from optenv.flags import add_flags, config_from_flags, quick_preset
from optenv.policy import GaussianMLPPolicy, load_policy, save_policy
from optenv.registration import family_of
from optenv.runs import RunDir
from optenv.validation import parse_device

__all__ = ["add_train_parser", "load_for_compare", "observation_scale", "run"]

ARTIFACT = "optimizer.pt"
ARCHS = ("lstm", "mlp")


def observation_scale(family: Any, history: int, horizon: int, n: int = 64,
                      lr: float = 1.0) -> torch.Tensor:
    """Per-feature 1/RMS of observations along plain GD runs on TRAIN objectives.

    Φ mixes relative objective changes, gradients and steps of very different magnitudes; a
    fixed rescaling measured once makes the MLP's inputs O(1). Features that stay zero get 1.
    """
    core = OptimizationCore(family, history)
    data, x0 = family.sample(torch.arange(n) + 2**41, split="train")
    res = core.start(data, x0)
    state, f = res.state, res.f
    obs = [core.layout.observation(state)]
    gs = core.layout.state_slices["CUR_GRAD"]
    for _ in range(horizon):
        res = core.step(data, state, f, -lr * state[:, gs])
        state, f = res.state, res.f
        obs.append(core.layout.observation(state))
    rms = torch.stack(obs).pow(2).mean((0, 1)).sqrt()
    scale = torch.where(rms > 1e-12, 1.0 / rms.clamp_min(1e-12), torch.ones_like(rms))
    return scale.clamp(1e-4, 1e4).float()


def _build(arch: str, family: Any, history: int, horizon: int) -> torch.nn.Module:
    if arch == "lstm":
        return CoordinatewiseLSTM()
    obs_dim = OptimizationCore(family, history).layout.obs_dim
    policy = GaussianMLPPolicy(obs_dim, family.d,
                               obs_scale=observation_scale(family, history, horizon))
    with torch.no_grad():  # start near a zero step: small output layer
        policy.mean_net[-1].weight.mul_(0.01)
        policy.mean_net[-1].bias.zero_()
    return MLPOptimizer(policy)


def add_train_parser(subparsers: Any) -> None:
    """Add ``bptt`` to ``optenv train``: the run's own flags, and one flag per
    :class:`~baselines.bptt.MetaTrainConfig` option (generated, see :mod:`optenv.flags`)."""
    quick = quick_preset(MetaTrainConfig)
    p = subparsers.add_parser("bptt", help="meta-train a learned optimiser by BPTT "
                              "(Andrychowicz et al. 2016)")
    p.add_argument("--env", default="optenv/LogisticRegression-v0", help="optenv env id")
    p.add_argument("--arch", choices=ARCHS, default="lstm",
                   help="coordinatewise LSTM, or the GPS policy class (MLP on the observation)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--quick", action="store_true",
                   help=f"small preset ({quick['iterations']} iterations of "
                        f"{quick['batch_size']} objectives)")
    add_flags(p, MetaTrainConfig)
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> tuple[MetaTrainConfig, dict[str, Any]]:
    """The meta-training config the flags ask for, and the run's ``config.json``; checked
    before the run folder is touched (a bad flag is a ValueError naming it)."""
    if args.env not in gym.registry or "family" not in gym.spec(args.env).kwargs:
        raise ValueError(f"--env: got {args.env!r}, allowed: a registered optenv id")
    spec = gym.spec(args.env)
    horizon = args.horizon if args.horizon is not None else spec.max_episode_steps
    mt = config_from_flags(MetaTrainConfig, args, quick=args.quick, horizon=horizon,
                           history=int(spec.kwargs.get("history", 25)))
    if args.arch == "mlp" and args.unroll is None:  # the MLP: BPTT over the whole horizon
        mt = dataclasses.replace(mt, unroll=mt.horizon)
    parse_device(args.device, "--device")
    cfg = {"algorithm": "bptt", "env_id": args.env, "arch": args.arch,
           "iterations": mt.iterations, "batch_size": mt.batch_size, "horizon": mt.horizon,
           "unroll": mt.unroll, "lr": mt.lr, "second_order": mt.second_order, "seed": mt.seed,
           "history": mt.history,
           "max_step": float(spec.kwargs.get("max_step", family_of(args.env).default_max_step)),
           "device": args.device}
    return mt, cfg


def run(args: argparse.Namespace) -> int:
    """``optenv train bptt`` (module docstring); returns the exit status."""
    mt, cfg = _config(args)
    run_dir = RunDir(args.out, cfg, resume=args.resume,
                     resumable_keys=("iterations", "device"))
    family = family_of(cfg["env_id"])
    device = torch.device(cfg["device"])
    torch.manual_seed(mt.seed)
    net = _build(cfg["arch"], family, mt.history, mt.horizon).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=mt.lr)
    log: list[dict[str, Any]] = []
    start = 0
    if args.resume:
        state, log = run_dir.load()
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["iteration"]) + 1
    _meta_train(net, opt, family, mt, run_dir, log, start, quiet=args.quiet)
    path = _save(net, run_dir, cfg)
    if log:
        run_dir.plot(log, ["meta_loss", "grad_norm"])
    print(f"wrote {path}")
    return 0


def _meta_train(net: torch.nn.Module, opt: torch.optim.Optimizer, family: Any,
                mt: MetaTrainConfig, run_dir: RunDir, log: list[dict[str, Any]], start: int,
                *, quiet: bool) -> None:
    """Meta-iterations ``start .. mt.iterations - 1``, one :func:`meta_train` call each, so that
    the log and the checkpoint are written after every one (a resumed run goes on from it)."""
    from tqdm.auto import tqdm

    one_iteration = dataclasses.replace(mt, iterations=1)
    bar = tqdm(range(start, mt.iterations), initial=start, total=mt.iterations,
               desc="bptt", disable=quiet)
    for it in bar:
        t0 = time.perf_counter()
        one = meta_train(net, family, one_iteration, start_iteration=it, optimizer=opt)
        row = {"iteration": it, "meta_loss": one.meta_loss[0], "grad_norm": one.grad_norm[0],
               "skipped_unrolls": one.skipped_unrolls,
               "wall_s": round(time.perf_counter() - t0, 4)}
        log.append(row)
        bar.set_postfix(meta_loss=f"{row['meta_loss']:.4g}")
        run_dir.save({"net": net.state_dict(), "optimizer": opt.state_dict(),
                      "torch_rng": torch.get_rng_state(), "iteration": it}, log)


def _save(net: torch.nn.Module, run_dir: RunDir, cfg: dict[str, Any]) -> str:
    """The trained optimiser as the run's artifact (the LSTM's or the MLP policy's format)."""
    extra = {"env_id": cfg["env_id"], "history": cfg["history"], "max_step": cfg["max_step"],
             "arch": cfg["arch"]}
    path = str(run_dir.path / ARTIFACT)
    if cfg["arch"] == "lstm":
        save_lstm(path, net.cpu(), extra)  # type: ignore[arg-type]
    else:
        save_policy(path, net.policy.cpu(), extra)  # type: ignore[union-attr]
    return path


def load_for_compare(path: str, context: dict[str, Any]) -> Any:
    """``optenv compare --methods bptt:DIR``: the trained optimiser as an env policy."""
    folder = Path(path)
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"--methods: bptt:{path} is not a finished `optenv train bptt` run "
                         f"folder ({err})") from err
    artifact = str(folder / ARTIFACT)
    family = context["family"]
    if cfg.get("history") != context["history"]:
        raise ValueError(f"--methods: bptt:{path} was trained with history {cfg.get('history')},"
                         f" the env has {context['history']}")
    if cfg.get("arch") == "lstm":
        net, _ = load_lstm(artifact, map_location=context.get("device", "cpu"))
        layout = OptimizationCore(family, context["history"]).layout.observation_slices
        return LSTMPolicy(net, layout, context["max_step"])
    policy, _ = load_policy(artifact, map_location=context.get("device", "cpu"))
    if policy.d != family.d:
        raise ValueError(f"--methods: bptt:{path} optimises d={policy.d} variables, the env has "
                         f"d={family.d}")
    return policy.as_env_policy(context["max_step"])
