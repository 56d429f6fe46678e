"""The torch-batched vector env: N optimisation runs stepped as one batch on one device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from optenv.core import CoreStep, StateLayout
from optenv.cuda_graphs import capture, warm_up
from optenv.env import (
    DEFAULT_DIVERGENCE_PENALTY,
    DEFAULT_F_FULL,
    DEFAULT_REWARD_DTYPE,
    check_f_full,
    core_and_observer,
)
from optenv.families import ObjectiveFamily, index_problem, make_family
from optenv.features import (
    DEFAULT_FEATURES,
    DEFAULT_OBSERVATION,
    resolve_observation,
)
from optenv.history import HistoryRing
from optenv.render import FrameRenderer, render_ansi
from optenv.rng import instance_keys, split_index
from optenv.validation import (
    check_int,
    check_number,
    check_seed,
    parse_device,
    parse_dtype,
    problem_from_user,
    x0_from_user,
)

__all__ = ["OptimizationVectorEnv", "numpy_vector_env"]

_RESET_OPTIONS = ("reset_mask", "problem", "x0")
#: How many envs ``render`` draws (the first ones).
RENDERED_ENVS = 4


def _bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] mask viewed to broadcast against a [N, ...] tensor."""
    return mask.view(mask.shape[0], *([1] * (like.dim() - 1)))


def _parse_autoreset_mode(value: str | AutoresetMode) -> AutoresetMode:
    """``autoreset_mode`` as the enum (Gymnasium accepts its members and their string values)."""
    try:
        return AutoresetMode(value)
    except ValueError as err:
        allowed = ", ".join(repr(m.value) for m in AutoresetMode)
        raise ValueError(f"autoreset_mode: got {value!r}, allowed: {allowed}") from err


def _check_render_mode(value: str | None, allowed: Sequence[str]) -> str | None:
    """``render_mode``, checked against the env's metadata (None: no rendering)."""
    if value is not None and value not in allowed:
        raise ValueError(f"render_mode: got {value!r}, allowed: None, "
                         + ", ".join(map(repr, allowed)))
    return value


def _parse_seeds(seed: Any, n: int) -> list[int] | None:
    """``reset``'s ``seed`` as N per-env seeds: None; an int s (env i gets s + i); or N ints.
    ValueError naming the seed and saying what a seed may be otherwise."""
    allowed = f"None, an int in [0, 2**63) or a sequence of {n} such ints"
    if seed is None:
        return None
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        check_seed(seed)
        if int(seed) + n - 1 >= 2**63:
            raise ValueError(f"seed: got {seed!r}, allowed: {allowed} (env i gets seed + i, "
                             "which must stay below 2**63)")
        return [int(seed) + i for i in range(n)]
    if isinstance(seed, str | bytes) or not isinstance(seed, Sequence | np.ndarray
                                                       | torch.Tensor):
        raise ValueError(f"seed: got {seed!r}, allowed: {allowed}")
    seeds = seed.tolist() if isinstance(seed, np.ndarray | torch.Tensor) else list(seed)
    if len(seeds) != n:
        raise ValueError(f"seed: got {len(seeds)} seeds, allowed: {allowed}")
    for i, s in enumerate(seeds):
        ok = isinstance(s, int | np.integer) and not isinstance(s, bool) and 0 <= s < 2**63
        if not ok:
            raise ValueError(f"seed[{i}]: got {s!r}, allowed: {allowed}")
    return [int(s) for s in seeds]


def _check_cuda_graph(flag: bool, device: torch.device) -> bool:
    """``cuda_graph``: a CUDA graph exists only on a CUDA device, so asking for one elsewhere is
    an error rather than a silent eager run."""
    if flag and device.type != "cuda":
        raise ValueError(f"cuda_graph: got True with device {str(device)!r}, allowed: "
                         "True only on a CUDA device")
    return bool(flag)


