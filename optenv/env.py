"""The single Gymnasium environment: optimise one objective instance per episode."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from optenv.core import OptimizationCore, StateLayout
from optenv.families import ObjectiveFamily, index_problem, make_family, problem_to_numpy
from optenv.features import (
    DEFAULT_FEATURES,
    DEFAULT_OBSERVATION,
    Observer,
    make_observer,
    resolve_observation,
)
from optenv.memory import check_fits, estimate_env_bytes
from optenv.render import FrameRenderer, render_ansi
from optenv.rng import instance_keys, split_index
from optenv.validation import (
    check_choice,
    check_number,
    check_seed,
    parse_dtype,
    problem_from_user,
    x0_from_user,
)

__all__ = ["DEFAULT_DIVERGENCE_PENALTY", "DEFAULT_F_FULL", "DEFAULT_REWARD_DTYPE",
           "F_FULL_SCHEDULES", "OptimizationEnv", "check_f_full"]

DEFAULT_DIVERGENCE_PENALTY = 1e3
#: Rewards are float32 unless asked otherwise: the observations' dtype, and what clients that
#: build typed buffers from the spaces assume (TorchRL's default reward spec, SB3's buffers).
DEFAULT_REWARD_DTYPE = "float32"
_RESET_OPTIONS = ("problem", "x0")
#: When the envs compute ``info["f_full"]``, the full training loss of a family whose f is a
#: minibatch estimate (MLPClassifier; ``family.has_full_objective()``): the ``f_full``
#: argument of both envs. ``"final"`` (default): on the step that ends an episode, where an RL
#: user logs how far a run got (the vector env: terminated or truncated; the single env:
#: terminated, since Gymnasium's TimeLimit truncates outside it). ``"every_step"``: on every
#: step (and reset). Why not every step by default: on the neural-net family the full loss is
#: a forward pass over the whole TRAIN part (1 442 examples on digits, 22× the minibatch's),
#: the largest cost of a step that RL training never reads. Evaluation
#: (:func:`optenv.evaluate`, ``optenv compare``) does not go through this: it reports the full
#: loss at every iteration whatever the env's ``f_full``. A family's ``full_loss=False``
#: switches the full loss off everywhere.
F_FULL_SCHEDULES = ("final", "every_step")
DEFAULT_F_FULL = "final"


def check_f_full(value: Any) -> str:
    """``f_full``: one of :data:`F_FULL_SCHEDULES`, else ValueError naming the argument."""
    return str(check_choice("f_full", value, F_FULL_SCHEDULES))



def core_and_observer(family: ObjectiveFamily, observation: str, features: str, history: int, *,
                      num_envs: int, dtype: torch.dtype, device: torch.device
                      ) -> tuple[OptimizationCore, Observer]:
    """The batched core and the observation map of ``num_envs`` envs (the single env: 1), once
    :mod:`optenv.memory` says they fit on ``device`` (else a ValueError saying how much they
    need): the one set-up both envs share, so they cannot drift apart."""
    core = OptimizationCore(family, history)
    observer = make_observer(observation, features, core.layout)
    what = (f"one {family.name} env" if num_envs == 1 else f"{num_envs} {family.name} envs")
    where = "" if num_envs == 1 else f" on {device}"
    check_fits(estimate_env_bytes(family, core.layout, num_envs, dtype, observer.shape), device,
               f"{what} (d = {family.d}, history {history}){where}")
    return core, observer


class OptimizationEnv(gym.Env[np.ndarray, np.ndarray]):
    """Learning to optimise: each episode runs an optimiser on one random objective.

    ## Description
    An episode draws an objective f from a family (random logistic-regression data, a random
    quadratic, ...) and a random starting point x(0). The agent is the optimiser: at each
    iteration it sees the history of objective values, gradients and steps, and chooses the step
    Δx; then x(i) = x(i−1) + Δx. Li & Malik (2016, 2017) cast learning an optimiser this way.

    ## Action Space
    ``Box(-1, 1, (d,), float32)``: the step is ``max_step * action`` (per coordinate).
    Out-of-range actions are clipped (``info["action_clipped"]``); NaN/inf or wrongly shaped
    actions raise ``ValueError`` and leave the env unchanged.

    ## Observation Space
    ``observation="flat"`` (default): ``Box(-inf, inf, (obs_dim,), float32)`` with
    obs_dim = d + H + 2·H·d (H = ``history``): the state without the current iterate, laid out
    as ``observation_layout`` says (name → slice): PAST_OBJ_VAL_DELTAS (H relative changes
    (f_i − f_{i−1}) / f_{i−1}), PAST_GRADS (H·d), CUR_GRAD (d), PAST_LOC_DELTAS (H·d, the past
    steps). Histories are oldest first and zero at the start. The full state (with CUR_LOC = x
    first) is ``env.unwrapped.state``.

    ``observation="coordinatewise"``: ``Box(-inf, inf, (d, k), float32)``, one row per
    coordinate, k independent of d (so one policy shared across coordinates runs on any d); the
    columns of a row are ``coordinate_layout`` (name → column slice; ``observation_layout`` is
    the same then). ``features`` chooses them (see :mod:`optenv.features`):
    ``"li-malik-2016"`` (default), the flat observation rearranged — row j holds the shared
    PAST_OBJ_VAL_DELTAS (H), then coordinate j's PAST_GRADS (H), CUR_GRAD (1) and
    PAST_LOC_DELTAS (H), k = 3H + 1; ``"li-malik-2017"``, Li & Malik 2017's averaged stride-5
    features Φ, AVG_OBJ_CHANGES (25), AVG_GRADS_NORMALISED (26), AVG_ITERATE_CHANGE_RATIOS (25),
    k = 76, needs H >= 132; ``"li-malik-2017-psi"``, their observation features Ψ,
    OBJ_CHANGE, GRAD_NORMALISED, ITERATE_CHANGE_RATIO, k = 3, needs H >= 2. Every set is
    computed from the same state, so ``state`` and the dynamics do not change with it.

    ## Rewards
    −f(x) after the step (the papers' cost is f summed over the horizon). On divergence (f or x
    non-finite, or beyond ``STATE_LIMIT`` = 1e12 in magnitude) the reward is
    −``divergence_penalty`` instead, a finite number. The reward is a Python float (what
    Gymnasium's and SB3's checkers ask for) holding a value of ``reward_dtype``: rounded to
    float32 by default, the dtype of the observations and of TorchRL's default reward spec, so
    a client that stores it in float32 loses nothing and the vector env's float32 rewards are
    the same numbers; ``reward_dtype="float64"`` keeps the full precision of the arithmetic.
    ``terminated``/``truncated`` are Python bools.

    ## Starting State
    A problem instance and x(0) drawn from the family's ``split`` ("train" or "test", disjoint
    streams). ``reset(options={"problem": ...})`` optimises a given instance (a dict like
    ``env.unwrapped.problem``), ``reset(options={"x0": ...})`` starts from a given point.

    ## Episode End
    ``truncated`` at the horizon (``max_episode_steps``, 40 for the registered ids, through
    Gymnasium's TimeLimit). ``terminated`` only on divergence.

    A ``reset`` that raises (a bad seed or option) changes nothing in the env, but the env then
    refuses to ``step`` until a ``reset`` succeeds: wrappers outside it may have started a new
    episode already (Gymnasium's TimeLimit zeroes its step count before it calls the env's
    reset), and continuing the old episode would run it past its horizon.

    ## Arguments
    ``family``: a registered family name (``"LogisticRegression"``, ...) or an
    :class:`~optenv.families.ObjectiveFamily`; ``observation`` ("flat" default, or
    "coordinatewise"); ``features`` ("li-malik-2016" default, "li-malik-2017",
    "li-malik-2017-psi"; the 2017 sets only coordinatewise); ``history`` (H, default 25, or
    132 for "li-malik-2017"; a history too short for the feature set is a ValueError);
    ``max_step`` (default the family's); ``split``; ``dtype`` of the arithmetic ("float64"
    default; the observation is always float32); ``reward_dtype`` ("float32" default, or
    "float64"); ``divergence_penalty``; ``render_mode`` ("rgb_array", "ansi"); ``f_full``
    ("final" default, or "every_step": when ``info["f_full"]`` is computed, see
    :data:`F_FULL_SCHEDULES`); any further
    keyword goes to the family (e.g. ``dim=2``); a keyword neither takes raises
    :class:`~optenv.validation.UnknownArgumentError`, a TypeError in Python's words (clients
    such as TorchRL probe with keywords and drop those refused that way). A configuration
    whose state would not fit in memory raises ValueError saying how much it needs.

    ## Info
    numpy scalars, so their dtypes are fixed: ``f``, ``f0`` (objective now and at x(0)) and
    ``grad_norm`` in the arithmetic ``dtype``; ``t``, ``seed``, ``episode_index`` int64;
    ``diverged``, ``action_clipped`` bool; ``x`` and ``grad`` arrays [d] in ``dtype``. For a
    family whose f is a minibatch estimate (MLPClassifier), ``f_full``, the full training loss
    in ``dtype``: on every step and reset with ``f_full="every_step"``; with ``f_full="final"``
    (default) only on a step that terminates the episode — this env cannot see the horizon
    (Gymnasium's TimeLimit wrapper truncates outside it), so a run's full loss at the horizon
    needs ``"every_step"`` here; the vector env, which owns its horizon, reports it there.

    ## Seeding
    ``reset(seed=s)`` draws instance (s, episode 0); each later ``reset()`` moves to the next
    episode of the same seed. Without a seed, the first reset draws s from ``np_random``. The
    same seed gives the same problems, x(0) and trajectories; ``optenv/...`` vector envs give
    env i the instances of seed s + i.

    ## Version History
    * v0: initial release. The ``observation`` and ``features`` arguments came later without a
      version bump: their defaults give the original observation, bit for bit. Rewards became
      float32-rounded by default (``reward_dtype``), info values numpy scalars, and the
      state clamp and divergence threshold 1e12 (was 1e30), also without a bump: runs that
      stay below 1e12 are unchanged.
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 10}

    def __init__(
        self,
        family: str | ObjectiveFamily = "LogisticRegression",
        *,
        observation: str = DEFAULT_OBSERVATION,
        features: str = DEFAULT_FEATURES,
        history: int | None = None,
        max_step: float | None = None,
        split: str = "train",
        dtype: str | torch.dtype = "float64",
        reward_dtype: str | torch.dtype = DEFAULT_REWARD_DTYPE,
        divergence_penalty: float = DEFAULT_DIVERGENCE_PENALTY,
        render_mode: str | None = None,
        f_full: str = DEFAULT_F_FULL,
        **family_kwargs: Any,
    ) -> None:
        self.family = make_family(family, **family_kwargs)
        self.f_full = check_f_full(f_full)
        self.observation_mode, feature_set, history = resolve_observation(observation, features,
                                                                          history)
        self.features: str = feature_set.name
        split_index(split)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: got {render_mode!r}, allowed: None, "
                             + ", ".join(map(repr, self.metadata["render_modes"])))
        self.dtype = parse_dtype(dtype)
        self.reward_dtype = parse_dtype(reward_dtype, "reward_dtype")
        self._round_reward = torch.empty(0, dtype=self.reward_dtype).numpy().dtype.type
        self.core, self._observer = core_and_observer(
            self.family, self.observation_mode, self.features, history, num_envs=1,
            dtype=self.dtype, device=torch.device("cpu"))
        self.layout: StateLayout = self.core.layout
        self.max_step = check_number(
            "max_step", self.family.default_max_step if max_step is None else max_step
        )
        self.split = split
        self.divergence_penalty = check_number("divergence_penalty", divergence_penalty,
                                               strict=False)
        self.render_mode = render_mode
        d = self.family.d
        self.action_space = spaces.Box(-1.0, 1.0, (d,), np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, self._observer.shape, np.float32)
        self.observation_layout: dict[str, slice] = self._observer.observation_layout
        self.coordinate_layout: dict[str, slice] = self._observer.coordinate_layout
        self._seed: int | None = None
        self._episode = 0
        self._data: dict[str, torch.Tensor] | None = None
        self._state = torch.zeros(1, self.layout.state_dim, dtype=self.dtype)
        self._f = torch.zeros(1, dtype=self.dtype)
        self._f_history: list[float] = []
        self._t = 0
        self._failed_reset: str | None = None  # why the last reset raised (step refuses then)
        self._renderer = FrameRenderer(self.family)  # builds its figure on the first frame

    # ------------------------------------------------------------------ API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        try:
            out = self._reset(seed, options)
        except Exception as err:
            self._failed_reset = f"{type(err).__name__}: {err}"
            raise
        self._failed_reset = None
        return out

    def _reset(
        self, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """:meth:`reset`'s work: every argument is checked before anything changes."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(_RESET_OPTIONS))
        if unknown:
            raise ValueError(f"options: unknown key(s) {unknown}, allowed: {list(_RESET_OPTIONS)}")
        check_seed(seed)
        # np_random is state too: a bad option must not consume a draw, so the options are
        # parsed before super().reset and the unseeded first draw below.
        problem = x0_user = None
        if "problem" in options:
            problem = problem_from_user(options["problem"], self.family, 1, self.dtype,
                                        torch.device("cpu"))
        if "x0" in options:
            x0_user = x0_from_user(options["x0"], 1, self.family.d, self.dtype,
                                   torch.device("cpu"))
        super().reset(seed=seed)
        if seed is not None:
            seed_, episode = int(seed), 0
        elif self._seed is None:
            seed_, episode = int(self.np_random.integers(0, 2**62)), 0
        else:
            seed_, episode = self._seed, self._episode + 1
        keys = instance_keys([seed_], [episode], self.split)
        data, x0 = self.family.sample_keys(keys, dtype=self.dtype)
        data = data if problem is None else problem
        x0 = x0 if x0_user is None else x0_user
        start = self.core.start(data, x0)
        self._seed, self._episode = seed_, episode
        self._data, self._state, self._f = data, start.state, start.f
        self._t = 0
        self._f_history = [float(start.f[0])]
        return self._observation(), self._info(diverged=bool(start.diverged[0]), clipped=False,
                                               ended=False)

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._data is None:
            raise RuntimeError("step: call reset() before the first step")
        if self._failed_reset is not None:
            raise RuntimeError(
                f"step: the last reset() raised ({self._failed_reset}); the env is as it was "
                "before that call, but wrappers may have started a new episode (Gymnasium's "
                "TimeLimit zeroes its step count first): call reset() again before stepping")
        a = self._check_action(action)
        clipped = np.clip(a, -1.0, 1.0)
        delta = torch.as_tensor(self.max_step * clipped, dtype=self.dtype).unsqueeze(0)
        res = self.core.step(self._data, self._state, self._f, delta)
        self._state, self._f = res.state, res.f
        self._t += 1
        diverged = bool(res.diverged[0])
        f = float(res.f[0])
        self._f_history.append(f)
        reward = float(self._round_reward(-self.divergence_penalty if diverged else -f))
        # "final": the episode ends here only if it diverged (the horizon is TimeLimit's,
        # outside this env: gym.make gives the env a spec without it)
        info = self._info(diverged=diverged, clipped=bool((clipped != a).any()),
                          ended=diverged)
        return self._observation(), reward, diverged, False, info

    def render(self) -> np.ndarray | str | None:
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode to make()")
            return None
        if self._data is None:
            raise RuntimeError("render: call reset() first")
        if self.render_mode == "ansi":
            return render_ansi(self._t, float(self._f[0]), self._f_history[0],
                               float(self.core.grad_norm(self._state)[0]))
        return self._renderer.frame(self._data, self.x, self._f_history)

    # ------------------------------------------------------------------ views
    @property
    def problem(self) -> dict[str, np.ndarray]:
        """The current instance's data (numpy, no batch dimension); see the family's docs."""
        if self._data is None:
            raise RuntimeError("problem: call reset() first")
        return problem_to_numpy(index_problem(self._data, 0))

    @property
    def state(self) -> np.ndarray:
        """The full state (CUR_LOC first), in the env's dtype."""
        return self._state[0].numpy().copy()

    @property
    def x(self) -> torch.Tensor:
        """The current iterate, [d]."""
        return self._state[0, self.layout.state_slices["CUR_LOC"]]

    # ------------------------------------------------------------------ helpers
    def _check_action(self, action: Any) -> np.ndarray:
        d = self.family.d
        if isinstance(action, torch.Tensor):
            action = action.detach().cpu()  # a step is never part of the caller's graph
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"action: got {type(action).__name__}, allowed: an array of "
                             f"shape ({d},)") from err
        if a.shape != (d,):
            raise ValueError(f"action: got shape {a.shape}, allowed: shape ({d},)")
        if not np.isfinite(a).all():
            raise ValueError("action: got non-finite values (NaN/inf), allowed: finite numbers "
                             "(values outside [-1, 1] are clipped)")
        return a

    def _observation(self) -> np.ndarray:
        obs = self._observer(self._state, self._t)
        return obs[0].to(torch.float32).numpy().copy()

    def _info(self, *, diverged: bool, clipped: bool, ended: bool) -> dict[str, Any]:
        """The step's info as numpy scalars and arrays (see the class docs): a client that reads
        infos into typed buffers (TorchRL's info reader asks every value for its ``dtype``)
        gets the same dtypes on every step (``f_full`` aside: on the steps ``f_full`` names)."""
        g = self._state[0, self.layout.state_slices["CUR_GRAD"]]
        real = self._f.numpy().dtype.type
        full = None
        if self.f_full == "every_step" or ended:  # minibatch families: the full loss
            full = self.family.full_objective(self.x.unsqueeze(0), self._data)
        return {**({} if full is None else {"f_full": real(full[0])}),
            "f": real(self._f[0]),
            "f0": real(self._f_history[0]),
            "x": self.x.numpy().copy(),
            "grad": g.numpy().copy(),
            "grad_norm": real(g.norm()),
            "t": np.int64(self._t),
            "diverged": np.bool_(diverged),
            "action_clipped": np.bool_(clipped),
            "seed": np.int64(self._seed),
            "episode_index": np.int64(self._episode),
        }
