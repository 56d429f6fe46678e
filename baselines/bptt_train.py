"""``optenv train bptt``: meta-train a learned optimiser by BPTT, with checkpoints and resume.

Four architectures (``--arch``):

* ``lstm``: Andrychowicz et al.'s coordinatewise LSTM on each coordinate's gradient; truncated
  unrolls of ``--unroll`` steps (default 20);
* ``mlp``: the flat GPS policy class of Li & Malik 2016 on the observation Φ, tied to the
  training family's d; BPTT over the whole horizon unless ``--unroll`` says otherwise;
* ``coordinatewise-mlp`` / ``coordinatewise-lstm``: Li & Malik 2017's
  :class:`~optenv.policy.CoordinatewisePolicy` (the class coordinate-group GPS trains) on one
  feature row per coordinate (``--features``, default ``li-malik-2016``: the 2016 state split
  by coordinate) and its group's kind. It runs on any d: trained on one family, it evaluates on
  another with other group sizes. The MLP unrolls the whole horizon by default, the LSTM
  truncates at 20 steps like ``lstm``.

Every arch is meta-trained on the same meta-loss (Σ_t mean f(x_t) over unrolls on TRAIN
objectives of the env's family, :func:`baselines.bptt.meta_train`). The run folder follows
:mod:`optenv.runs`; the trained optimiser is ``optimizer.pt`` (with the arch, the feature set
and the history in its metadata) and evaluates through ``optenv compare --methods bptt:DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from baselines.bptt import (
    DEFAULT_FEATURES,
    CoordinatewiseLSTM,
    CoordinatewiseOptimizer,
    LSTMPolicy,
    MetaTrainConfig,
    MLPOptimizer,
    load_lstm,
    meta_train,
    save_lstm,
)
from optenv.checkpoint import read_json_object
from optenv.core import OptimizationCore
from optenv.features import FEATURE_SETS, check_features, observer_for
from optenv.flags import add_flags, config_from_flags, quick_preset
from optenv.learned import LearnedPolicy
from optenv.policy import (
    CoordinatewisePolicy,
    GaussianMLPPolicy,
    load_coordinatewise_policy,
    load_policy,
    save_coordinatewise_policy,
    save_policy,
)
from optenv.registration import family_of
from optenv.runs import RunDir
from optenv.validation import parse_device

__all__ = ["ARCHS", "add_train_parser", "load_for_compare", "observation_scale", "row_scale",
           "run"]

ARTIFACT = "optimizer.pt"
#: The coordinatewise archs and the :class:`~optenv.policy.CoordinatewisePolicy` cell of each.
COORDINATEWISE_ARCHS = {"coordinatewise-mlp": "mlp", "coordinatewise-lstm": "lstm"}
ARCHS = ("lstm", "mlp", *COORDINATEWISE_ARCHS)


def _gd_feature_scale(family: Any, history: int, horizon: int, n: int, lr: float,
                      view: Any) -> torch.Tensor:
    """Per-feature 1/RMS of ``view(layout, state, t)`` ([B, ..., k]: RMS over every leading
    axis and time) along plain GD runs on TRAIN objectives; features that stay zero get 1."""
    core = OptimizationCore(family, history)
    data, x0 = family.sample(torch.arange(n) + 2**41, split="train")
    res = core.start(data, x0)
    state, f = res.state, res.f
    feats = [view(core.layout, state, 0)]
    gs = core.layout.state_slices["CUR_GRAD"]
    for t in range(1, horizon + 1):
        res = core.step(data, state, f, -lr * state[:, gs])
        state, f = res.state, res.f
        feats.append(view(core.layout, state, t))
    stacked = torch.stack(feats)
    rms = stacked.pow(2).reshape(-1, stacked.shape[-1]).mean(0).sqrt()
    scale = torch.where(rms > 1e-12, 1.0 / rms.clamp_min(1e-12), torch.ones_like(rms))
    return scale.clamp(1e-4, 1e4).float()


def observation_scale(family: Any, history: int, horizon: int, n: int = 64,
                      lr: float = 1.0) -> torch.Tensor:
    """Per-feature 1/RMS of observations along plain GD runs on TRAIN objectives.

    Φ mixes relative objective changes, gradients and steps of very different magnitudes; a
    fixed rescaling measured once makes the MLP's inputs O(1). Features that stay zero get 1.
    """
    return _gd_feature_scale(family, history, horizon, n, lr,
                             lambda layout, state, t: layout.observation(state))


def row_scale(family: Any, history: int, horizon: int, features: str = DEFAULT_FEATURES,
              n: int = 64, lr: float = 1.0) -> torch.Tensor:
    """Per-column 1/RMS of the coordinatewise rows along plain GD runs on TRAIN objectives.

    The same fixed input normalisation as :func:`observation_scale`, pooled over coordinates
    (the policy is shared across them), so it does not depend on d. It is measured on the
    TRAINING family and saved with the policy: on another family the policy sees that family's
    rows under the training scale, as a transferred optimiser must.
    """
    return _gd_feature_scale(family, history, horizon, n, lr,
                             lambda layout, state, t: check_features(features).rows(
                                 layout, layout.observation(state), t))


def _build(arch: str, family: Any, history: int, horizon: int,
           features: str | None = None) -> torch.nn.Module:
    """A fresh net of ``arch`` for ``family``, its output layer scaled down so that training
    starts near a zero step (a random net's first steps would throw the runs far away)."""
    if arch == "lstm":
        return CoordinatewiseLSTM()
    if arch in COORDINATEWISE_ARCHS:
        features = features or DEFAULT_FEATURES
        width = check_features(features).width(history)
        cw = CoordinatewisePolicy(width, features=features, cell=COORDINATEWISE_ARCHS[arch],
                                  obs_scale=row_scale(family, history, horizon, features))
        last = cw.readout if cw.recurrent else cw.mean_net[-1]
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.zero_()
        return CoordinatewiseOptimizer(cw, family.coordinate_groups())
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
                   help="lstm: Andrychowicz et al.'s coordinatewise LSTM; mlp: the flat GPS "
                        "policy (MLP on the observation, one d); coordinatewise-mlp|lstm: the "
                        "coordinatewise GPS policy class (any d)")
    p.add_argument("--features", choices=tuple(FEATURE_SETS), default=None,
                   help=f"feature set of the coordinatewise archs' rows (default "
                        f"{DEFAULT_FEATURES})")
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
    features = getattr(args, "features", None)
    mt = config_from_flags(MetaTrainConfig, args, quick=args.quick, horizon=horizon,
                           history=_history(spec.kwargs.get("history"), args.arch, features))
    if args.arch in ("mlp", "coordinatewise-mlp") and args.unroll is None:
        mt = dataclasses.replace(mt, unroll=mt.horizon)  # no recurrent state: the whole horizon
    if args.arch in COORDINATEWISE_ARCHS:
        features = features or DEFAULT_FEATURES
    elif features is not None:
        raise ValueError(f"--features: got {features!r} with --arch {args.arch}, allowed: only "
                         f"with {' or '.join(COORDINATEWISE_ARCHS)}")
    parse_device(args.device, "--device")
    cfg = {"algorithm": "bptt", "env_id": args.env, "arch": args.arch, "features": features,
           "iterations": mt.iterations, "batch_size": mt.batch_size, "horizon": mt.horizon,
           "unroll": mt.unroll, "lr": mt.lr, "second_order": mt.second_order, "seed": mt.seed,
           "history": mt.history,
           "max_step": float(spec.kwargs.get("max_step", family_of(args.env).default_max_step)),
           "device": args.device}
    return mt, cfg


