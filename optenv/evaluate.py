"""Held-out evaluation: run any optimiser on N TEST objectives of a family, batched and seeded.

What can be evaluated (``method`` of :func:`evaluate`):

* a **hand-designed optimiser** — any object with ``propose(x, f, g, oracle) -> Δx`` and
  ``reset()`` (:class:`~optenv.rollout.DirectOptimizer`; ``baselines.optimizers`` has them, and
  ``baselines.optimizers.make_optimizer("adam")`` builds one by name). It runs directly on the
  batch, unclipped, with line-search evaluations counted (``extra_evals``);
* a **Stable-Baselines3 model** (anything with ``predict(obs, deterministic=...)``), given numpy
  observations as the env emits them ([B, obs_dim], or [B, d, k] rows) — a model trained
  behind ``VecNormalize`` needs its saved statistics: load its run folder with
  ``baselines.sb3_policy`` (what ``optenv compare --methods ppo:DIR`` does), which normalises
  before calling the model;
* a **policy callable** on batched torch observations ([B, obs_dim] flat, [B, d, k] in the
  coordinatewise mode) returning actions [B, d]
  (torch or numpy); a ``reset()`` method, if any, is called before the run.

Policies act with the env's semantics: the observation is what the env would emit — the state
without CUR_LOC ([B, obs_dim], ``observation="flat"``) or its rows per coordinate ([B, d, k],
``observation="coordinatewise"``, of the ``features`` set), through the envs' own observation
map (:class:`optenv.features.Observer`) — cast to ``obs_dtype`` (float32 by default, as the env
emits it), and the step is ``max_step · clip(action, −1, 1)``. Everything steps through the one
shared :class:`~optenv.core.OptimizationCore`, N objectives at once.

Divergence: a run whose f or iterate becomes non-finite is frozen there (zero steps after), and
its recorded f is +inf from that iteration on (``nonfinite``). Non-finite actions count as
divergence here (the env raises ValueError instead), so one bad policy does not abort a
comparison. ``Evaluation.diverged`` also flags runs that end above where they started
(final f > f(x0)), Li & Malik's notion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from optenv.core import OptimizationCore, StateLayout
from optenv.distributed import World, all_gather_objects, unshard
from optenv.families import ObjectiveFamily
from optenv.features import (
    DEFAULT_FEATURES,
    DEFAULT_OBSERVATION,
    FEATURE_SETS,
    Observer,
    check_features,
    check_observation,
    make_observer,
    resolve_history,
)
from optenv.rollout import DirectOptimizer, Oracle, Rollout, StepFn, rollout
from optenv.validation import check_int, parse_device, parse_dtype

__all__ = ["Evaluation", "evaluate", "resolve_env"]

@dataclass
class Evaluation:
    """Per-objective results of one method on held-out objectives.

    ``f`` [N, T+1] float64 (column 0 is f(x0); +inf after a non-finite divergence),
    ``nonfinite`` [N] bool, ``extra_evals`` [N] int (line-search evaluations beyond one per
    iteration), ``seeds`` [N] (instance i is ``family.sample(seeds[i], split=split)``),
    ``evals`` [N, T+1] int (f/∇f evaluations made by the end of each iteration; None = one per
    iteration). For a family whose f is a minibatch estimate (``MLPClassifier``), ``f`` is the
    full training loss at each iterate (the objective the paper plots; ``info["f"]`` says
    ``"f_full"``) and ``f_minibatch`` the noisy f the method saw (None for other families).
    """

    method: str
    f: np.ndarray
    nonfinite: np.ndarray
    extra_evals: np.ndarray
    seeds: np.ndarray
    horizon: int
    split: str
    env: str
    info: dict[str, Any] = field(default_factory=dict)
    evals: np.ndarray | None = None
    f_minibatch: np.ndarray | None = None

    @property
    def diverged(self) -> np.ndarray:
        """[N] bool: non-finite, or final f above f(x0) (Li & Malik's "diverged")."""
        return self.nonfinite | ~(self.f[:, -1] <= self.f[:, 0])


def resolve_env(env: Any) -> tuple[str, ObjectiveFamily, dict[str, Any]]:
    """(label, family, defaults) for an env id, an ObjectiveFamily or an optenv env instance.

    ``defaults`` holds the ``history``, ``max_step``, ``horizon``, ``observation`` and
    ``features`` the env would use, and ``history_given`` (whether the env fixes its history,
    rather than taking its feature set's default).
    """
    import gymnasium as gym

    from optenv.registration import DEFAULT_HORIZON, family_of

    if isinstance(env, str):
        try:
            spec = gym.spec(env)
        except gym.error.Error as err:
            allowed = sorted(k for k in gym.registry if k.startswith("optenv/"))
            raise ValueError(f"env: got {env!r}, allowed: {', '.join(allowed)} "
                             "(or another registered optenv id)") from err
        if "family" not in spec.kwargs:
            raise ValueError(f"env: got {env!r}, which is not an optenv objective id; allowed: "
                             "ids registered with optenv.register_objective")
        family = family_of(env)
        max_step = spec.kwargs.get("max_step") or family.default_max_step
        observation = spec.kwargs.get("observation", DEFAULT_OBSERVATION)
        features = spec.kwargs.get("features", DEFAULT_FEATURES)
        history = spec.kwargs.get("history")
        # an unknown name is reported by whoever uses it (evaluate, or gym.make)
        fs = FEATURE_SETS.get(features, FEATURE_SETS[DEFAULT_FEATURES])
        return env, family, {
            "history": resolve_history(fs, history),
            "history_given": history is not None, "max_step": float(max_step),
            "horizon": int(spec.max_episode_steps or DEFAULT_HORIZON),
            "observation": observation, "features": features}
    if isinstance(env, ObjectiveFamily):
        return repr(env), env, {"history": FEATURE_SETS[DEFAULT_FEATURES].default_history,
                                "history_given": False,
                                "max_step": float(env.default_max_step),
                                "horizon": DEFAULT_HORIZON, "observation": DEFAULT_OBSERVATION,
                                "features": DEFAULT_FEATURES}
    base = getattr(env, "unwrapped", None)
    if base is not None and isinstance(getattr(base, "family", None), ObjectiveFamily):
        spec = getattr(env, "spec", None) or getattr(base, "spec", None)
        horizon = getattr(spec, "max_episode_steps", None) or getattr(
            base, "max_episode_steps", None) or DEFAULT_HORIZON
        label = spec.id if spec is not None else repr(base.family)
        return label, base.family, {
            "history": base.layout.history, "history_given": True,
            "max_step": float(base.max_step), "horizon": int(horizon),
            "observation": getattr(base, "observation_mode", DEFAULT_OBSERVATION),
            "features": getattr(base, "features", DEFAULT_FEATURES)}
    raise ValueError(f"env: got {type(env).__name__}, allowed: an optenv env id, an "
                     "ObjectiveFamily or an optenv env")


def _method_kind(method: Any) -> str:
    if isinstance(method, DirectOptimizer):
        return "direct"
    if callable(getattr(method, "predict", None)):
        return "predict"
    if callable(method):
        return "callable"
    raise ValueError(f"method: got {type(method).__name__}, allowed: a hand-designed optimiser "
                     "object (with propose/reset; e.g. baselines.optimizers.make_optimizer"
                     "('adam')), an SB3 model (with .predict) or a callable on batched "
                     "observations")


def evaluate(
    method: Any,
    env: Any = "optenv/LogisticRegression-v0",
    *,
    n_test: int = 100,
    horizon: int | None = None,
    seed: int = 0,
    split: str = "test",
    history: int | None = None,
    max_step: float | None = None,
    observation: str | None = None,
    features: str | None = None,
    dtype: str | torch.dtype = "float64",
    obs_dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    deterministic: bool = True,
    name: str | None = None,
    progress: bool = False,
    world: World | None = None,
) -> Evaluation:
    """Run ``method`` on the ``n_test`` held-out objectives ``seed, ..., seed + n_test − 1`` of
    ``split`` (default TEST) for ``horizon`` iterations (default the env's, 40 for the
    registered ids; any longer horizon on request), all at once.

    ``env``: an optenv env id, an ObjectiveFamily or an env instance; ``history``,
    ``max_step``, ``observation`` ("flat" or "coordinatewise") and ``features`` (a name of
    :data:`optenv.features.FEATURE_SETS`) default to the env's, so a policy trained on an env
    made with ``observation="coordinatewise"`` is evaluated on the rows it was trained on;
    naming another feature set without a ``history`` takes that set's default history unless
    the env fixes one. ``method``: an optimiser object, see the module docstring (names are
    resolved by the caller: this library layer imports no optimiser package).
    The same arguments give the same numbers (the instances are keyed by seed and split).

    ``world``: the process group (:mod:`optenv.distributed`) to share the objectives across:
    rank r runs objectives r, r + size, ... as one batch, and every rank returns the whole
    Evaluation, its rows gathered back in order — on the CPU the same numbers, bit for bit, as
    one process (every row's arithmetic is its own; ``tests/lab/test_compare_distributed.py``).
    Every rank of the world must call it with the same arguments.
    """
    label, family, defaults = resolve_env(env)
    check_int("n_test", n_test, 1)
    check_int("seed", seed, 0)
    observation, features, history = _observation_settings(defaults, observation, features,
                                                           history)
    horizon, history, max_step = _run_settings(defaults, horizon, history, max_step)
    dt, odt = parse_dtype(dtype), parse_dtype(obs_dtype)
    dev = parse_device(device)
    kind = _method_kind(method)
    if name is None:
        name = getattr(method, "name", None) or type(method).__name__

    seeds = torch.arange(seed, seed + n_test, dtype=torch.int64)
    if world is not None and world.distributed:
        seeds = seeds[world.rank::world.size]
        if seeds.numel() == 0:  # fewer objectives than ranks: this rank has none
            return _gathered(None, world)
    # a hand-designed optimiser reads x, f and ∇f only: its runs keep one step of history (the
    # same numbers, 4d + 1 state entries a row instead of (2 + 2H)·d + H)
    direct = kind == "direct"
    core = OptimizationCore(family, 1 if direct else history)
    # (it reads no observation either: the env's feature set is checked against the full
    # history, as the env would)
    observer = make_observer(observation, features,
                             StateLayout(family.d, history) if direct else core.layout)
    data, x0 = family.sample(seeds, split=split, dtype=dt, device=dev)
    if callable(getattr(method, "reset", None)):
        method.reset()
    if kind == "direct":
        step: DirectOptimizer | StepFn = method
    else:
        step = _policy_step(method, kind, observer, max_step, odt, family.d, deterministic)
    res = rollout(core, data, x0, horizon, step, progress=progress, desc=name)
    ev = _evaluation(res, name, seeds, horizon=horizon, split=split, env=label,
                     info={"kind": kind, "history": history, "max_step": max_step,
                             "observation": observation, "features": features,
                             "device": str(dev), "dtype": str(dt).replace("torch.", ""),
                           "obs_dtype": str(odt).replace("torch.", "")})
    return _gathered(ev, world) if world is not None and world.distributed else ev


#: Evaluation fields with one entry per objective (row), which :func:`_gathered` puts back in
#: order; the other fields are the same on every rank.
_ROW_FIELDS = ("f", "nonfinite", "extra_evals", "seeds", "evals", "f_minibatch")


def _gathered(ev: Evaluation | None, world: World) -> Evaluation:
    """The whole Evaluation from every rank's share (``ev``: this rank's, None if it had no
    objectives): rows back in the order of one process (:func:`optenv.distributed.unshard`),
    the rest from the first rank that ran any (rank 0 unless it had none)."""
    pieces = all_gather_objects(ev, world)
    first = next(p for p in pieces if p is not None)
    fields: dict[str, Any] = {}
    for key in _ROW_FIELDS:
        if getattr(first, key) is None:
            fields[key] = None
            continue
        rows = [getattr(p, key) if p is not None else [] for p in pieces]
        fields[key] = np.stack(unshard(rows))
    return Evaluation(method=first.method, horizon=first.horizon, split=first.split,
                      env=first.env, info=first.info, **fields)


def _observation_settings(
    defaults: dict[str, Any], observation: str | None, features: str | None,
    history: int | None,
) -> tuple[str, str, int | None]:
    """(observation, features, history) of the run: the caller's where given, else the env's.
    A feature set named here without a history takes that set's default history unless the
    env fixes one (a history too short for the set is then a ValueError)."""
    mode = check_observation(defaults["observation"] if observation is None else observation)
    fs = check_features(defaults["features"] if features is None else features, mode)
    if history is None and (features is None or defaults["history_given"]):
        history = defaults["history"]
    return mode, fs.name, resolve_history(fs, history)


def _run_settings(
    defaults: dict[str, Any], horizon: int | None, history: int | None, max_step: float | None
) -> tuple[int, int, float]:
    """(horizon, history, max_step) of the run: the caller's value where given, else the env's,
    checked here so a bad one raises before any objective is sampled."""
    horizon = check_int("horizon", defaults["horizon"] if horizon is None else horizon, 1)
    history = check_int("history", defaults["history"] if history is None else history, 1)
    max_step = float(defaults["max_step"] if max_step is None else max_step)
    if not (math.isfinite(max_step) and max_step > 0):
        raise ValueError(f"max_step: got {max_step!r}, allowed: a finite number > 0")
    return horizon, history, max_step


def _evaluation(
    res: Rollout, name: str, seeds: torch.Tensor, *, horizon: int, split: str, env: str,
    info: dict[str, Any],
) -> Evaluation:
    """The rollout's tensors as host numpy arrays (f in float64), so the results outlive the
    device and compare across dtypes; the full training loss as ``f`` where the family has one
    (its minibatch f as ``f_minibatch``)."""

    def host(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float64)

    noisy = res.f_full is not None
    return Evaluation(
        method=name,
        f=host(res.f_full if res.f_full is not None else res.f),
        f_minibatch=host(res.f) if noisy else None,
        nonfinite=res.nonfinite.cpu().numpy(),
        extra_evals=res.extra_evals.cpu().numpy(),
        evals=res.evals.cpu().numpy(),
        seeds=seeds.numpy(),
        horizon=horizon,
        split=split,
        env=env,
        info={**info, "f": "f_full" if noisy else "f"},
    )


def _policy_step(
    policy: Any,
    kind: str,
    observer: Observer,
    max_step: float,
    obs_dtype: torch.dtype,
    d: int,
    deterministic: bool,
) -> StepFn:
    """The env's action semantics around a policy: obs → action → max_step · clip(action).

    The rollout calls the step once per iteration, all rows in lock-step, so the iteration t
    that the 2017 feature sets need is the number of calls so far."""
    calls = 0

    def step_fn(state: torch.Tensor, f: torch.Tensor, oracle: Oracle) -> torch.Tensor:
        nonlocal calls
        obs = observer(state, calls).to(obs_dtype)
        calls += 1
        if kind == "predict":
            out = policy.predict(obs.cpu().numpy(), deterministic=deterministic)
            action = out[0] if isinstance(out, tuple) else out
        else:
            action = policy(obs)
        a = torch.as_tensor(np.asarray(action) if not isinstance(action, torch.Tensor)
                            else action).to(dtype=state.dtype, device=state.device)
        if tuple(a.shape) != (state.shape[0], d):
            raise ValueError(f"method: returned actions of shape {tuple(a.shape)}, allowed: "
                             f"({state.shape[0]}, {d})")
        a = torch.where(torch.isfinite(a), a.clamp(-1.0, 1.0), a)
        return max_step * a

    return step_fn
