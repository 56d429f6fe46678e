"""Observation modes and the named per-coordinate feature sets, in one place.

Two **observation modes** (``observation=`` of the envs and of :func:`optenv.evaluate.evaluate`):

* ``"flat"`` (default): Li & Malik 2016's Φ, the state without CUR_LOC, one vector [obs_dim]
  whose length depends on d. Only the 2016 feature set is offered flat.
* ``"coordinatewise"``: one row per coordinate, [d, k], with k independent of d, so that one
  policy with parameters shared across coordinates runs on any d (Li & Malik 2017, §3.5).

Three **feature sets** (``features=``, :data:`FEATURE_SETS`), each a pure function of the 2016
state (its observation part, so translation-invariant) and of the iteration t of the episode,
so the core, GPS sampling and BPTT keep one state and derive any set from it:

* ``"li-malik-2016"`` (default): the 2016 state split by coordinate
  (:meth:`~optenv.core.StateLayout.coordinatewise`): row j = the shared H objective changes,
  then coordinate j's H past gradients, current gradient and H past steps; k = 3H + 1.
* ``"li-malik-2017"``: the state features Φ of Li & Malik 2017 (arXiv:1703.00441, §3.6), built
  on averages over the last min(i+1, 3) iterates (see :func:`li_malik_2017_rows`); k = 76,
  ``history`` >= 132 (default 132).
* ``"li-malik-2017-psi"``: the same paper's shorter observation features Ψ, the ones its policy
  read (see :func:`li_malik_2017_psi_rows`); k = 3, ``history`` >= 2.

Why flat + 2017 is refused rather than offered: the 2017 features are defined per coordinate
(and the objective columns repeat in every row); a flat version would be a third layout that no
paper used, and anything that wants a vector (SB3's MlpPolicy) flattens the [d, k] Box itself.

Why t is an input: the paper's averages use min(i+1, 3) iterates near the start and its stride-5
look-backs are clamped at t mod 5, neither of which the zero-padded 2016 state records. The envs
and evaluation know t (the vector env keeps it in a device buffer, so no host read is needed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from optenv.core import STATE_LIMIT, StateLayout
from optenv.validation import check_int

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_HISTORY",
    "DEFAULT_OBSERVATION",
    "FEATURE_SETS",
    "OBSERVATION_MODES",
    "FeatureSet",
    "Observer",
    "check_features",
    "check_observation",
    "li_malik_2017_psi_rows",
    "li_malik_2017_rows",
    "make_observer",
    "observer_for",
    "resolve_history",
    "resolve_observation",
]

#: The observation modes the envs offer.
OBSERVATION_MODES: tuple[str, ...] = ("flat", "coordinatewise")
DEFAULT_OBSERVATION = "flat"
DEFAULT_FEATURES = "li-malik-2016"
#: H of the 2016 features (Li & Malik's released code).
DEFAULT_HISTORY = 25

#: rows(layout, obs [..., obs_dim], t [...] int) -> [..., d, k]
RowsFn = Callable[[StateLayout, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureSet:
    """One named per-coordinate feature set: its columns, history needs and row map.

    Attributes:
        name: the ``features=`` value.
        summary: one line for error messages and docs.
        min_history: the shortest ``history`` from which the rows can be derived.
        default_history: the ``history`` an env uses when none is given.
        flat: whether ``observation="flat"`` offers this set (only the 2016 one).
        column_sizes: history → {column name: number of columns}, in row order.
        rows_fn: the map from observations and t to rows (see :data:`RowsFn`).
        rows_into: whether ``rows_fn`` also takes ``out`` and computes the rows in it.
    """

    name: str
    summary: str
    min_history: int
    default_history: int
    flat: bool
    column_sizes: Callable[[int], dict[str, int]]
    rows_fn: RowsFn
    rows_into: bool = False

    def columns(self, history: int) -> dict[str, slice]:
        """Column name → slice of one coordinate's row, for this ``history``."""
        out, start = {}, 0
        for name, n in self.column_sizes(history).items():
            out[name] = slice(start, start + n)
            start += n
        return out

    def width(self, history: int) -> int:
        """k, the length of one coordinate's row (independent of d)."""
        return sum(self.column_sizes(history).values())

    def rows(self, layout: StateLayout, obs: torch.Tensor, t: Any,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """The rows [..., d, k] of observations ``obs`` [..., obs_dim] at iterations ``t``
        (an int, or an int tensor broadcastable to ``obs.shape[:-1]``); written into ``out``
        (same shape and dtype) and returned, if given: in place where the set computes in
        place (``rows_into``), else copied there."""
        t = torch.as_tensor(t, dtype=torch.int64, device=obs.device)
        if out is None:
            return self.rows_fn(layout, obs, t)
        if self.rows_into:
            return self.rows_fn(layout, obs, t, out)  # type: ignore[call-arg]
        return out.copy_(self.rows_fn(layout, obs, t))


# ------------------------------------------------------------------------------ 2016
def _rows_2016(layout: StateLayout, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return layout.coordinatewise(obs, observation=True)


def _columns_2016(history: int) -> dict[str, int]:
    return {"PAST_OBJ_VAL_DELTAS": history, "PAST_GRADS": history, "CUR_GRAD": 1,
            "PAST_LOC_DELTAS": history}


# ------------------------------------------------------------------------------ 2017: Φ
#: Paper's index sets: objective changes i = 0..24, gradients i = 0..25, iterate ratios
#: i = 0..24, all at a stride of 5 iterations.
N_OBJ_CHANGES, N_GRADS, N_ITERATE_RATIOS, STRIDE = 25, 26, 25, 5
#: Added to the current change of the (averaged) iterate in the ratio's denominator (the paper's
#: Ψ constant; see li_malik_2017_rows on Φ's).
ITERATE_EPS = 0.1
#: The iterates an average spans: min(i+1, 3).
AVERAGE_SPAN = 3
#: The farthest look-back of Φ is the previous iterate change of i = 24, x̄ at t − 5·26; its
#: average reaches two more iterates back: H >= 5·26 + 2 = 132.
PHI_MIN_HISTORY = STRIDE * (N_ITERATE_RATIOS + 1) + AVERAGE_SPAN - 1


def _columns_2017(history: int) -> dict[str, int]:
    return {"AVG_OBJ_CHANGES": N_OBJ_CHANGES, "AVG_GRADS_NORMALISED": N_GRADS,
            "AVG_ITERATE_CHANGE_RATIOS": N_ITERATE_RATIOS}


def _finite(v: torch.Tensor) -> torch.Tensor:
    """NaN → 0, ±inf → ±STATE_LIMIT, clamped: the state's rule, so rows stay finite."""
    return torch.nan_to_num(v, nan=0.0, posinf=STATE_LIMIT, neginf=-STATE_LIMIT).clamp(
        -STATE_LIMIT, STATE_LIMIT)


def _flat_batch(obs: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """obs as [B, obs_dim] and t as [B] (t broadcast over obs's leading dimensions)."""
    lead = obs.shape[:-1]
    return obs.reshape(-1, obs.shape[-1]), t.expand(lead).reshape(-1)


def _window(
    layout: StateLayout, obs: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The iterations t−H .. t that the state describes, position p ↔ iteration t − H + p:

    valid [B, H+1] (iteration >= 0; earlier positions are the state's zero padding),
    f [B, H+1] = f / f at position 0 (cumulative products of 1 + the relative changes),
    g [B, H+1, d] (PAST_GRADS then CUR_GRAD), x [B, H+1, d] = x − x at position 0 (cumulative
    sums of the past steps). f and x are known only up to a common factor and an offset, which
    every feature derived from them cancels."""
    u = layout.unpack(obs, observation=True)
    b, h = obs.shape[0], layout.history
    g = torch.cat([u["PAST_GRADS"], u["CUR_GRAD"].unsqueeze(1)], dim=1)
    steps = u["PAST_LOC_DELTAS"]
    x = torch.cat([steps.new_zeros(b, 1, layout.d), steps.cumsum(1)], dim=1)
    rel = u["PAST_OBJ_VAL_DELTAS"]
    f = torch.cat([rel.new_ones(b, 1), (1.0 + rel).cumprod(1)], dim=1)
    positions = torch.arange(h + 1, device=obs.device)
    valid = (t.unsqueeze(1) - h + positions) >= 0
    return valid, f, g, x


def _shift(v: torch.Tensor, k: int) -> torch.Tensor:
    """v moved k positions later along dim 1, zeros in front."""
    return torch.cat([torch.zeros_like(v[:, :k]), v[:, :-k]], dim=1)


def _recent_average(v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """At each position, the mean of v over the last min(i+1, 3) valid positions (iterates
    max(i−2, 0) .. i). Correct at positions >= 2 (earlier ones would need iterates outside
    the window unless those are padding; PHI_MIN_HISTORY keeps every read at p >= 2)."""
    w = valid.to(v.dtype).view(*valid.shape, *([1] * (v.dim() - 2)))
    wv = v * w
    total = wv + _shift(wv, 1) + _shift(wv, 2)
    count = w + _shift(w, 1) + _shift(w, 2)
    return total / count.clamp_min(1.0)


def _at(v: torch.Tensor, lag: torch.Tensor, history: int) -> torch.Tensor:
    """v at iterations t − lag: v [B, H+1(, d)], lag [B, n] → [B, n(, d)]. Lags are clamped
    into the window (entries read that way are masked out by the caller)."""
    pos = history - lag.clamp(0, history)
    if v.dim() == 2:
        return v.gather(1, pos)
    return v.gather(1, pos.unsqueeze(-1).expand(-1, -1, v.shape[-1]))


def li_malik_2017_rows(layout: StateLayout, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Li & Malik 2017's state features Φ, one row per coordinate: [..., d, 76].

    Definitions (arXiv:1703.00441, §3.6; all operations elementwise, i.e. per coordinate).
    Averages over the last min(i+1, 3) iterates::

        x̄(i) = mean x(j),  ḡ(i) = mean ∇f̂(x(j)),  f̄(i) = mean f̂(x(j)),  j = max(i−2, 0) .. i

    Columns (each block oldest first, newest last — the 2016 layout's convention; the paper's
    i = 0 is the newest):

    * ``AVG_OBJ_CHANGES`` (25, shared by all rows), i = 24 .. 0: the relative change of the
      averaged objective over 5 iterations, (f̄(t−5i) − f̄(t−5(i+1))) / f̄(t−5(i+1)).
    * ``AVG_GRADS_NORMALISED`` (26), i = 25 .. 0: the averaged gradient normalised by a
      previous averaged gradient's magnitude, ḡ(t−5i) / (|ḡ(max(t−5(i+1), t mod 5))| + 1).
    * ``AVG_ITERATE_CHANGE_RATIOS`` (25), i = 24 .. 0: the previous change of the averaged
      iterate relative to the current one,
      |x̄(max(t−5(i+1), t mod 5 + 5)) − x̄(max(t−5(i+2), t mod 5))| / (|x̄(t−5i) − x̄(t−5(i+1))|
      + 0.1). The max() clamps, as the paper's gradient block does, fall back to the earliest
      stride-5 change (then the ratio compares that change with itself). The 0.1 is the
      paper's Ψ constant: the copy of §3.6 available here was garbled at this formula, so the
      clamp offsets and the constant follow the paper's Ψ and gradient block, not a legible
      Φ formula.

    A feature whose iteration index would be negative is 0 (the paper's rule).

    How they follow from the 2016 state (no second state): the state at iteration t holds the
    gradients of iterations t−H .. t, the steps Δx(j) = x(j) − x(j−1) and the relative changes
    r(j) = (f(j) − f(j−1)) / f(j−1) of iterations t−H+1 .. t. So x(j) − x(t−H) is a cumulative
    sum of steps and f(j) / f(t−H) a cumulative product of 1 + r(j): differences of x̄ and
    ratios of f̄ (all the features use) are exact. Each average reaches 2 iterates back and
    the farthest look-back is x̄(t − 130), hence ``history`` >= 132. Limits: r is the 2016
    guarded change (|f(j−1)| floored at 1e-8), so the objective block is exact while
    |f| >= 1e-8 over the window; non-finite results (a zero average objective, overflow on
    divergence) are mapped as the state maps them (NaN → 0, ±inf → ±1e12).
    """
    lead = obs.shape[:-1]
    h, d = layout.history, layout.d
    obs2, tt = _flat_batch(obs, t)
    valid, f, g, x = _window(layout, obs2, tt)
    fa, ga, xa = (_recent_average(v, valid) for v in (f, g, x))
    t1 = tt.unsqueeze(1)  # [B, 1]
    aligned = t1 - torch.remainder(t1, STRIDE)  # t − t mod 5
    i_g = torch.arange(N_GRADS, device=obs.device).unsqueeze(0)  # [1, 26]
    i_o = i_g[:, :N_OBJ_CHANGES]  # [1, 25]; N_ITERATE_RATIOS == N_OBJ_CHANGES

    # objective: defined when t − 5(i+1) >= 0
    has_o = (t1 - STRIDE * (i_o + 1)) >= 0
    now, before = _at(fa, STRIDE * i_o.expand_as(has_o), h), _at(
        fa, STRIDE * (i_o + 1).expand_as(has_o), h)
    before = torch.where(has_o, before, torch.ones_like(before))
    obj = torch.where(has_o, (now - before) / before, torch.zeros_like(now))

    # gradients: defined when t − 5i >= 0; normaliser at max(t − 5(i+1), t mod 5)
    has_g = (t1 - STRIDE * i_g) >= 0
    num = _at(ga, STRIDE * i_g.expand_as(has_g), h)
    den = _at(ga, torch.minimum(STRIDE * (i_g + 1), aligned), h)
    grads = torch.where(has_g.unsqueeze(-1), num / (den.abs() + 1.0), torch.zeros_like(num))

    # iterate ratios: defined when t − 5(i+1) >= 0 (the current change exists)
    cur = (_at(xa, STRIDE * i_o.expand_as(has_o), h)
           - _at(xa, STRIDE * (i_o + 1).expand_as(has_o), h)).abs()
    prev = (_at(xa, torch.minimum(STRIDE * (i_o + 1), aligned - STRIDE), h)
            - _at(xa, torch.minimum(STRIDE * (i_o + 2), aligned), h)).abs()
    ratios = torch.where(has_o.unsqueeze(-1), prev / (cur + ITERATE_EPS),
                         torch.zeros_like(prev))

    rows = torch.cat([obj.flip(1).unsqueeze(1).expand(-1, d, -1),
                      grads.flip(1).transpose(1, 2), ratios.flip(1).transpose(1, 2)], dim=-1)
    return _finite(rows).reshape(*lead, d, N_OBJ_CHANGES + N_GRADS + N_ITERATE_RATIOS)


# ------------------------------------------------------------------------------ 2017: Ψ
def _columns_2017_psi(history: int) -> dict[str, int]:
    return {"OBJ_CHANGE": 1, "GRAD_NORMALISED": 1, "ITERATE_CHANGE_RATIO": 1}


def li_malik_2017_psi_rows(layout: StateLayout, obs: torch.Tensor, t: torch.Tensor,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Li & Malik 2017's observation features Ψ (what their policy read), per coordinate:
    [..., d, 3].

    Columns (arXiv:1703.00441, §3.6; no averaging, elementwise):

    * ``OBJ_CHANGE`` (shared): (f̂(x(t)) − f̂(x(t−1))) / f̂(x(t−1)) — the 2016 state's newest
      relative change, as it is;
    * ``GRAD_NORMALISED``: ∇f̂(x(t)) / (|∇f̂(x(max(t−1, 0)))| + 1) — the current gradient over
      the previous one's magnitude (its own at t = 0);
    * ``ITERATE_CHANGE_RATIO``: |(x(max(t−1, 1)) − x(max(t−2, 0))) / (|x(t) − x(t−1)| + 0.1)| —
      the previous step relative to the current one (the current one itself at t = 1).

    Undefined at t = 0 (no step yet): the objective change and the step ratio are 0. Needs the
    last two steps of the state: ``history`` >= 2.

    ``out`` ([..., d, 3], the observation's dtype): the rows are computed in it, column by
    column, with no temporary of the rows' size (what :class:`optenv.optim.LearnedOptimizer`
    does at 10^6 coordinates, where each fresh buffer costs page faults). Without it every op
    allocates, and the result is differentiable (GPS's linearisation goes through it). The
    same ops either way, so the same numbers.
    """
    u = layout.unpack(obs, observation=True)
    t = t.expand(obs.shape[:-1]).unsqueeze(-1)  # [..., 1], broadcasts over coordinates
    d = layout.d
    o_obj, o_grad, o_ratio = (None, None, None) if out is None else out.unbind(-1)
    zero = obs.new_zeros(())
    started, two_steps = t >= 1, t >= 2
    g_now, g_prev = u["CUR_GRAD"], u["PAST_GRADS"][..., -1, :]
    grad = torch.where(started, g_prev, g_now, out=o_grad)
    grad = torch.div(g_now, torch.add(torch.abs(grad, out=o_grad), 1.0, out=o_grad),
                     out=o_grad)
    steps = u["PAST_LOC_DELTAS"]
    cur, prev = steps[..., -1, :], steps[..., -2, :]
    scale = torch.add(torch.abs(cur, out=o_obj), ITERATE_EPS, out=o_obj)  # o_obj as scratch
    ratio = torch.where(two_steps, prev, cur, out=o_ratio)
    ratio = torch.abs(torch.div(ratio, scale, out=o_ratio), out=o_ratio)
    ratio = torch.where(started, ratio, zero, out=o_ratio)
    rel = u["PAST_OBJ_VAL_DELTAS"][..., -1:]
    if out is None:
        obj = torch.where(started, rel, zero).expand(*rel.shape[:-1], d)
        return _finite(torch.stack([obj, grad, ratio], dim=-1))
    o_obj.copy_(torch.where(started, rel, zero).expand_as(o_obj))  # type: ignore[union-attr]
    return torch.nan_to_num_(out, nan=0.0, posinf=STATE_LIMIT, neginf=-STATE_LIMIT).clamp_(
        -STATE_LIMIT, STATE_LIMIT)


# ------------------------------------------------------------------------------ registry
#: The named feature sets (``features=``), in the order errors list them.
FEATURE_SETS: dict[str, FeatureSet] = {
    fs.name: fs for fs in (
        FeatureSet("li-malik-2016", "the 2016 state split by coordinate (k = 3H + 1)",
                   1, DEFAULT_HISTORY, True, _columns_2016, _rows_2016),
        FeatureSet("li-malik-2017", "Li & Malik 2017's averaged, stride-5 state features Φ "
                   "(k = 76)", PHI_MIN_HISTORY, PHI_MIN_HISTORY, False, _columns_2017,
                   li_malik_2017_rows),
        FeatureSet("li-malik-2017-psi", "Li & Malik 2017's observation features Ψ (k = 3)",
                   2, DEFAULT_HISTORY, False, _columns_2017_psi, li_malik_2017_psi_rows,
                   rows_into=True),
    )
}


def resolve_observation(observation: Any, features: Any,
                        history: Any) -> tuple[str, FeatureSet, int]:
    """An env's (observation mode, feature set, history), each checked against the one before:
    the mode, then a feature set that mode offers, then a history long enough for the set
    (None: the set's default). ValueError naming the first bad one."""
    mode = check_observation(observation)
    fs = check_features(features, mode)
    return mode, fs, resolve_history(fs, history)


def check_observation(observation: Any) -> str:
    """``observation``, one of :data:`OBSERVATION_MODES`; ValueError otherwise."""
    if not isinstance(observation, str) or observation not in OBSERVATION_MODES:
        raise ValueError(f"observation: got {observation!r}, allowed: "
                         + ", ".join(map(repr, OBSERVATION_MODES)))
    return observation


def check_features(features: Any, observation: str = "coordinatewise") -> FeatureSet:
    """The :class:`FeatureSet` named ``features``, checked against the observation mode."""
    if not isinstance(features, str) or features not in FEATURE_SETS:
        raise ValueError(f"features: got {features!r}, allowed: "
                         + ", ".join(map(repr, FEATURE_SETS)))
    fs = FEATURE_SETS[features]
    if observation == "flat" and not fs.flat:
        flat = ", ".join(repr(n) for n, s in FEATURE_SETS.items() if s.flat)
        raise ValueError(f"features: got {features!r} with observation='flat', allowed: {flat} "
                         "(the 2017 features are per coordinate: pass "
                         "observation='coordinatewise')")
    return fs


def resolve_history(fs: FeatureSet, history: Any) -> int:
    """``history``, or the feature set's default if None; ValueError if too short for it."""
    if history is None:
        return fs.default_history
    check_int("history", history, 1)
    if history < fs.min_history:
        raise ValueError(f"history: got {history!r}, allowed: an int >= {fs.min_history} for "
                         f"features={fs.name!r} ({fs.summary} needs {fs.min_history} past "
                         "iterations)")
    return int(history)


@dataclass(frozen=True)
class Observer:
    """What an env emits from its states: the mode, the feature set, the shape and layouts.

    Both envs and :func:`optenv.evaluate.evaluate` call it, so there is one observation map.
    """

    mode: str
    features: FeatureSet
    layout: StateLayout

    @property
    def shape(self) -> tuple[int, ...]:
        """(obs_dim,) flat, (d, k) coordinatewise."""
        if self.mode == "flat":
            return (self.layout.obs_dim,)
        return (self.layout.d, self.features.width(self.layout.history))

    @property
    def coordinate_layout(self) -> dict[str, slice]:
        """Column name → slice of one coordinate's row (of this feature set)."""
        return self.features.columns(self.layout.history)

    @property
    def observation_layout(self) -> dict[str, slice]:
        """Feature name → slice along the observation's last axis: of the flat vector, or of a
        row (then the same as :attr:`coordinate_layout`)."""
        if self.mode == "flat":
            return self.layout.observation_slices
        return self.coordinate_layout

    def __call__(self, state: torch.Tensor, t: Any) -> torch.Tensor:
        """The observations of full states [B, dX] at iterations ``t`` ([B] or an int), in the
        state's dtype: [B, obs_dim] or [B, d, k]."""
        obs = self.layout.observation(state)
        if self.mode == "flat":
            return obs
        return self.features.rows(self.layout, obs, t)


def make_observer(observation: Any, features: Any, layout: StateLayout) -> Observer:
    """An :class:`Observer`, every argument checked (history against the feature set too)."""
    mode = check_observation(observation)
    fs = check_features(features, mode)
    resolve_history(fs, layout.history)
    return Observer(mode, fs, layout)


def observer_for(context: Mapping[str, Any], what: str, *, flat_only: bool = False) -> Observer:
    """The :class:`Observer` of the env a saved optimiser is loaded for (``optenv compare``'s
    loader context: ``family``, ``history``, ``observation``, ``features``), so a loader can
    check the observations its policy reads before the evaluation starts. With ``flat_only``
    (a policy of the flat observation Φ) an env in another mode is a ValueError naming
    ``what`` (e.g. ``"gps:runs/x"``)."""
    family = context["family"]
    mode = context.get("observation") or DEFAULT_OBSERVATION
    observer = make_observer(mode, context.get("features") or DEFAULT_FEATURES,
                             StateLayout(int(family.d), int(context["history"])))
    if flat_only and observer.mode != "flat":
        raise ValueError(f"--methods: {what} acts on the flat observation, the env emits "
                         f"{observer.mode!r} rows of {observer.features.name!r}; allowed: a flat "
                         "env (drop observation= from --env-kwargs)")
    return observer