def _history(registered: Any, arch: str, features: str | None) -> int:
    """The env's history if its id fixes one, else the feature set's default (25 for the 2016
    state, 132 for li-malik-2017, whose strides of 5 reach 130 iterations back)."""
    if registered is not None:
        return int(registered)
    if arch in COORDINATEWISE_ARCHS:
        return check_features(features or DEFAULT_FEATURES).default_history
    return 25


def _coordinatewise_env_policy(cw: Any, path: str, family: Any,
                               context: dict[str, Any]) -> Any:
    """The policy acting in the target env, through the env library's one binding of a
    coordinatewise optimiser (:meth:`optenv.learned.LearnedPolicy.env_policy`: on the env's
    rows when it emits the policy's feature set, else on flat observations, from which the
    policy computes its rows; the history rule of its feature set)."""
    what = f"bptt:{path}"
    return LearnedPolicy(cw, source=what).env_policy(family, context, what)


def run(args: argparse.Namespace) -> int:
    """``optenv train bptt`` (module docstring); returns the exit status."""
    mt, cfg = _config(args)
    family = family_of(cfg["env_id"])
    device = torch.device(cfg["device"])
    torch.manual_seed(mt.seed)
    net = _build(cfg["arch"], family, mt.history, mt.horizon, cfg["features"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=mt.lr)
    # The checkpoint is read, verified and loaded before anything in the folder is written.
    with RunDir(args.out, cfg, resume=args.resume, resumable_keys=("iterations", "device"),
                prepare=lambda state: _restore(net, opt, state, args.out)) as run_dir:
        state, log = run_dir.load()
        start = int(state["iteration"]) + 1 if run_dir.resuming else 0
        _meta_train(net, opt, family, mt, run_dir, log, start, quiet=args.quiet)
        path = _save(net, run_dir, cfg)
        if log:
            run_dir.plot(log, ["meta_loss", "grad_norm"])
    print(f"wrote {path}")
    return 0


def _restore(net: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any] | None,
             out: str) -> None:
    """A checkpoint's net, optimiser and torch RNG state (None: a fresh start, nothing to
    restore); ValueError naming the checkpoint if it does not fit the run."""
    if state is None:
        return
    try:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        int(state["iteration"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"--resume: {str(Path(out) / 'checkpoint.pt')!r} does not fit this "
                         f"run ({err})") from err


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
    """The trained optimiser as the run's artifact (the LSTM's, the MLP policy's or the
    coordinatewise policy's format), with what it needs to be evaluated in its metadata: the
    arch, the history, the feature set (coordinatewise) and the training family's groups."""
    extra = {"env_id": cfg["env_id"], "history": cfg["history"], "max_step": cfg["max_step"],
             "arch": cfg["arch"]}
    path = str(run_dir.path / ARTIFACT)
    if cfg["arch"] == "lstm":
        save_lstm(path, net.cpu(), extra)  # type: ignore[arg-type]
    elif cfg["arch"] in COORDINATEWISE_ARCHS:
        groups = family_of(cfg["env_id"]).coordinate_groups()
        extra |= {"features": cfg["features"],
                  "train_groups": [[g.name, g.kind, g.size] for g in groups]}
        save_coordinatewise_policy(path, net.policy.cpu(), extra)  # type: ignore[union-attr]
    else:
        save_policy(path, net.policy.cpu(), extra)  # type: ignore[union-attr]
    return path


def load_for_compare(path: str, context: dict[str, Any]) -> Any:
    """``optenv compare --methods bptt:DIR``: the trained optimiser as an env policy.

    ``context`` describes the TARGET env (``family``, ``history``, ``max_step``, ``device``),
    which need not be the training one: a coordinatewise optimiser is bound to the target
    family's coordinate groups and layout (it runs on any d); the flat MLP must match its d.
    ValueError, naming what differs, where the target cannot be served (another history, or
    for the MLP another d).
    """
    folder = Path(path)
    try:
        cfg = read_json_object(folder / "config.json", f"--methods: bptt:{path}")
    except ValueError as err:
        raise ValueError(f"{err}; allowed: the folder of a finished `optenv train bptt` "
                         "run") from err
    artifact = str(folder / ARTIFACT)
    if not Path(artifact).is_file():
        raise ValueError(f"--methods: bptt:{path} holds no {ARTIFACT}; allowed: the folder "
                         "of a finished `optenv train bptt` run")
    family = context["family"]
    if cfg.get("arch") in COORDINATEWISE_ARCHS:  # any d; its feature set's history rule
        cw, _extra = load_coordinatewise_policy(artifact,
                                                map_location=context.get("device", "cpu"))
        return _coordinatewise_env_policy(cw, path, family, context)
    if cfg.get("history") != context["history"]:
        raise ValueError(f"--methods: bptt:{path} was trained with history {cfg.get('history')},"
                         f" the env has {context['history']}")
    observer_for(context, f"bptt:{path}", flat_only=True)
    if cfg.get("arch") == "lstm":
        net, _ = load_lstm(artifact, map_location=context.get("device", "cpu"))
        layout = OptimizationCore(family, context["history"]).layout.observation_slices
        return LSTMPolicy(net, layout, context["max_step"])
    policy, _ = load_policy(artifact, map_location=context.get("device", "cpu"))
    if policy.d != family.d:
        raise ValueError(f"--methods: bptt:{path} optimises d={policy.d} variables, the env has "
                         f"d={family.d}")
    return policy.as_env_policy(context["max_step"])