class OptimizationVectorEnv(VectorEnv):
    """N copies of :class:`~optenv.env.OptimizationEnv` computed as one torch batch.

    Same problems, spaces, rewards and seeding as the single env (env i after ``reset(seed=s)``
    runs exactly the instances of a single env reset with seed s + i, and agrees with it step for
    step in float64), but observations, rewards and flags are torch tensors on ``device``.
    :func:`numpy_vector_env` wraps one for numpy in and out.

    Observations are [N, obs_dim] (``observation="flat"``) or [N, d, k]
    (``observation="coordinatewise"``, rows as the single env documents, for any ``features``),
    computed by the single env's observation map from the same state, in every autoreset mode.

    Rewards are [N] tensors of ``reward_dtype`` (float32 unless asked for "float64", as in the
    single env), ``terminated``/``truncated`` bool, the infos below in the arithmetic
    ``dtype`` (``t`` int64, flags bool). Actions are detached: the step is not differentiable
    (differentiate through :class:`~optenv.core.OptimizationCore`, as BPTT does).

    Arguments beyond the single env's: ``num_envs``; ``device`` ("cpu", "cuda", ...);
    ``max_episode_steps`` (the horizon; truncation is computed here, batched); ``autoreset_mode``
    (NEXT_STEP default, SAME_STEP with ``infos["final_obs"]``/``infos["_final_obs"]``, or DISABLED
    with ``reset(options={"reset_mask": mask})``); ``check_actions``; ``copy`` (default True:
    ``step``/``reset`` return copies; False returns the live buffers, overwritten by the next
    step, as Gymnasium's ``copy=False``); ``cuda_graph`` (CUDA only: the first step runs eagerly,
    the second captures the step's tensor work — core step, clipping, flags, observation — as a
    CUDA graph, and later steps replay it; the autoresets stay outside the graph; a failed
    capture warns and steps eagerly; ``graph_captured`` says which). ``reset(seed=...)`` takes
    None, an int s (env i gets s + i) or one int per env. ``render`` draws the first four envs'
    current episodes from a history of fixed size (``max_episode_steps`` + 1 values each).

    ``step`` has no per-env Python loop, and buffers are updated in place. On accelerators
    resets are masked selects over freshly drawn instances (the draw is counter-based, see
    :mod:`optenv.rng`); the one host read per step is whether any env resets: drawing N instances
    costs more than the step itself and is needed on one step in H, so it is skipped on the
    others (which is also why the draw is not inside the CUDA graph: a graph cannot branch). On
    CPU, where reading a mask costs nothing, only the envs that do reset draw new instances.
    ``check_actions=True`` (default) rejects NaN/inf actions with ValueError, which reads the
    actions back to the host; pass False to skip that read: non-finite action entries then
    become 0 and are flagged in ``infos["invalid_action"]``.

    ``infos`` of every step: ``f`` (objective at the new iterate), ``grad_norm``, ``t`` (steps
    in the episode), ``action_clipped``, ``invalid_action``; each a [N] tensor. For families
    whose f is a minibatch estimate (MLPClassifier), ``f_full``, the full training loss, as
    ``f_full=`` schedules it (:data:`optenv.env.F_FULL_SCHEDULES`): ``"final"`` (default) on
    the step an env's episode ends — ``infos["f_full"]`` [N], NaN for the others, with
    ``infos["_f_full"]`` saying which; in SAME_STEP mode ``infos["final_info"]["f_full"]``
    instead, for the ended envs — computed for those envs only; ``"every_step"``: every env on
    every step and reset (and SAME_STEP's ``final_info`` too).

    The states live in rings (:mod:`optenv.history`): a step writes its new entries, O(N·d),
    and the observation is read from the rings in order; ``state`` reads them into its buffer
    at each access. Memory: the rings hold N·((2 + 2H)·d + H) numbers in ``dtype``, the observation
    N·obs_dim float32 (coordinatewise: N·d·k, and an in-order float64 state for the feature
    map); pass a smaller ``history`` for large d.
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 10,
                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        family: str | ObjectiveFamily = "LogisticRegression",
        num_envs: int = 1,
        *,
        observation: str = DEFAULT_OBSERVATION,
        features: str = DEFAULT_FEATURES,
        history: int | None = None,
        max_step: float | None = None,
        split: str = "train",
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float64",
        reward_dtype: str | torch.dtype = DEFAULT_REWARD_DTYPE,
        max_episode_steps: int = 40,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        divergence_penalty: float = DEFAULT_DIVERGENCE_PENALTY,
        check_actions: bool = True,
        copy: bool = True,
        render_mode: str | None = None,
        cuda_graph: bool = False,
        f_full: str = DEFAULT_F_FULL,
        **family_kwargs: Any,
    ) -> None:
        # Store, then allocate (the shape of SB3's and Gymnasium's vector envs): validate and
        # store every argument first, so a bad one raises before anything is allocated; then
        # allocate the buffers that step/reset update in place; then build the spaces.
        self.family = make_family(family, **family_kwargs)
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.observation_mode, feature_set, history = resolve_observation(observation, features,
                                                                          history)
        self.features: str = feature_set.name
        self.max_episode_steps = check_int("max_episode_steps", max_episode_steps, 1)
        split_index(split)
        self.autoreset_mode = _parse_autoreset_mode(autoreset_mode)
        self.render_mode = _check_render_mode(render_mode, self.metadata["render_modes"])
        self.device = parse_device(device)
        self.cuda_graph = _check_cuda_graph(cuda_graph, self.device)
        self.dtype = parse_dtype(dtype)
        self.reward_dtype = parse_dtype(reward_dtype, "reward_dtype")
        self.max_step = check_number(
            "max_step", self.family.default_max_step if max_step is None else max_step
        )
        self.divergence_penalty = check_number("divergence_penalty", divergence_penalty,
                                               strict=False)
        self.check_actions = bool(check_actions)
        self.f_full = check_f_full(f_full)
        self._has_full = self.family.has_full_objective()
        self.copy = bool(copy)
        self.split = split
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        # How autoresets draw new instances: by index (CPU, where reading the mask is free) or
        # by masked select over a full draw (accelerators; see _restart).
        self._index_resets = self.device.type == "cpu"
        self._graph: Any = None  # torch.cuda.CUDAGraph once captured
        self._graph_state = "warm-up"  # then "capture", then "replay" (or "eager" on failure)
        self._was_reset = False

        # the single env's core and observation map: one set-up for both envs
        self.core, self._observer = core_and_observer(
            self.family, self.observation_mode, self.features, history,
            num_envs=self.num_envs, dtype=self.dtype, device=self.device)
        self.layout: StateLayout = self.core.layout
        self.observation_layout = self._observer.observation_layout
        self.coordinate_layout = self._observer.coordinate_layout
        self._allocate_buffers()
        self._build_spaces()

    def _allocate_buffers(self) -> None:
        """Preallocate every tensor step/reset write, once: they are updated in place (no
        allocation per step), which is what lets a CUDA graph capture a step — a graph replays
        fixed addresses — and what ``copy=False`` hands out as live buffers."""
        n, d = self.num_envs, self.family.d
        dev, dt = self.device, self.dtype
        self._seeds = torch.zeros(n, dtype=torch.int64, device=dev)
        self._episodes = torch.zeros(n, dtype=torch.int64, device=dev)
        self._data = {
            k: torch.zeros(n, *shape, dtype=dt, device=dev)
            for k, shape in self.family.problem_shapes().items()
        }
        # the states as rings (optenv.history): a step writes its new entries, not N·H·d
        # numbers; a CUDA graph needs the ring's order on the device
        self._ring = HistoryRing(self.layout, n, dtype=dt, device=dev,
                                 device_indexed=self.cuda_graph)
        # the in-order state the coordinatewise observation maps read (flat: none until
        # ``state`` is read; the float32 observation is read from the rings directly)
        self._ordered = (None if self._observer.mode == "flat" else
                         torch.zeros(n, self.layout.state_dim, dtype=dt, device=dev))
        self._f = torch.zeros(n, dtype=dt, device=dev)
        self._f0 = torch.zeros(n, dtype=dt, device=dev)
        self._t = torch.zeros(n, dtype=torch.int64, device=dev)
        self._obs = torch.zeros(n, *self._observer.shape, dtype=torch.float32, device=dev)
        # copy=True without a CUDA graph: each observation is written into a new tensor, which
        # step/reset hand out as the copy (a flat one is N·obs_dim floats, 37 MB at N = 64 on
        # the neural-net family: cloning a live buffer was a second pass over it)
        self._fresh_obs = self.copy and not self.cuda_graph
        self._reward = torch.zeros(n, dtype=self.reward_dtype, device=dev)
        self._terminated = torch.zeros(n, dtype=torch.bool, device=dev)
        self._truncated = torch.zeros(n, dtype=torch.bool, device=dev)
        self._needs_reset = torch.zeros(n, dtype=torch.bool, device=dev)
        self._resetting = torch.zeros(n, dtype=torch.bool, device=dev)  # NEXT_STEP: restarts
        self._clipped = torch.zeros(n, dtype=torch.bool, device=dev)
        self._invalid = torch.zeros(n, dtype=torch.bool, device=dev)
        # SAME_STEP's final observation and info, written before the autoreset
        self._final_obs = torch.zeros_like(self._obs)
        self._final_done = torch.zeros(n, dtype=torch.bool, device=dev)
        self._final_f = torch.zeros_like(self._f)
        self._final_t = torch.zeros_like(self._t)
        self._final_grad_norm = torch.zeros_like(self._f)
        # the full training loss where an episode ended (f_full="final", and SAME_STEP's
        # final_info), NaN elsewhere
        self._final_full = torch.full_like(self._f, float("nan"))
        # the graph's input: actions as float64 (exact for every float the caller may pass)
        self._graph_actions = (torch.zeros(n, d, dtype=torch.float64, device=dev)
                               if self.cuda_graph else None)
        # rgb_array: the objective values of the drawn envs' current episodes, f at t in slot
        # t % width (a fixed size however long the run; an episode is max_episode_steps + 1
        # values long unless DISABLED mode steps on past the horizon), and one figure each
        shown = min(n, RENDERED_ENVS) if self.render_mode == "rgb_array" else 0
        self._render_f = torch.zeros(shown, self.max_episode_steps + 1, dtype=dt, device=dev)
        self._renderers = [FrameRenderer(self.family) for _ in range(shown)]

    def _build_spaces(self) -> None:
        """The single env's spaces (float32 Box observations without bounds, Box actions in
        [-1, 1]^d) and their batched versions, as Gymnasium's ``batch_space`` builds them."""
        self.single_action_space = spaces.Box(-1.0, 1.0, (self.family.d,), np.float32)
        self.single_observation_space = spaces.Box(
            -np.inf, np.inf, self._observer.shape, np.float32
        )
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    # ------------------------------------------------------------------ reset
    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        options = dict(options or {})
        unknown = sorted(set(options) - set(_RESET_OPTIONS))
        if unknown:
            raise ValueError(f"options: unknown key(s) {unknown}, allowed: {list(_RESET_OPTIONS)}")
        n, dev = self.num_envs, self.device
        # Parse every argument first: a bad one raises before anything changes (np_random too).
        mask = self._parse_reset_mask(options.get("reset_mask"))
        seeds = _parse_seeds(seed, n)
        problem = x0 = None
        if "problem" in options:
            problem = problem_from_user(options["problem"], self.family, n, self.dtype, dev)
        if "x0" in options:
            x0 = x0_from_user(options["x0"], n, self.family.d, self.dtype, dev)
        super().reset(seed=None if seeds is None else seeds[0])

        if seeds is not None:
            new_seeds = torch.tensor(seeds, dtype=torch.int64, device=dev)
            new_episodes = torch.zeros(n, dtype=torch.int64, device=dev)
        elif not self._was_reset:
            base = int(self.np_random.integers(0, 2**62))
            new_seeds = base + torch.arange(n, dtype=torch.int64, device=dev)
            new_episodes = torch.zeros(n, dtype=torch.int64, device=dev)
        else:
            new_seeds, new_episodes = self._seeds, self._episodes + 1
        if mask is None:
            mask = torch.ones(n, dtype=torch.bool, device=dev)
        self._seeds.copy_(torch.where(mask, new_seeds, self._seeds))
        self._episodes.copy_(torch.where(mask, new_episodes, self._episodes))
        self._restart(mask, problem=problem, x0=x0)
        self._was_reset = True
        self._record_render_f()
        return self._out_obs(), self._step_infos(torch.zeros_like(mask),
                                                 torch.zeros_like(mask))

    def _parse_reset_mask(self, value: Any) -> torch.Tensor | None:
        if value is None:
            return None
        if self.autoreset_mode is not AutoresetMode.DISABLED and not self._was_reset:
            raise ValueError("options['reset_mask']: the first reset must reset every env")
        m = torch.as_tensor(value, device=self.device)
        if m.dtype != torch.bool or tuple(m.shape) != (self.num_envs,):
            raise ValueError(f"options['reset_mask']: got {m.dtype} of shape {tuple(m.shape)}, "
                             f"allowed: a bool array of shape ({self.num_envs},)")
        return m

    def _restart(
        self,
        mask: torch.Tensor,
        *,
        problem: dict[str, torch.Tensor] | None = None,
        x0: torch.Tensor | None = None,
        keep_outcome: bool = False,
    ) -> None:
        """Draw the instances (seed, episode) of the envs in ``mask`` and start them
        (``keep_outcome``: leave the step's reward, terminated and truncated as they are)."""
        if self._index_resets and problem is None and x0 is None:
            idx = mask.nonzero().squeeze(-1)
            if idx.numel() == 0:
                return
            keys = instance_keys(self._seeds[idx], self._episodes[idx], self.split)
            data, x0_new = self.family.sample_keys(keys, dtype=self.dtype)
            start = self.core.start(data, x0_new)
            for k, v in data.items():
                self._data[k].index_copy_(0, idx, v)
            self._write_start(start, idx=idx, keep_outcome=keep_outcome)
            return
        if problem is None and x0 is None and not bool(mask.any()):
            # One read of the mask skips drawing N instances on the steps where no env resets
            # (all but one step in H when the envs run in lock-step, as after a full reset).
            return
        keys = instance_keys(self._seeds, self._episodes, self.split)
        data, x0_drawn = self.family.sample_keys(keys, dtype=self.dtype)
        data = problem if problem is not None else data
        start = self.core.start(data, x0 if x0 is not None else x0_drawn)
        for k, v in data.items():
            self._data[k].copy_(torch.where(_bcast(mask, v), v, self._data[k]))
        self._write_start(start, mask=mask, keep_outcome=keep_outcome)

    def _write_start(
        self,
        start: CoreStep,
        *,
        idx: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        keep_outcome: bool = False,
    ) -> None:
        """Write fresh episode starts into the buffers, by index (CPU) or by mask; with
        ``keep_outcome`` the reward, terminated and truncated buffers keep the step's values
        (SAME_STEP autoresets return the ended step's outcome with the new episode's obs)."""
        zeros_b = torch.zeros_like(start.diverged)
        self._ring.load(start.state, idx=idx, mask=mask)
        fields = [
            (self._f, start.f),
            (self._f0, start.f),
            (self._t, torch.zeros_like(start.f, dtype=torch.int64)),
            (self._needs_reset, zeros_b),
        ]
        if not keep_outcome:
            fields += [(self._reward, torch.zeros_like(start.f, dtype=self.reward_dtype)),
                       (self._terminated, zeros_b),
                       (self._truncated, zeros_b)]
        for buf, new in fields:
            if idx is not None:
                buf.index_copy_(0, idx, new)
            else:
                assert mask is not None
                buf.copy_(torch.where(_bcast(mask, buf), new, buf))
        self._observe()

    def _observe(self) -> None:
        """Write the observations of the current states into ``_obs``: flat ones read from
        the rings in order and cast to float32 in one pass; coordinatewise ones through the
        observation map from the in-order state."""
        if self._fresh_obs:  # copy=True, eager: this tensor is the copy step/reset hand out
            self._obs = torch.empty_like(self._obs)
        if self._observer.mode == "flat":
            self._ring.read(self._obs, with_loc=False)
        else:
            assert self._ordered is not None
            self._obs.copy_(self._observer(self._ring.read(self._ordered), self._t))

    # ------------------------------------------------------------------ step
    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        if not self._was_reset:
            raise RuntimeError("step: call reset() before the first step")
        a = self._check_actions(actions)
        if self._graph_actions is not None:
            self._graph_actions.copy_(a)
            self._graph_step(self._graph_actions)
        else:
            self._advance(a)
        self._record_render_f()
        infos = self._step_infos(self._clipped.clone(), self._invalid.clone())
        if self.autoreset_mode is AutoresetMode.SAME_STEP:
            done = self._final_done.clone()
            infos["final_obs"] = self._final_obs.clone()
            infos["_final_obs"] = done
            infos["final_info"] = {
                "f": self._final_f.clone(), "grad_norm": self._final_grad_norm.clone(),
                "t": self._final_t.clone(), "action_clipped": infos["action_clipped"],
                "invalid_action": infos["invalid_action"],
                **({"f_full": self._final_full.clone()} if self._has_full else {})}
            infos["_final_info"] = done.clone()
        elif self._has_full and self.f_full == "final":
            infos["f_full"] = self._final_full.clone()
            infos["_f_full"] = self._terminated | self._truncated
        return (self._out_obs(), self._out(self._reward), self._out(self._terminated),
                self._out(self._truncated), infos)

    @property
    def graph_captured(self) -> bool:
        """Whether steps replay a captured CUDA graph (``cuda_graph=True``, after the first)."""
        return self._graph is not None

    def _graph_step(self, actions: torch.Tensor) -> None:
        """One step through the CUDA graph: the first runs eagerly on a side stream (warm-up),
        the second captures the step and replays it, later ones replay. A capture that fails
        warns once and the env steps eagerly from then on. The autoresets run after the
        replay, outside the graph (see :meth:`_reset_stage`)."""
        if self._graph_state == "warm-up":
            warm_up(lambda: self._advance_core(actions), self.device)
            self._graph_state = "capture"
            self._final_full_stage()
            self._reset_stage()
            return
        if self._graph_state == "capture":
            self._graph = capture(lambda: self._advance_core(actions),
                                  "the vector-env step", "stepping eagerly", self.device)
            self._graph_state = "eager" if self._graph is None else "replay"
        if self._graph_state == "replay":
            self._graph.replay()
            self._final_full_stage()
            self._reset_stage()
        else:
            self._advance(actions)

    def _advance(self, actions: torch.Tensor) -> None:
        """One eager step: the tensor work, the full loss where episodes ended, then the
        autoresets."""
        self._advance_core(actions)
        self._final_full_stage()
        self._reset_stage()

    def _advance_core(self, actions: torch.Tensor) -> None:
        """The step's tensor work up to the autoresets, written into the buffers (what a CUDA
        graph captures: no host reads, no allocation that outlives it)."""
        a = actions
        invalid = ~torch.isfinite(a).all(-1)
        a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        # Clip in the caller's precision, then cast: a finite 1e300 clips to 1, not to inf.
        clipped_a = a.clamp(-1.0, 1.0)
        clipped = (clipped_a != a).any(-1)
        step = self.max_step * clipped_a.to(self.dtype)
        res = self.core.transition(self._data, self._ring.x, self._f, step)
        terminated = res.diverged
        t = self._t + 1
        truncated = (t >= self.max_episode_steps) & ~terminated
        reward = torch.where(terminated, torch.full_like(res.f, -self.divergence_penalty), -res.f)
        self._ring.push(res)
        self._f.copy_(res.f)
        self._t.copy_(t)
        self._reward.copy_(reward)
        self._terminated.copy_(terminated)
        self._truncated.copy_(truncated)
        self._clipped.copy_(clipped)
        self._invalid.copy_(invalid)
        self._observe()

        mode = self.autoreset_mode
        if mode is AutoresetMode.NEXT_STEP:
            # Envs that ended on the previous step start their next episode now (action ignored).
            self._resetting.copy_(self._needs_reset)
            self._needs_reset.copy_(terminated | truncated)
        elif mode is AutoresetMode.SAME_STEP:
            self._final_done.copy_(terminated | truncated)
            self._final_obs.copy_(self._obs)
            self._final_f.copy_(self._f)
            self._final_t.copy_(self._t)
            self._final_grad_norm.copy_(self._ring.grad_norm())

    def _final_full_stage(self) -> None:
        """The full training loss of the envs whose episode ended on this step, before the
        autoresets replace their iterates (``f_full="final"``, and SAME_STEP's final_info in
        either schedule; NaN for the others). Only those envs' losses are computed: by index
        on the CPU; on accelerators over the batch, masked, and only on steps where an episode
        ended (one read of the mask, outside any CUDA graph)."""
        if not self._has_full or (self.f_full == "every_step"
                                  and self.autoreset_mode is not AutoresetMode.SAME_STEP):
            return
        # (NEXT_STEP: not the envs that restart on this step; their step was a placeholder)
        ended = (self._terminated | self._truncated) & ~self._resetting
        self._final_full.fill_(float("nan"))
        if self._index_resets:
            idx = ended.nonzero().squeeze(-1)
            if idx.numel():
                full = self.family.full_objective(self.x[idx], index_problem(self._data, idx))
                self._final_full.index_copy_(0, idx, full)
        elif bool(ended.any()):
            full = self.family.full_objective(self.x, self._data)
            self._final_full.copy_(torch.where(ended, full, self._final_full))

    def _reset_stage(self) -> None:
        """The step's autoresets, after :meth:`_advance_core` (eager even with a CUDA graph:
        whether any env resets decides whether N instances are drawn)."""
        mode = self.autoreset_mode
        if mode is AutoresetMode.NEXT_STEP:
            self._autoreset(self._resetting)
        elif mode is AutoresetMode.SAME_STEP:
            # the step's own reward and flags survive the restart of the envs that ended
            self._autoreset(self._final_done, keep_outcome=True)

    def _out(self, buf: torch.Tensor) -> torch.Tensor:
        """What step/reset hand out: a copy of a buffer, or the live buffer if copy=False."""
        return buf.clone() if self.copy else buf

    def _out_obs(self) -> torch.Tensor:
        """The observations step/reset hand out: ``_out``'s rule, where a fresh observation
        tensor (see ``_fresh_obs``) is already the copy: the env never writes into it again."""
        return self._obs if self._fresh_obs else self._out(self._obs)

    def _autoreset(self, mask: torch.Tensor, *, keep_outcome: bool = False) -> None:
        """Start the next episode (same seed, episode + 1) of the envs in ``mask``."""
        self._episodes.add_(mask.to(torch.int64))
        self._restart(mask, keep_outcome=keep_outcome)

    def _record_render_f(self) -> None:
        """Write the drawn envs' f into their slot t % width of the render history."""
        shown = self._render_f.shape[0]
        if shown:
            rows = torch.arange(shown, device=self.device)
            cols = self._t[:shown] % self._render_f.shape[1]
            self._render_f[rows, cols] = self._f[:shown]

    def _check_actions(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The actions as a tensor on the env's device, checked, and detached: the step is not
        differentiable (its buffers are updated in place; differentiate through
        :class:`~optenv.core.OptimizationCore` instead, as BPTT does), and an action that
        carried its graph into the buffers would keep every past step's graph alive."""
        shape = (self.num_envs, self.family.d)
        if isinstance(actions, torch.Tensor):
            actions = actions.detach()
        else:
            try:
                actions = torch.as_tensor(np.asarray(actions, dtype=np.float64))
            except (TypeError, ValueError) as err:
                raise ValueError(f"actions: got {type(actions).__name__}, allowed: an array "
                                 f"of shape {shape}") from err
        if tuple(actions.shape) != shape:
            raise ValueError(f"actions: got shape {tuple(actions.shape)}, allowed: {shape}")
        a = actions.to(device=self.device)
        if not a.is_floating_point():
            a = a.to(self.dtype)
        if self.check_actions and not bool(torch.isfinite(a).all()):
            raise ValueError("actions: got non-finite values (NaN/inf), allowed: finite numbers "
                             "(values outside [-1, 1] are clipped)")
        return a

    def _step_infos(self, clipped: torch.Tensor, invalid: torch.Tensor) -> dict[str, Any]:
        full = None
        if self._has_full and self.f_full == "every_step":  # the full loss of every env
            full = self.family.full_objective(self.x, self._data)
        return {**({} if full is None else {"f_full": full}),
            "f": self._f.clone(),
            "grad_norm": self._ring.grad_norm(),
            "t": self._t.clone(),
            "action_clipped": clipped,
            "invalid_action": invalid,
        }

    # ------------------------------------------------------------------ views
    @property
    def state(self) -> torch.Tensor:
        """The full states [N, dX] (CUR_LOC first), in the env's dtype: read in order from the
        rings the env keeps them in (:mod:`optenv.history`) into one buffer (allocated at the
        first read in the flat mode), the same tensor on every read, refreshed by each read."""
        if self._ordered is None:
            self._ordered = torch.empty(self.num_envs, self.layout.state_dim, dtype=self.dtype,
                                        device=self.device)
        return self._ring.read(self._ordered)

    @property
    def problem(self) -> dict[str, torch.Tensor]:
        """The current instances' data, each [N, ...] (live buffers)."""
        return self._data

    @property
    def x(self) -> torch.Tensor:
        """The current iterates [N, d] (a live buffer)."""
        return self._ring.x

    def render(self) -> tuple[Any, ...] | None:
        """Frames of the first (at most 4) envs, in the single env's format."""
        if self.render_mode is None or not self._was_reset:
            return None
        shown = min(self.num_envs, RENDERED_ENVS)
        if self.render_mode == "ansi":
            gn = self._ring.grad_norm().cpu()
            return tuple(render_ansi(int(self._t[i]), float(self._f[i]), float(self._f0[i]),
                                     float(gn[i])) for i in range(shown))
        hist = self._render_f.cpu()
        width = hist.shape[1]
        frames = []
        for i, renderer in enumerate(self._renderers):
            t = int(self._t[i])
            steps = range(max(t + 1 - width, 0), t + 1)  # the last `width` values, in order
            fs = hist[i, [s % width for s in steps]].tolist()
            data = {k: v[i : i + 1].cpu() for k, v in self._data.items()}
            frames.append(renderer.frame(data, self.x[i].cpu(), fs))
        return tuple(frames)


def numpy_vector_env(env: VectorEnv) -> VectorEnv:
    """``env`` (an :class:`OptimizationVectorEnv`, possibly wrapped) with numpy in and out.

    Gymnasium's ``ArrayConversion`` wrapper from torch to numpy, on the env's device.
    """
    import array_api_compat.numpy as xnp
    import array_api_compat.torch as xtorch
    from gymnasium.wrappers.vector import ArrayConversion

    device = getattr(env.unwrapped, "device", None)
    return ArrayConversion(env, env_xp=xtorch, target_xp=xnp, env_device=device)
