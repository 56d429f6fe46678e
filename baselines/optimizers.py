"""Hand-designed optimisers, batched over B objectives: the reference learned optimisers face.

Every optimiser here is an *update rule* holding per-row state (momentum buffers, Adam's moments,
L-BFGS's memory) for a batch of B independent objectives, with two faces:

(a) **A policy in the env** (:class:`OptimizerPolicy`): methods that need nothing but the history
    (GD, momentum, Nesterov, Adam, AdaGrad, RMSprop) read the current gradient from the
    observation (``CUR_GRAD`` through the env's documented ``observation_layout``) and return
    ``action = step / max_step``. The env clips actions to [-1, 1], so the policy reproduces the
    method exactly only while its steps stay within ``max_step`` (tests build envs with a large
    one). The rule's state is internal; it is reset explicitly (``reset(mask)``) or, by default,
    automatically for rows whose observation is an episode start (all histories zero), which is
    what a vector env's autoreset produces.

(b) **A direct batched run** (:func:`run_optimizer`) on a family's batch through the shared
    :class:`~optenv.core.OptimizationCore` (via :func:`optenv.rollout.rollout`): the iterate and
    state update is the core's, never re-written here. Line-search methods (nonlinear CG,
    L-BFGS) evaluate f and ∇f at trial points through a counting oracle; evaluations beyond one
    per iteration are reported as ``extra_evals``.

The update formulas of GD, momentum, Nesterov, Adam, AdaGrad and RMSprop are torch.optim's
(``SGD``, ``SGD(momentum, nesterov=True)``, ``Adam``, ``Adagrad``, ``RMSprop``; no weight decay),
so trajectories match torch.optim in float64 (tests check this through the env).

Hyper-parameters may be Python floats or tensors of shape [B] (one value per row): grid search
(:mod:`baselines.tuning`) runs a whole grid as one batch that way.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from optenv.core import StateLayout
from optenv.families import ObjectiveFamily
from optenv.rollout import Rollout, rollout
from optenv.validation import check_choice, check_number

__all__ = [
    "CG",
    "GD",
    "LBFGS",
    "OPTIMIZERS",
    "Adagrad",
    "Adam",
    "CGFixed",
    "HandOptimizer",
    "LBFGSFixed",
    "Momentum",
    "Nesterov",
    "OptimizerPolicy",
    "RMSprop",
    "make_optimizer",
    "make_policy",
    "run_optimizer",
    "wolfe_line_search",
]

Hyper = float | torch.Tensor
#: ``oracle(x [B, d], active [B] bool) -> (f [B], ∇f [B, d])``; counts an evaluation per active row.
Oracle = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _col(value: Hyper, like: torch.Tensor) -> Hyper:
    """A hyper-parameter broadcastable against [B, d] (tensors [B] become [B, 1])."""
    if isinstance(value, torch.Tensor):
        v = value.to(dtype=like.dtype, device=like.device)
        return v.reshape(-1, 1) if v.dim() == 1 else v
    return value


def _row(value: Hyper, like: torch.Tensor) -> Hyper:
    """A hyper-parameter broadcastable against [B]."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype=like.dtype, device=like.device).reshape(-1)
    return value


