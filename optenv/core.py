"""The one batched core every optimisation rollout runs on.

State (Li & Malik's released code), for a batch of B problems with d variables and history H::

    CUR_LOC (d) | PAST_OBJ_VAL_DELTAS (H) | PAST_GRADS (H·d) | CUR_GRAD (d) | PAST_LOC_DELTAS (H·d)

dX = 2d + H + 2Hd. Histories are chronological (oldest first, newest last) and zero-padded at the
start of an episode, so one step shifts each history block left by one entry and writes the new
entry at its end; PAST_GRADS and CUR_GRAD are adjacent, so they shift as one window. The policy's
observation Φ is the state without CUR_LOC (translation invariance): a contiguous tail slice.

Every function here is pure (no in-place writes to its inputs), so the same code serves the single
env (B = 1), the vector env (which copies results into preallocated buffers), GPS sampling, BPTT
(autograd flows through it), and evaluation. Nothing here synchronises with the host. One
exception: a family whose f is a minibatch estimate keeps its minibatch counter in the problem
data, which :meth:`OptimizationCore.start` rewinds and :meth:`OptimizationCore.step` advances in
place (``family.rewind`` / ``family.advance``), so every caller that passes the same problem dict
at every step gets the instance's minibatch stream without handing anything back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch

from optenv.families.base import ObjectiveFamily

__all__ = ["CoreStep", "OptimizationCore", "StateLayout", "Transition", "advance_observation",
           "first_observation"]

#: Largest magnitude kept in the state. A diverging run (f or x overflowing) is clamped here, so
#: observations stay finite whatever the policy does; and a run whose f or x gets here counts as
#: diverged (f 1e12 is at least ten orders of magnitude above where the built-in families start).
#: Why 1e12 and not more: clients keep statistics of the float32 observations in float32, and
#: Gymnasium's NormalizeObservation (RunningMeanStd) multiplies the variance, up to the limit
#: squared, by the number of observations seen. With 1e30 (this limit before) or even 1e18 the
#: variance was inf after the first batch of diverged observations, and stayed inf; at 1e12 the
#: product stays finite for 3e14 observations.
STATE_LIMIT = 1e12
#: Floor on |f_{i-1}| in the relative objective change (f_i − f_{i−1}) / f_{i−1}.
DELTA_EPS = 1e-8


def _consecutive_slices(sizes: Mapping[str, int]) -> dict[str, slice]:
    """Blocks of the given sizes laid end to end: name → slice."""
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = slice(start, start + n)
        start += n
    return out


@dataclass(frozen=True)
class StateLayout:
    """Where each feature lives in the flat state and observation vectors."""

    d: int
    history: int

    def __post_init__(self) -> None:
        for name, value in (("d", self.d), ("history", self.history)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: got {value!r}, allowed: an int >= 1")

    @property
    def state_dim(self) -> int:
        """dX = 2d + H + 2Hd."""
        return 2 * self.d + self.history + 2 * self.history * self.d

    @property
    def obs_dim(self) -> int:
        """The observation's length: the state without CUR_LOC."""
        return self.state_dim - self.d

    @property
    def state_slices(self) -> dict[str, slice]:
        """Feature name → slice of the state vector."""
        d, h = self.d, self.history
        return _consecutive_slices({
            "CUR_LOC": d,
            "PAST_OBJ_VAL_DELTAS": h,
            "PAST_GRADS": h * d,
            "CUR_GRAD": d,
            "PAST_LOC_DELTAS": h * d,
        })

    @property
    def observation_slices(self) -> dict[str, slice]:
        """Feature name → slice of the observation vector (the state less CUR_LOC)."""
        d = self.d
        return {
            k: slice(s.start - d, s.stop - d)
            for k, s in self.state_slices.items()
            if k != "CUR_LOC"
        }

    def observation(self, state: torch.Tensor) -> torch.Tensor:
        """Φ = the state without CUR_LOC ([..., obs_dim], a view)."""
        return state[..., self.d :]

    def unpack(self, vec: torch.Tensor, *, observation: bool = False) -> dict[str, torch.Tensor]:
        """Named views of a state (or observation) batch, histories shaped [..., H, d]."""
        slices = self.observation_slices if observation else self.state_slices
        out = {}
        for name, sl in slices.items():
            v = vec[..., sl]
            if name in ("PAST_GRADS", "PAST_LOC_DELTAS"):
                v = v.reshape(*vec.shape[:-1], self.history, self.d)
            out[name] = v
        return out


    # ------------------------------------------------------------- per-coordinate view
    @property
    def coordinate_slices(self) -> dict[str, slice]:
        """Feature name → column slice of one coordinate's row in :meth:`coordinatewise`.

        Row j: the shared PAST_OBJ_VAL_DELTAS (H), then coordinate j's PAST_GRADS (H, oldest
        first), CUR_GRAD (1) and PAST_LOC_DELTAS (H): the 2016 state split by coordinate, k =
        3H + 1 columns whatever d is (Li & Malik 2017's route to a policy for any d).
        """
        h = self.history
        return _consecutive_slices(
            {"PAST_OBJ_VAL_DELTAS": h, "PAST_GRADS": h, "CUR_GRAD": 1, "PAST_LOC_DELTAS": h})

    @property
    def coordinate_width(self) -> int:
        """k, the length of one coordinate's row: 3H + 1."""
        return 3 * self.history + 1

    def coordinatewise(self, vec: torch.Tensor, *, observation: bool = False) -> torch.Tensor:
        """The state (or observation) batch as one row per coordinate: [..., d, k].

        A rearrangement of the flat vector without CUR_LOC (see :attr:`coordinate_slices`);
        every entry of the flat observation appears, the objective changes once per row.
        """
        u = self.unpack(vec, observation=observation)
        lead = vec.shape[:-1]
        shared = u["PAST_OBJ_VAL_DELTAS"].unsqueeze(-2).expand(*lead, self.d, self.history)
        return torch.cat([shared, u["PAST_GRADS"].transpose(-1, -2),
                          u["CUR_GRAD"].unsqueeze(-1), u["PAST_LOC_DELTAS"].transpose(-1, -2)],
                         dim=-1)


