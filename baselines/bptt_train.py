"""``optenv train bptt``: meta-train a learned optimiser by BPTT, with checkpoints and resume.

Two architectures: ``lstm`` (Andrychowicz et al.'s coordinatewise LSTM; truncated unrolls of
``--unroll`` steps) and ``mlp`` (the GPS policy class on the observation Φ, trained by BPTT over
the whole horizon unless ``--unroll`` says otherwise). The run folder follows
:mod:`optenv.runs`; the trained optimiser is ``optimizer.pt`` and evaluates through
``optenv compare --methods bptt:DIR``.
"""

from __future__ import annotations

import argparse
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
from optenv.policy import GaussianMLPPolicy, load_policy, save_policy
from optenv.registration import family_of
from optenv.runs import RunDir
from optenv.validation import check_int, check_number, parse_device

__all__ = ["add_train_parser", "load_for_compare", "observation_scale", "run"]

ARTIFACT = "optimizer.pt"
QUICK = {"iterations": 100, "batch_size": 32}
FULL = {"iterations": 1000, "batch_size": 64}


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
    p = subparsers.add_parser("bptt", help="meta-train a learned optimiser by BPTT "
                              "(Andrychowicz et al. 2016)")
    p.add_argument("--env", default="optenv/LogisticRegression-v0", help="optenv env id")
    p.add_argument("--arch", choices=["lstm", "mlp"], default="lstm",
                   help="coordinatewise LSTM, or the GPS policy class (MLP on the observation)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--quick", action="store_true",
                   help=f"small preset ({QUICK['iterations']} iterations of "
                        f"{QUICK['batch_size']} objectives)")
    p.add_argument("--iterations", type=int, default=None, help="meta-iterations")
    p.add_argument("--batch-size", type=int, default=None, help="objectives per iteration")
    p.add_argument("--horizon", type=int, default=None, help="unroll horizon (default: env's)")
    p.add_argument("--unroll", type=int, default=None,
                   help="truncation length (default 20 for lstm, the horizon for mlp)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--second-order", action="store_true",
                   help="keep second-order terms (the paper drops them)")
    p.add_argument("--seed", type=int, default=0, help="seed (training objectives, init)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if args.env not in gym.registry or "family" not in gym.spec(args.env).kwargs:
        raise ValueError(f"--env: got {args.env!r}, allowed: a registered optenv id")
    spec = gym.spec(args.env)
    preset = QUICK if args.quick else FULL
    horizon = args.horizon if args.horizon is not None else spec.max_episode_steps or 40
    cfg = {
        "algorithm": "bptt", "env_id": args.env, "arch": args.arch,
        "iterations": args.iterations if args.iterations is not None else preset["iterations"],
        "batch_size": args.batch_size if args.batch_size is not None else preset["batch_size"],
        "horizon": horizon,
        "unroll": args.unroll if args.unroll is not None else (
            20 if args.arch == "lstm" else horizon),
        "lr": args.lr, "second_order": bool(args.second_order), "seed": args.seed,
        "history": int(spec.kwargs.get("history", 25)),
        "max_step": float(spec.kwargs.get("max_step", family_of(args.env).default_max_step)),
        "device": args.device,
    }
    for name in ("iterations", "batch_size", "horizon", "unroll"):
        check_int(f"--{name.replace('_', '-')}", cfg[name], 1)
    check_int("--seed", cfg["seed"], 0)
    check_number("--lr", cfg["lr"])
    parse_device(args.device, "--device")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    run_dir = RunDir(args.out, cfg, resume=args.resume,
                     resumable_keys=("iterations", "device"))
    family = family_of(cfg["env_id"])
    device = torch.device(cfg["device"])
    torch.manual_seed(cfg["seed"])
    net = _build(cfg["arch"], family, cfg["history"], cfg["horizon"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    log: list[dict[str, Any]] = []
    start = 0
    if args.resume:
        state, log = run_dir.load()
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["iteration"]) + 1
    mt = MetaTrainConfig(iterations=1, batch_size=cfg["batch_size"], horizon=cfg["horizon"],
                         unroll=cfg["unroll"], lr=cfg["lr"], second_order=cfg["second_order"],
                         history=cfg["history"], seed=cfg["seed"])
    from tqdm.auto import tqdm

    bar = tqdm(range(start, cfg["iterations"]), initial=start, total=cfg["iterations"],
               desc="bptt", disable=args.quiet)
    for it in bar:
        t0 = time.perf_counter()
        one = meta_train(net, family, mt, start_iteration=it, optimizer=opt)
        row = {"iteration": it, "meta_loss": one.meta_loss[0], "grad_norm": one.grad_norm[0],
               "skipped_unrolls": one.skipped_unrolls,
               "wall_s": round(time.perf_counter() - t0, 4)}
        log.append(row)
        bar.set_postfix(meta_loss=f"{row['meta_loss']:.4g}")
        run_dir.save({"net": net.state_dict(), "optimizer": opt.state_dict(),
                      "torch_rng": torch.get_rng_state(), "iteration": it}, log)
    extra = {"env_id": cfg["env_id"], "history": cfg["history"], "max_step": cfg["max_step"],
             "arch": cfg["arch"]}
    path = str(run_dir.path / ARTIFACT)
    if cfg["arch"] == "lstm":
        save_lstm(path, net.cpu(), extra)  # type: ignore[arg-type]
    else:
        save_policy(path, net.policy.cpu(), extra)  # type: ignore[union-attr]
    if log:
        run_dir.plot(log, ["meta_loss", "grad_norm"])
    print(f"wrote {path}")
    return 0


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