class HandOptimizer(ABC):
    """A batched update rule with per-row state; see the module docstring.

    Subclasses set ``name``, ``defaults`` (hyper-parameter → default value), ``default_grid``
    (hyper-parameter → values for :mod:`baselines.tuning`), ``needs_oracle`` (True for line-search
    methods, which cannot act from an observation alone), ``batchable`` (whether every
    hyper-parameter may be a per-row tensor) and ``batch_invariant`` (whether a row's numbers
    are bit-for-bit the same whatever the batch around it: False where a torch kernel's result
    depends on the batch's size, so that ``optenv compare`` under torchrun runs the method
    whole on one rank instead of sharing its objectives).

    ``propose(x, f, g, oracle)`` returns the step Δx [B, d] for the current iterates; rows whose f
    or ∇f is non-finite get a zero step. State is allocated lazily at the first call (zeros mean
    "fresh", so ``reset(mask)`` just zeroes the rows of ``mask``).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}
    default_grid: ClassVar[dict[str, tuple[float, ...]]] = {}
    needs_oracle: ClassVar[bool] = False
    batchable: ClassVar[bool] = True
    #: bit-for-bit the same per-row results on any batch size (see the class docstring).
    batch_invariant: ClassVar[bool] = True
    #: hyper-parameters that must be > 0 (the rest must be >= 0; ``_check_extra`` adds more).
    positive: ClassVar[tuple[str, ...]] = ("lr",)
    #: Hyper-parameters that must be one number even where the others may be per-row tensors
    #: (a count that shapes the state, e.g. a memory size or a restart period).
    scalar_only: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **hyper: Any) -> None:
        unknown = sorted(set(hyper) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameter(s) {unknown}, allowed: "
                             f"{sorted(self.defaults) or 'none'}")
        self.hyper: dict[str, Hyper] = {**self.defaults, **hyper}
        for key, value in self.hyper.items():
            self._check(key, value)
        self._state: dict[str, torch.Tensor] = {}

    def _check(self, key: str, value: Hyper) -> None:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if isinstance(value, torch.Tensor) and (not self.batchable or key in self.scalar_only):
            raise ValueError(f"{self.name}.{key}: got a tensor, allowed: a number")
        if isinstance(arr, bool) or not isinstance(arr, int | float | np.ndarray | np.number):
            raise ValueError(f"{self.name}.{key}: got {value!r}, allowed: a number")
        a = np.asarray(arr, dtype=np.float64)
        low_ok = (a > 0) if key in self.positive else (a >= 0)
        if not (np.isfinite(a).all() and low_ok.all() and self._check_extra(key, a)):
            rel = "> 0" if key in self.positive else ">= 0"
            raise ValueError(f"{self.name}.{key}: got {value!r}, allowed: a finite number "
                             f"{rel}{self._allowed_extra(key)}")

    def _check_extra(self, key: str, value: np.ndarray) -> bool:
        """Further range checks (e.g. momentum < 1)."""
        return True

    def _allowed_extra(self, key: str) -> str:
        return ""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ state
    def reset(self, mask: torch.Tensor | np.ndarray | None = None) -> None:
        """Forget the state of every row (``mask=None``) or of the rows where ``mask`` is True."""
        if mask is None or not self._state:
            self._state = {}
            return
        m = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if m.shape[0] != next(iter(self._state.values())).shape[0]:
            self._state = {}
            return
        for key, value in self._state.items():
            mm = m.to(value.device).view(-1, *([1] * (value.dim() - 1)))
            self._state[key] = torch.where(mm, torch.zeros_like(value), value)

    def _ensure_state(self, g: torch.Tensor) -> None:
        first = next(iter(self._state.values()), None)
        if first is None or first.shape[0] != g.shape[0] or first.device != g.device \
                or (first.dtype.is_floating_point and first.dtype != g.dtype):
            self._state = self._init_state(g)

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fresh (all-zero) state for a batch shaped like ``g``."""
        return {}

    # ------------------------------------------------------------------ stepping
    def propose(
        self, x: torch.Tensor, f: torch.Tensor, g: torch.Tensor, oracle: Oracle | None = None
    ) -> torch.Tensor:
        """The step Δx [B, d] at iterates ``x`` with values ``f`` and gradients ``g``."""
        ok = torch.isfinite(f) & torch.isfinite(g).all(-1)
        g = torch.where(ok.unsqueeze(-1), g, torch.zeros_like(g))
        self._ensure_state(g)
        return torch.where(ok.unsqueeze(-1), self.update(g), torch.zeros_like(g))

    @abstractmethod
    def update(self, g: torch.Tensor) -> torch.Tensor:
        """Advance the state with gradient g [B, d] and return the step (first-order rules)."""


# ---------------------------------------------------------------------- first-order rules
class GD(HandOptimizer):
    """Gradient descent, ``torch.optim.SGD(lr)``: Δx = −lr·g."""

    name = "gd"
    defaults = {"lr": 0.1}
    default_grid = {"lr": tuple(2.0**k for k in range(-10, 5))}

    def update(self, g: torch.Tensor) -> torch.Tensor:
        return -_col(self.hyper["lr"], g) * g


class Momentum(HandOptimizer):
    """Heavy-ball momentum, ``torch.optim.SGD(lr, momentum)``: b = μb + g, Δx = −lr·b.

    torch initialises b = g at the first step; μ·0 + g = g exactly, so a zero buffer does too.
    """

    name = "momentum"
    defaults = {"lr": 0.1, "momentum": 0.9}
    default_grid = {"lr": tuple(2.0**k for k in range(-10, 5)),
                    "momentum": (0.5, 0.7, 0.9, 0.95, 0.99)}
    nesterov: ClassVar[bool] = False

    def _check_extra(self, key: str, value: np.ndarray) -> bool:
        return key != "momentum" or bool((value < 1).all())

    def _allowed_extra(self, key: str) -> str:
        return " and < 1" if key == "momentum" else ""

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"buf": torch.zeros_like(g)}

    def update(self, g: torch.Tensor) -> torch.Tensor:
        mu, lr = _col(self.hyper["momentum"], g), _col(self.hyper["lr"], g)
        buf = self._state["buf"] * mu + g
        self._state["buf"] = buf
        return -lr * (g + mu * buf) if self.nesterov else -lr * buf


class Nesterov(Momentum):
    """Nesterov momentum as ``torch.optim.SGD(lr, momentum, nesterov=True)``: Δx = −lr(g + μb)."""

    name = "nesterov"
    nesterov = True