def _first_blocks(layout: StateLayout, g: torch.Tensor) -> list[torch.Tensor]:
    """The observation at x(0) as blocks to concatenate: zero histories, CUR_GRAD = g [B, d]."""
    h, d = layout.history, layout.d
    return [g.new_zeros(g.shape[0], h + h * d), g, g.new_zeros(g.shape[0], h * d)]


def _new_entries(f_prev: torch.Tensor, f: torch.Tensor, g: torch.Tensor, delta_x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries one step appends to the histories, sanitised: the relative change of f
    [B, 1] (|f_prev| floored at DELTA_EPS, its sign kept), the gradient at the new iterate
    [B, d] and the step that led there [B, d]. Histories are built only from these (and zeros),
    so they are finite and in range without whole-state passes."""
    mag = f_prev.abs().clamp_min(DELTA_EPS)
    denom = torch.where(f_prev < 0, -mag, mag)
    rel = ((f - f_prev) / denom).unsqueeze(-1)
    return _safe(rel), _safe(g), _safe(delta_x)


def _next_blocks(layout: StateLayout, obs: torch.Tensor, f_prev: torch.Tensor, f: torch.Tensor,
                 g: torch.Tensor, delta_x: torch.Tensor) -> list[torch.Tensor]:
    """The observation one step later as blocks to concatenate (so :meth:`OptimizationCore.step`
    prepends the iterate with one ``cat``): each history shifted left by one entry, with
    :func:`_new_entries` written at the end. ``obs`` [B, obs_dim] comes from this module's
    functions, so its histories are finite and in range already."""
    d = layout.d
    sl = layout.observation_slices
    rel, g_new, dx_new = _new_entries(f_prev, f, g, delta_x)
    deltas = obs[:, sl["PAST_OBJ_VAL_DELTAS"]]
    grads = obs[:, sl["PAST_GRADS"].start : sl["CUR_GRAD"].stop]  # PAST_GRADS ++ CUR_GRAD
    steps = obs[:, sl["PAST_LOC_DELTAS"]]
    return [deltas[:, 1:], rel, grads[:, d:], g_new, steps[:, d:], dx_new]


def first_observation(layout: StateLayout, g: torch.Tensor) -> torch.Tensor:
    """The observation (the state without CUR_LOC) at x(0), [B, obs_dim], from the gradient
    g [B, d] there: what :meth:`OptimizationCore.start` builds, for a caller that keeps the
    iterate itself (:class:`optenv.optim.LearnedOptimizer` keeps it in the model)."""
    return _safe(torch.cat(_first_blocks(layout, g), dim=-1))


def advance_observation(layout: StateLayout, obs: torch.Tensor, f_prev: torch.Tensor,
                        f: torch.Tensor, g: torch.Tensor, delta_x: torch.Tensor) -> torch.Tensor:
    """The observation [B, obs_dim] after the step ``delta_x`` [B, d] that moved f from
    ``f_prev`` [B] to ``f`` [B] and the gradient to ``g`` [B, d]: the same arithmetic as
    :meth:`OptimizationCore.step`, for a caller that keeps the iterate itself. ``obs`` must come
    from :func:`first_observation` or this function."""
    return torch.cat(_next_blocks(layout, obs, f_prev, f, g, delta_x), dim=-1)


def _safe(t: torch.Tensor) -> torch.Tensor:
    """Non-finite entries replaced (NaN by 0, ±inf by ±STATE_LIMIT), all clamped to the limit."""
    return torch.nan_to_num(t, nan=0.0, posinf=STATE_LIMIT, neginf=-STATE_LIMIT).clamp_(
        -STATE_LIMIT, STATE_LIMIT)


def _diverged(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Non-finite, or past the clamp (the clamp would otherwise hide a runaway iterate)."""
    return ~((f.abs() < STATE_LIMIT) & (x.abs() < STATE_LIMIT).all(-1))


class Transition(NamedTuple):
    """One step of a batch as the entries it adds, for a caller that keeps the histories
    itself (the vector env's rings, :mod:`optenv.history`) instead of a concatenated state."""

    x: torch.Tensor  # [B, d] the new iterate, sanitised (CUR_LOC)
    rel: torch.Tensor  # [B, 1] the new PAST_OBJ_VAL_DELTAS entry
    grad: torch.Tensor  # [B, d] the new CUR_GRAD (the old one joins PAST_GRADS)
    delta_x: torch.Tensor  # [B, d] the new PAST_LOC_DELTAS entry
    f: torch.Tensor  # [B] f at the new iterate (may be non-finite on divergence)
    diverged: torch.Tensor  # [B] bool


class CoreStep(NamedTuple):
    """What one transition of a batch produces."""

    state: torch.Tensor  # [B, dX], finite
    f: torch.Tensor  # [B], f at the new iterate (may be non-finite on divergence)
    diverged: torch.Tensor  # [B] bool: f or the iterate is non-finite or beyond STATE_LIMIT


class OptimizationCore:
    """Starts and advances batches of optimisation runs of one objective family."""

    def __init__(self, family: ObjectiveFamily, history: int = 25) -> None:
        self.family = family
        self.layout = StateLayout(family.d, history)

    def start(self, data: Mapping[str, torch.Tensor], x0: torch.Tensor) -> CoreStep:
        """The state at x(0): CUR_LOC = x0, CUR_GRAD = ∇f(x0), all histories zero (and
        ``data`` rewound to iteration 0)."""
        self.family.rewind(data)
        f0, g0 = self.family.value_and_grad(x0, data)
        state = torch.cat([x0, *_first_blocks(self.layout, g0)], dim=-1)
        return self._finish(state, f0, x0)

    def step(
        self,
        data: Mapping[str, torch.Tensor],
        state: torch.Tensor,
        f_prev: torch.Tensor,
        delta_x: torch.Tensor,
    ) -> CoreStep:
        """x(i) = x(i−1) + Δx, with f, ∇f and every history updated.

        ``state`` must come from :meth:`start` or :meth:`step` of a core of this layout: its
        histories are taken as finite and within ±STATE_LIMIT, and only the new entries are
        sanitised."""
        lay = self.layout
        x, f, g = self._evaluate(data, state[:, lay.state_slices["CUR_LOC"]], delta_x)
        blocks = _next_blocks(lay, lay.observation(state), f_prev, f, g, delta_x)
        return CoreStep(torch.cat([_safe(x), *blocks], dim=-1), f, _diverged(f, x))

    def transition(self, data: Mapping[str, torch.Tensor], x_prev: torch.Tensor,
                   f_prev: torch.Tensor, delta_x: torch.Tensor) -> Transition:
        """:meth:`step` as the entries it appends (no state built): from the current iterate
        ``x_prev`` [B, d] (CUR_LOC of a state of this core) and f there, the same arithmetic,
        bit for bit."""
        x, f, g = self._evaluate(data, x_prev, delta_x)
        rel, g_new, dx_new = _new_entries(f_prev, f, g, delta_x)
        return Transition(_safe(x), rel, g_new, dx_new, f, _diverged(f, x))

    def _evaluate(self, data: Mapping[str, torch.Tensor], x_prev: torch.Tensor,
                  delta_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x = x_prev + Δx, and f, ∇f there (the minibatch stream advanced first)."""
        x = x_prev + delta_x
        self.family.advance(data)
        f, g = self.family.value_and_grad(x, data)
        return x, f, g

    @staticmethod
    def _finish(state: torch.Tensor, f: torch.Tensor, x: torch.Tensor) -> CoreStep:
        return CoreStep(_safe(state), f, _diverged(f, x))

    def grad_norm(self, state: torch.Tensor) -> torch.Tensor:
        """‖∇f‖ at the current iterate of each run, [B]."""
        return state[:, self.layout.state_slices["CUR_GRAD"]].norm(dim=-1)