class Adam(HandOptimizer):
    """``torch.optim.Adam(lr, betas, eps)`` (no weight decay, no AMSGrad)."""

    name = "adam"
    defaults = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    default_grid = {"lr": tuple(2.0**k for k in range(-10, 3)), "beta1": (0.5, 0.9)}
    positive = ("lr", "eps")
    #: the bias corrections ``beta ** t`` over a [B, 1] tensor of steps (kept: the exact
    #: torch.optim.Adam arithmetic is pinned by a test) round differently in the CPU kernel's
    #: vectorised body and its scalar tail, so a row's last bit depends on the batch's size
    #: (measured: bc2 at t=32 differs; f up to 7e-16 apart, 20 objectives in one batch vs 13 + 7).
    batch_invariant = False

    def _check_extra(self, key: str, value: np.ndarray) -> bool:
        return key not in ("beta1", "beta2") or bool((value < 1).all())

    def _allowed_extra(self, key: str) -> str:
        return " and < 1" if key in ("beta1", "beta2") else ""

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"m": torch.zeros_like(g), "v": torch.zeros_like(g),
                "t": torch.zeros(g.shape[0], 1, dtype=g.dtype, device=g.device)}

    def update(self, g: torch.Tensor) -> torch.Tensor:
        h = {k: _col(v, g) for k, v in self.hyper.items()}
        st = self._state
        st["t"] = t = st["t"] + 1
        b1, b2 = h["beta1"], h["beta2"]
        st["m"] = m = torch.lerp(st["m"], g, 1 - b1 if isinstance(b1, float)
                                 else (1 - b1).expand_as(g))
        st["v"] = v = st["v"] * b2 + (1 - b2) * g * g
        bc1 = 1 - torch.as_tensor(b1, dtype=g.dtype, device=g.device) ** t
        bc2 = 1 - torch.as_tensor(b2, dtype=g.dtype, device=g.device) ** t
        denom = v.sqrt() / bc2.sqrt() + h["eps"]
        return -(h["lr"] / bc1) * m / denom


class Adagrad(HandOptimizer):
    """``torch.optim.Adagrad(lr, eps)`` (no lr decay, zero initial accumulator)."""

    name = "adagrad"
    defaults = {"lr": 0.1, "eps": 1e-10}
    default_grid = {"lr": tuple(2.0**k for k in range(-8, 5))}
    positive = ("lr", "eps")

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": torch.zeros_like(g)}

    def update(self, g: torch.Tensor) -> torch.Tensor:
        self._state["sum"] = s = self._state["sum"] + g * g
        return -_col(self.hyper["lr"], g) * g / (s.sqrt() + _col(self.hyper["eps"], g))


class RMSprop(HandOptimizer):
    """``torch.optim.RMSprop(lr, alpha, eps, momentum, centered)`` (no weight decay).

    ``centered`` is 0 or 1 (a number so that it can be tuned like the others).
    """

    name = "rmsprop"
    defaults = {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": 0.0}
    default_grid = {"lr": tuple(2.0**k for k in range(-10, 3)), "alpha": (0.9, 0.99)}
    positive = ("lr", "eps")

    def _check_extra(self, key: str, value: np.ndarray) -> bool:
        if key in ("alpha", "momentum"):
            return bool((value < 1).all())
        return key != "centered" or bool(np.isin(value, (0.0, 1.0)).all())

    def _allowed_extra(self, key: str) -> str:
        return {"alpha": " and < 1", "momentum": " and < 1", "centered": " (0 or 1)"}.get(key, "")

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sq": torch.zeros_like(g), "gavg": torch.zeros_like(g),
                "buf": torch.zeros_like(g)}

    def update(self, g: torch.Tensor) -> torch.Tensor:
        h = {k: _col(v, g) for k, v in self.hyper.items()}
        st = self._state
        a = h["alpha"]
        st["sq"] = sq = st["sq"] * a + (1 - a) * g * g
        st["gavg"] = gavg = torch.lerp(st["gavg"], g, 1 - a if isinstance(a, float)
                                       else (1 - a).expand_as(g))
        centered = h["centered"]
        var = sq - centered * gavg * gavg if not (isinstance(centered, float)
                                                 and centered == 0.0) else sq
        avg = var.sqrt() + h["eps"]
        mu = h["momentum"]
        if isinstance(mu, float) and mu == 0.0:
            return -h["lr"] * (g / avg)
        st["buf"] = buf = st["buf"] * mu + g / avg
        return -h["lr"] * buf


# ---------------------------------------------------------------------- line search
def _cubic_min(
    a: torch.Tensor, fa: torch.Tensor, da: torch.Tensor,
    b: torch.Tensor, fb: torch.Tensor, db: torch.Tensor,
) -> torch.Tensor:
    """Minimiser of the cubic through (a, fa, da), (b, fb, db) (Nocedal & Wright eq. 3.59)."""
    d1 = da + db - 3 * (fa - fb) / (a - b)
    d2 = torch.sign(b - a) * (d1 * d1 - da * db).clamp_min(0).sqrt()
    return b - (b - a) * (db + d2 - d1) / (db - da + 2 * d2)


def wolfe_line_search(
    oracle: Oracle,
    x: torch.Tensor,
    f0: torch.Tensor,
    g0: torch.Tensor,
    p: torch.Tensor,
    alpha0: torch.Tensor,
    active: torch.Tensor,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_evals: int = 20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched strong-Wolfe line search along descent directions ``p`` (one α per row).

    Why this shape: each row runs Nocedal & Wright's bracketing + zoom (Algorithms 3.5/3.6)
    written as a masked state machine, so B line searches advance in lock-step, one batched
    oracle call per trial; finished rows are masked and not counted. The bracket keeps ``lo``
    (the best point with sufficient decrease; α = 0 at first) and ``hi`` (∞ until an upper end
    is found); trials expand ×4 while ``hi`` is ∞, then cubic interpolation safeguarded to the
    middle 80% of the bracket (bisection-like fallback where the cubic is undefined, e.g. an
    overflowing trial). A row that does not meet the Wolfe conditions within ``max_evals``
    takes its ``lo`` (a sufficient decrease, or no step at all).

    Returns ``(alpha [B], f [B], g [B, d], ok [B])`` where f, g are at x + αp and ``ok`` says a
    step with sufficient decrease was found.
    """
    dphi0 = (g0 * p).sum(-1)
    bracket = _Bracket.start(f0, dphi0, g0)
    found = _Accepted.start(f0, g0, active)
    alpha = torch.where(active, alpha0, torch.zeros_like(alpha0))
    done = ~active
    for _ in range(max_evals):
        run = ~done
        if not bool(run.any()):
            break
        alpha = torch.where(run, alpha, torch.zeros_like(alpha))  # finished rows: stay at x
        ft, gt = oracle(x + alpha.unsqueeze(-1) * p, run)
        dt = (gt * p).sum(-1)
        finite = torch.isfinite(ft) & torch.isfinite(dt)
        # fail: no sufficient decrease (or no better than lo): the trial becomes an upper end
        fail = ~finite | (ft > f0 + c1 * alpha * dphi0) | (ft >= bracket.f_lo)
        acc = run & ~fail & (dt.abs() <= -c2 * dphi0)  # both strong-Wolfe conditions hold
        found.record(acc, alpha, ft, gt)
        upd = run & ~acc
        bracket.update(upd, fail, alpha, ft, dt, gt)
        alpha, stalled = bracket.next_trial()
        done = done | acc | (upd & stalled) | (upd & ~torch.isfinite(alpha))
    return found.result(bracket, active, f0, g0)


@dataclass
class _Bracket:
    """Per row, the interval the search narrows (Nocedal & Wright's α_lo, α_hi): ``lo`` is the
    best trial with sufficient decrease so far, with φ(lo), φ'(lo) and ∇f there; ``hi`` the
    other end, with φ and φ' there (∞ until a trial fails). Kept as tensors so every row moves
    in lock-step."""

    lo: torch.Tensor
    f_lo: torch.Tensor
    d_lo: torch.Tensor
    g_lo: torch.Tensor
    hi: torch.Tensor
    f_hi: torch.Tensor
    d_hi: torch.Tensor

    @classmethod
    def start(cls, f0: torch.Tensor, dphi0: torch.Tensor, g0: torch.Tensor) -> _Bracket:
        """lo = 0 (x itself), hi = ∞: the search starts by bracketing."""
        inf = torch.full_like(f0, math.inf)
        return cls(torch.zeros_like(f0), f0, dphi0, g0, inf, inf, torch.zeros_like(f0))

    def update(
        self, upd: torch.Tensor, fail: torch.Tensor, alpha: torch.Tensor, ft: torch.Tensor,
        dt: torch.Tensor, gt: torch.Tensor,
    ) -> None:
        """Move the ends for the rows in ``upd`` (searching, trial not accepted): a failed trial
        becomes ``hi``; a good one becomes ``lo``, and where the slope there points away from
        ``hi`` the old ``lo`` becomes ``hi`` (N & W Algorithm 3.6's swap)."""
        up_hi = upd & fail
        good = upd & ~fail
        flip = good & (dt * (self.hi - self.lo) >= 0)
        hi_new = torch.where(up_hi, alpha, torch.where(flip, self.lo, self.hi))
        self.f_hi = torch.where(up_hi, ft, torch.where(flip, self.f_lo, self.f_hi))
        self.d_hi = torch.where(up_hi, dt, torch.where(flip, self.d_lo, self.d_hi))
        self.hi = hi_new
        self.lo = torch.where(good, alpha, self.lo)
        self.f_lo = torch.where(good, ft, self.f_lo)
        self.d_lo = torch.where(good, dt, self.d_lo)
        self.g_lo = torch.where(good.unsqueeze(-1), gt, self.g_lo)

    def next_trial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(next α, stalled): ×4 past ``lo`` while there is no upper end (bracketing), else the
        safeguarded cubic interpolant inside the bracket (zoom); ``stalled`` marks zoom rows
        whose bracket has shrunk to rounding."""
        width = self.hi - self.lo
        cubic = _cubic_min(self.lo, self.f_lo, self.d_lo, self.hi, self.f_hi, self.d_hi)
        left, right = torch.minimum(self.lo, self.hi), torch.maximum(self.lo, self.hi)
        margin = 0.1 * (right - left)
        fallback = self.lo + 0.2 * width  # an overflowing trial: shrink towards lo
        interp = torch.where(torch.isfinite(cubic) & torch.isfinite(self.f_hi), cubic, fallback)
        interp = torch.minimum(torch.maximum(interp, left + margin), right - margin)
        expand = torch.isinf(self.hi)
        alpha = torch.where(expand, (4 * self.lo).clamp_max(1e20), interp)
        stalled = ~expand & (width.abs() <= 1e-14 * right.clamp_min(1e-30))
        return alpha, stalled


@dataclass
class _Accepted:
    """Per row, the first trial that met both Wolfe conditions (α, f and ∇f there)."""

    accepted: torch.Tensor
    alpha: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor

    @classmethod
    def start(cls, f0: torch.Tensor, g0: torch.Tensor, active: torch.Tensor) -> _Accepted:
        """Nothing accepted yet."""
        return cls(torch.zeros_like(active), torch.zeros_like(f0), f0, g0)

    def record(
        self, acc: torch.Tensor, alpha: torch.Tensor, ft: torch.Tensor, gt: torch.Tensor
    ) -> None:
        """Keep the trial of the rows in ``acc`` (they stop searching)."""
        self.alpha = torch.where(acc, alpha, self.alpha)
        self.f = torch.where(acc, ft, self.f)
        self.g = torch.where(acc.unsqueeze(-1), gt, self.g)
        self.accepted = self.accepted | acc

    def result(
        self, bracket: _Bracket, active: torch.Tensor, f0: torch.Tensor, g0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``wolfe_line_search``'s return value: the accepted trial; else, for a row that ran
        out of evaluations, its ``lo`` if that moved (a sufficient decrease); else no step."""
        use_lo = ~self.accepted & active & (bracket.lo > 0)
        zero = torch.zeros_like(bracket.lo)
        alpha = torch.where(self.accepted, self.alpha, torch.where(use_lo, bracket.lo, zero))
        f_new = torch.where(self.accepted, self.f, torch.where(use_lo, bracket.f_lo, f0))
        g_new = torch.where(self.accepted.unsqueeze(-1), self.g,
                            torch.where(use_lo.unsqueeze(-1), bracket.g_lo, g0))
        return alpha, f_new, g_new, self.accepted | use_lo


class _LineSearchMethod(HandOptimizer):
    """Shared by CG and L-BFGS: which rows still search.

    A row stops (zero step, no more evaluations) once max|∇f| ≤ ``gtol`` (converged), when f or
    ∇f is non-finite, or after two failed line searches in a row — the second one along −∇f —
    which at the optimum means f no longer decreases above rounding (scipy's L-BFGS-B stops
    there too, "ABNORMAL_TERMINATION_IN_LNSRCH"). Without this, a converged row would spend
    ``max_evals`` evaluations per iteration on rounding noise.
    """

    needs_oracle = True
    batchable = False

    def _active(self, f: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ok = torch.isfinite(f) & torch.isfinite(g).all(-1)
        g = torch.where(ok.unsqueeze(-1), g, torch.zeros_like(g))
        self._ensure_state(g)
        ok = ok & (g.abs().amax(-1) > float(self.hyper["gtol"])) & (self._state["fails"] < 2)
        return g, ok

    def update(self, g: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{self.name}: needs line-search evaluations; use propose() with an "
                         "oracle (run_optimizer)")


def _check_oracle(oracle: Oracle | None, name: str) -> Oracle:
    if oracle is None:
        raise ValueError(f"oracle: got None, allowed: a function evaluator — {name} needs "
                         "line-search evaluations; run it with run_optimizer, not as a policy")
    return oracle


# ---------------------------------------------------------------------- search directions
def _polak_ribiere_direction(g: torch.Tensor, st: dict[str, torch.Tensor], restart: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonlinear CG's direction d = −g + β d_prev, β = max(0, gᵀ(g − g_prev) / ‖g_prev‖²)
    (Polak–Ribière+), and where it restarts with −g: at a row's first iteration (``k`` = 0),
    every ``restart`` iterations (0: every d) and where d is not a descent direction. Reads
    ``g_prev``, ``d_prev``, ``k`` of the state ``st``."""
    restart_every = restart or g.shape[-1]
    have = st["k"] > 0
    gp = st["g_prev"]
    beta = ((g * (g - gp)).sum(-1) / (gp * gp).sum(-1).clamp_min(1e-300)).clamp_min(0)
    d = -g + torch.where(have, beta, torch.zeros_like(beta)).unsqueeze(-1) * st["d_prev"]
    gd = (g * d).sum(-1)
    again = ~have | (st["k"] >= restart_every) | ~(gd < 0) | ~torch.isfinite(gd)
    return torch.where(again.unsqueeze(-1), -g, d), again


class _LBFGSMemory:
    """L-BFGS's memory of (s, y) pairs per row and its two-loop direction, shared by the
    line-search and the fixed-step variant. State: ``S``, ``Y`` [B, m, d], ``rho`` [B, m]
    (0 marks an empty slot), ``s_last``, ``g_prev`` [B, d], ``have`` [B] (a last step exists)."""

    _state: dict[str, torch.Tensor]
    hyper: dict[str, Hyper]

    def _memory_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        b, d = g.shape
        m = int(self.hyper["history_size"])
        return {"S": g.new_zeros(b, m, d), "Y": g.new_zeros(b, m, d), "rho": g.new_zeros(b, m),
                "s_last": torch.zeros_like(g), "g_prev": torch.zeros_like(g),
                "have": torch.zeros(b, dtype=torch.bool, device=g.device)}

    def _remember(self, g: torch.Tensor, ok: torch.Tensor) -> None:
        """Store the last step's pair (s = the step taken, y = the change of gradient) where
        it satisfies the curvature condition sᵀy > 1e-10·yᵀy (keeps H positive definite)."""
        st = self._state
        s, y = st["s_last"], g - st["g_prev"]
        sy, yy = (s * y).sum(-1), (y * y).sum(-1)
        store = st["have"] & ok & (sy > 1e-10 * yy) & torch.isfinite(sy)
        sel = store.view(-1, 1, 1)
        st["S"] = torch.where(sel, torch.cat([st["S"][:, 1:], s.unsqueeze(1)], 1), st["S"])
        st["Y"] = torch.where(sel, torch.cat([st["Y"][:, 1:], y.unsqueeze(1)], 1), st["Y"])
        new_rho = torch.cat([st["rho"][:, 1:], (1.0 / sy.where(store, torch.ones_like(sy)))
                             .unsqueeze(1)], 1)
        st["rho"] = torch.where(store.unsqueeze(-1), new_rho, st["rho"])

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """−H g by the two-loop recursion over each row's stored pairs (invalid pairs: ρ = 0)."""
        st = self._state
        S, Y, rho = st["S"], st["Y"], st["rho"]
        m = S.shape[1]
        q = g
        alphas = []
        for j in range(m - 1, -1, -1):
            a = rho[:, j] * (S[:, j] * q).sum(-1)
            q = q - a.unsqueeze(-1) * Y[:, j]
            alphas.append(a)
        alphas.reverse()
        yy = (Y[:, -1] * Y[:, -1]).sum(-1)
        gamma = torch.where(rho[:, -1] > 0, 1.0 / (rho[:, -1] * yy).clamp_min(1e-300),
                            torch.ones_like(yy))
        r = gamma.unsqueeze(-1) * q
        for j in range(m):
            b = rho[:, j] * (Y[:, j] * r).sum(-1)
            r = r + (alphas[j] - b).unsqueeze(-1) * S[:, j]
        return -r

    def _descent_direction(self, g: torch.Tensor) -> torch.Tensor:
        """:meth:`direction`, or −g (with the row's memory forgotten) where that is not a
        descent direction."""
        st = self._state
        d = self.direction(g)
        gd = (g * d).sum(-1)
        bad = ~(gd < 0) | ~torch.isfinite(gd)
        st["rho"] = torch.where(bad.unsqueeze(-1), torch.zeros_like(st["rho"]), st["rho"])
        return torch.where(bad.unsqueeze(-1), -g, d)


# ---------------------------------------------------------------------- fixed-step CG, L-BFGS
class CGFixed(HandOptimizer):
    """Nonlinear CG (Polak–Ribière+, as :class:`CG`) taking a fixed, tuned step: Δx = lr·d.

    Why: Li & Malik (2016) compare against CG and L-BFGS tuned on the training objectives and
    report that they "diverge quickly" on the non-convex families, which a Wolfe line search
    cannot do; their baselines took fixed steps. One f/∇f evaluation per iteration, so this is
    a first-order rule that also acts as a policy in the env. ``restart``: as :class:`CG`.

    Without a line search, β is no longer Polak–Ribière's conjugacy factor: on a quadratic with
    a step below 1/L successive gradients stay positively aligned, gᵀ(g − g_prev) < 0, so β
    clips to 0 and the method IS gradient descent; it departs from GD only where steps are
    long (large ``lr`` or sharp turns) — the regime in which Li & Malik saw it diverge.
    """

    name = "cg-fixed"
    defaults = {"lr": 0.1, "restart": 0.0}
    scalar_only = ("restart",)
    default_grid = {"lr": tuple(2.0**k for k in range(-10, 5))}

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        z = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
        return {"g_prev": torch.zeros_like(g), "d_prev": torch.zeros_like(g), "k": z}

    def update(self, g: torch.Tensor) -> torch.Tensor:
        st = self._state
        d, restart = _polak_ribiere_direction(g, st, int(self.hyper["restart"]))
        st["k"] = torch.where(restart, torch.ones_like(st["k"]), st["k"] + 1)
        st["g_prev"], st["d_prev"] = g, d
        return _col(self.hyper["lr"], g) * d


class LBFGSFixed(_LBFGSMemory, HandOptimizer):
    """L-BFGS (the two-loop direction of :class:`LBFGS`, same memory rule) taking a fixed,
    tuned step: Δx = lr·d. Li & Malik's fixed-step baseline (see :class:`CGFixed`); the pair
    stored is the step this rule proposed (in the env, a clipped action makes it differ from
    the step taken, as for every policy)."""

    name = "lbfgs-fixed"
    defaults = {"lr": 1.0, "history_size": 10.0}
    default_grid = {"lr": tuple(2.0**k for k in range(-10, 3))}
    positive = ("lr", "history_size")
    scalar_only = ("history_size",)

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._memory_state(g)

    def update(self, g: torch.Tensor) -> torch.Tensor:
        st = self._state
        self._remember(g, torch.ones_like(st["have"]))
        step = _col(self.hyper["lr"], g) * self._descent_direction(g)
        st["s_last"], st["g_prev"], st["have"] = step, g, torch.ones_like(st["have"])
        return step


# ---------------------------------------------------------------------- line-search methods
class CG(_LineSearchMethod):
    """Nonlinear conjugate gradient (Polak–Ribière+, Nocedal & Wright §5.2) with a Wolfe search.

    d = −g + β d_prev with β = max(0, gᵀ(g − g_prev) / ‖g_prev‖²); restarts with −g every
    ``restart`` iterations (default d, set at the first call when 0) and whenever d is not a
    descent direction. Strong Wolfe with c2 = 0.1 (CG wants an accurate line search); the first
    trial step is α_prev·(g_prevᵀd_prev)/(gᵀd) (N&W eq. 3.60), 1/‖g‖ after a restart.
    """

    name = "cg"
    defaults = {"c1": 1e-4, "c2": 0.1, "restart": 0.0, "max_evals": 20.0, "gtol": 1e-10}
    default_grid = {}
    positive = ("c1", "c2", "max_evals")

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        b = g.shape[0]
        z = torch.zeros(b, dtype=g.dtype, device=g.device)
        return {"g_prev": torch.zeros_like(g), "d_prev": torch.zeros_like(g),
                "dg_prev": z, "a_prev": z.clone(), "k": z.clone(), "fails": z.clone()}

    def propose(
        self, x: torch.Tensor, f: torch.Tensor, g: torch.Tensor, oracle: Oracle | None = None
    ) -> torch.Tensor:
        oracle = _check_oracle(oracle, self.name)
        g, ok = self._active(f, g)
        st = self._state
        d, restart = _polak_ribiere_direction(g, st, int(self.hyper["restart"]))
        gd = (g * d).sum(-1)
        gnorm = g.norm(dim=-1).clamp_min(1e-300)
        a0 = torch.where(restart, 1.0 / gnorm, st["a_prev"] * st["dg_prev"] / gd)
        a0 = torch.where(torch.isfinite(a0) & (a0 > 0), a0, 1.0 / gnorm).clamp(1e-12, 1e12)
        alpha, _, _, found = wolfe_line_search(
            oracle, x, f, g, d, a0, ok, c1=float(self.hyper["c1"]), c2=float(self.hyper["c2"]),
            max_evals=int(self.hyper["max_evals"]))
        found = found & ok
        st["fails"] = torch.where(found, torch.zeros_like(st["fails"]), st["fails"] + ok)
        k = torch.where(restart, torch.ones_like(st["k"]), st["k"] + 1)
        st["k"] = torch.where(found, k, torch.zeros_like(k))
        st["g_prev"], st["d_prev"], st["dg_prev"] = g, d, gd
        st["a_prev"] = alpha
        return torch.where(found.unsqueeze(-1), alpha.unsqueeze(-1) * d, torch.zeros_like(d))


class LBFGS(_LBFGSMemory, _LineSearchMethod):
    """Limited-memory BFGS (Nocedal & Wright Alg. 7.4/7.5) with a strong-Wolfe line search.

    Memory of ``history_size`` pairs (s, y) per row; a pair is stored only when sᵀy > 1e-10·yᵀy
    (curvature condition, keeps H positive definite); initial scaling γ = sᵀy/yᵀy of the newest
    pair. First trial step 1, or min(1, 1/‖g‖) with an empty memory (as torch.optim.LBFGS and
    scipy's L-BFGS-B start). c2 = 0.9 (the quasi-Newton setting).
    """

    name = "lbfgs"
    defaults = {"history_size": 10.0, "c1": 1e-4, "c2": 0.9, "max_evals": 20.0, "gtol": 1e-10}
    default_grid = {}
    positive = ("history_size", "c1", "c2", "max_evals")

    def _init_state(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**self._memory_state(g), "fails": g.new_zeros(g.shape[0])}

    def propose(
        self, x: torch.Tensor, f: torch.Tensor, g: torch.Tensor, oracle: Oracle | None = None
    ) -> torch.Tensor:
        oracle = _check_oracle(oracle, self.name)
        g, ok = self._active(f, g)
        st = self._state
        self._remember(g, ok)
        d = self._descent_direction(g)
        empty = ~(st["rho"] > 0).any(-1)
        a0 = torch.where(empty, (1.0 / g.norm(dim=-1).clamp_min(1e-300)).clamp_max(1.0),
                         torch.ones_like(f))
        alpha, _, _, found = wolfe_line_search(
            oracle, x, f, g, d, a0, ok, c1=float(self.hyper["c1"]), c2=float(self.hyper["c2"]),
            max_evals=int(self.hyper["max_evals"]))
        found = found & ok
        st["fails"] = torch.where(found, torch.zeros_like(st["fails"]), st["fails"] + ok)
        # A failed search also empties the memory: the next iteration is steepest descent.
        st["rho"] = torch.where((ok & ~found).unsqueeze(-1), torch.zeros_like(st["rho"]),
                                st["rho"])
        step = torch.where(found.unsqueeze(-1), alpha.unsqueeze(-1) * d, torch.zeros_like(d))
        st["s_last"], st["g_prev"], st["have"] = step, g, found
        return step


OPTIMIZERS: dict[str, type[HandOptimizer]] = {
    cls.name: cls for cls in (GD, Momentum, Nesterov, Adam, Adagrad, RMSprop, CG, LBFGS,
                              CGFixed, LBFGSFixed)
}


def make_optimizer(name: str, **hyper: Any) -> HandOptimizer:
    """An optimiser by name (``gd``, ``momentum``, ``nesterov``, ``adam``, ``adagrad``,
    ``rmsprop``, ``cg``, ``lbfgs``) with hyper-parameters overriding its defaults."""
    check_choice("method", name, OPTIMIZERS)
    return OPTIMIZERS[name](**hyper)


# ---------------------------------------------------------------------- face (b): direct runs
def run_optimizer(
    optimizer: HandOptimizer,
    family: ObjectiveFamily,
    data: Mapping[str, torch.Tensor],
    x0: torch.Tensor,
    horizon: int = 40,
    *,
    history: int = 25,
) -> Rollout:
    """Run ``optimizer`` on a batch of a family's instances for ``horizon`` iterations.

    The iterate/state update is :class:`~optenv.core.OptimizationCore`'s (through
    :func:`optenv.rollout.rollout`); the optimiser only proposes steps. The optimiser's state
    is reset first. Returns per-row f at x(0..horizon), divergence flags and ``extra_evals``
    (line-search evaluations beyond one per iteration).
    """
    from optenv.core import OptimizationCore

    optimizer.reset()
    core = OptimizationCore(family, history)
    return rollout(core, data, x0, horizon, optimizer)


# ---------------------------------------------------------------------- face (a): policies
class OptimizerPolicy:
    """A first-order optimiser as an env policy: observation(s) → action(s) = step / max_step.

    Reads ``CUR_GRAD`` from the observation through ``observation_layout`` (the env's
    ``observation_layout``: feature name → slice). Accepts one observation [obs_dim] or a batch
    [B, obs_dim], numpy or torch, and answers in kind (same type, dtype and shape). With
    ``auto_reset`` (default) rows whose observation is an episode start — every history entry
    (PAST_GRADS, PAST_LOC_DELTAS) zero, as after ``reset`` or a vector env's autoreset — get a
    fresh optimiser state first; call ``reset()`` yourself when starting episodes otherwise.

    ``predict`` mirrors Stable-Baselines3's (``episode_start`` resets rows), so SB3 helpers such
    as ``evaluate_policy`` can drive it.
    """

    def __init__(
        self,
        optimizer: HandOptimizer,
        observation_layout: Mapping[str, slice] | StateLayout,
        max_step: float,
        *,
        auto_reset: bool = True,
    ) -> None:
        if optimizer.needs_oracle:
            raise ValueError(f"optimizer: got {optimizer.name!r}, which needs line-search "
                             "evaluations; allowed as a policy: gd, momentum, nesterov, adam, "
                             "adagrad, rmsprop (run CG / L-BFGS with run_optimizer)")
        if isinstance(observation_layout, StateLayout):
            observation_layout = observation_layout.observation_slices
        for key in ("CUR_GRAD", "PAST_GRADS", "PAST_LOC_DELTAS"):
            if key not in observation_layout:
                raise ValueError(f"observation_layout: missing {key!r}, allowed: the env's "
                                 "observation_layout (name → slice)")
        check_number("max_step", max_step)
        self.optimizer = optimizer
        self.layout = dict(observation_layout)
        self.max_step = float(max_step)
        self.auto_reset = auto_reset

    @classmethod
    def for_env(cls, optimizer: HandOptimizer, env: Any, **kwargs: Any) -> OptimizerPolicy:
        """The policy for a (single or vector, possibly wrapped) optenv env."""
        base = getattr(env, "unwrapped", env)
        return cls(optimizer, base.observation_layout, base.max_step, **kwargs)

    def reset(self, mask: torch.Tensor | np.ndarray | None = None) -> None:
        """Fresh optimiser state for every row, or for the rows where ``mask`` is True."""
        self.optimizer.reset(mask)

    def __call__(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        is_np = not isinstance(obs, torch.Tensor)
        o = torch.as_tensor(np.asarray(obs)) if is_np else obs
        single = o.dim() == 1
        if single:
            o = o.unsqueeze(0)
        if self.auto_reset:
            hist = torch.cat([o[:, self.layout["PAST_GRADS"]],
                              o[:, self.layout["PAST_LOC_DELTAS"]]], dim=-1)
            starts = (hist == 0).all(-1)
            if bool(starts.any()):
                self.optimizer.reset(starts if self.optimizer._state else None)
        g = o[:, self.layout["CUR_GRAD"]]
        f = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
        action = self.optimizer.propose(o.new_zeros(g.shape), f, g) / self.max_step
        if single:
            action = action[0]
        return action.cpu().numpy() if is_np else action

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """Stable-Baselines3's ``predict`` signature; ``episode_start`` rows are reset first."""
        if episode_start is not None and self.optimizer._state:
            self.optimizer.reset(torch.as_tensor(np.asarray(episode_start, dtype=bool)))
        return np.asarray(self(observation)), None


def make_policy(name: str, env: Any, **hyper: Any) -> OptimizerPolicy:
    """``OptimizerPolicy.for_env(make_optimizer(name, **hyper), env)``."""
    return OptimizerPolicy.for_env(make_optimizer(name, **hyper), env)
