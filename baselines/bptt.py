"""A learned optimiser trained by back-propagation through the unrolled optimisation (BPTT).

Andrychowicz et al. (2016), "Learning to learn by gradient descent by gradient descent": a
two-layer LSTM, shared across coordinates, maps each coordinate's (preprocessed) gradient to its
step; it is trained by minimising the meta-loss Σ_t f(x_t) over unrolled runs on TRAIN
objectives, back-propagating through the optimisation itself. This is the supervised side of
Li & Malik's comparison: it tends to do well early on unseen objectives and to diverge later.

Every unroll steps the shared batched core (:class:`optenv.core.OptimizationCore`), so the
iterate/gradient/history arithmetic is the one the envs use, and autograd flows through it.

Second-order terms: the paper drops them (the gradient fed to the LSTM is treated as a
constant, ``second_order=False``); ``second_order=True`` keeps them, differentiating through
∇f as well (the families' closed-form gradients are differentiable).

Three kinds of learned optimiser train here, on one meta-loss: Andrychowicz et al.'s
:class:`CoordinatewiseLSTM` (reads each coordinate's gradient), :class:`MLPOptimizer` (the flat
GPS policy of Li & Malik 2016, tied to one d) and :class:`CoordinatewiseOptimizer` (Li & Malik
2017's :class:`~optenv.policy.CoordinatewisePolicy`, the class coordinate-group GPS trains,
reading one row of features per coordinate: it runs on any d, so a policy meta-trained on one
family transfers to larger models).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from optenv.checkpoint import load_module, save_module
from optenv.core import OptimizationCore, StateLayout
from optenv.families import CoordinateGroup, ObjectiveFamily
from optenv.features import check_features
from optenv.flags import option
from optenv.policy import CoordinatewisePolicy, GaussianMLPPolicy
from optenv.validation import check_int, check_number, parse_dtype

__all__ = [
    "DEFAULT_FEATURES",
    "CoordinatewiseLSTM",
    "CoordinatewiseOptimizer",
    "LSTMPolicy",
    "LearnedOptimizer",
    "MLPOptimizer",
    "MetaTrainConfig",
    "MetaTrainLog",
    "Unroll",
    "load_lstm",
    "meta_train",
    "preprocess_gradients",
    "save_lstm",
    "unroll",
    "unrolled_meta_loss",
]

LSTMState = tuple[torch.Tensor, torch.Tensor]


def preprocess_gradients(g: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al.'s gradient preprocessing, [..., 2].

    (log|g| / p, sign g) when |g| ≥ e^(−p), else (−1, e^p · g): scales gradients of very
    different magnitudes into a similar range while keeping small ones distinguishable.
    Both branches give (−1, ±1) at the threshold, so the map is continuous there.
    """
    mag = g.abs()
    big = mag >= math.exp(-p)
    log_part = torch.where(big, torch.log(mag.clamp_min(math.exp(-p))) / p, -torch.ones_like(g))
    lin_part = torch.where(big, torch.sign(g), math.exp(p) * g)
    return torch.stack([log_part, lin_part], dim=-1)


class CoordinatewiseLSTM(nn.Module):
    """The coordinatewise LSTM optimiser: the same small LSTM runs on every coordinate.

    Args:
        hidden: cells per layer (paper: 20).
        layers: LSTM layers (paper: 2).
        preprocess_p: p of :func:`preprocess_gradients` (paper: 10).
        output_scale: the step is the linear read-out times this (paper: 0.1).
    """

    def __init__(self, hidden: int = 20, layers: int = 2, preprocess_p: float = 10.0,
                 output_scale: float = 0.1) -> None:
        super().__init__()
        check_int("hidden", hidden, 1)
        check_int("layers", layers, 1)
        self.hidden, self.layers = hidden, layers
        self.preprocess_p = check_number("preprocess_p", preprocess_p)
        self.output_scale = check_number("output_scale", output_scale)
        self.cells = nn.ModuleList(
            nn.LSTMCell(2 if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.readout = nn.Linear(hidden, 1)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (saved with checkpoints)."""
        return {"hidden": self.hidden, "layers": self.layers,
                "preprocess_p": self.preprocess_p, "output_scale": self.output_scale}

    def inputs(self, layout: StateLayout, state: torch.Tensor, t: int = 0) -> torch.Tensor:
        """What the net reads from a batch of states: the current gradient [B, d]."""
        return state[:, layout.state_slices["CUR_GRAD"]]

    def initial_state(self, batch: int, d: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> list[LSTMState]:
        """Zero (h, c) per layer for batch·d coordinates."""
        z = torch.zeros(batch * d, self.hidden, device=device, dtype=dtype)
        return [(z, z) for _ in range(self.layers)]

    def forward(self, grad: torch.Tensor, state: list[LSTMState]
                ) -> tuple[torch.Tensor, list[LSTMState]]:
        """Steps [B, d] from gradients [B, d]; ``state`` from :meth:`initial_state`."""
        b, d = grad.shape
        inp = preprocess_gradients(grad, self.preprocess_p).reshape(b * d, 2).to(
            self.readout.weight.dtype)
        new_state = []
        for cell, (h, c) in zip(self.cells, state, strict=True):
            h, c = cell(inp, (h, c))
            new_state.append((h, c))
            inp = h
        step = self.output_scale * self.readout(inp).reshape(b, d)
        return step.to(grad.dtype), new_state


class MLPOptimizer(nn.Module):
    """The GPS policy class (:class:`optenv.policy.GaussianMLPPolicy`) as a BPTT-trained optimiser.

    It reads the observation Φ (the state without CUR_LOC) and outputs the policy's mean step,
    so the study can compare GPS and BPTT training on one architecture. No recurrent state.
    """

    def __init__(self, policy: GaussianMLPPolicy) -> None:
        super().__init__()
        self.policy = policy

    def inputs(self, layout: StateLayout, state: torch.Tensor, t: int = 0) -> torch.Tensor:
        """The observation Φ [B, obs_dim]."""
        return layout.observation(state)

    def initial_state(self, batch: int, d: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> list[LSTMState]:
        """No recurrent state."""
        return []

    def forward(self, obs: torch.Tensor, state: list[LSTMState]
                ) -> tuple[torch.Tensor, list[LSTMState]]:
        """Steps [B, d] from observations [B, obs_dim]."""
        return self.policy(obs).to(obs.dtype), state


#: The feature set a coordinatewise optimiser reads unless told otherwise: the 2016 state split
#: by coordinate (:data:`optenv.features.FEATURE_SETS`; k = 3H + 1).
DEFAULT_FEATURES = "li-malik-2016"


class CoordinatewiseOptimizer(nn.Module):
    """Li & Malik (2017)'s :class:`~optenv.policy.CoordinatewisePolicy` as a BPTT-trained optimiser.

    Each coordinate's mean step is the policy's network applied to that coordinate's feature
    row (feature set ``policy.features`` of :data:`optenv.features.FEATURE_SETS`, at the
    unroll's iteration t: the 2017 sets depend on it) and the kind of its group
    (weight / bias / other); parameters are shared across coordinates. This is the class that
    coordinate-group GPS trains, so the study can compare GPS and BPTT on one architecture
    again, and — unlike :class:`MLPOptimizer` — the trained policy runs on any d.

    With ``cell="lstm"`` the policy's per-coordinate (h, c) is the recurrent state
    :func:`unroll` carries, as a one-element list like :class:`CoordinatewiseLSTM`'s per-layer
    list, so :func:`meta_train` truncates it between unroll segments the same way.

    Args:
        policy: the policy to train (its ``width`` must match the feature set's row length).
        groups: the meta-training family's coordinate groups (each coordinate's kind).
    """

    def __init__(self, policy: CoordinatewisePolicy, groups: Sequence[CoordinateGroup]) -> None:
        super().__init__()
        self.policy = policy
        self.feature_set = check_features(policy.features)
        # Not persistent: the kinds belong to the training family, not to the trained policy
        # (a loaded policy is bound to the groups of whatever family it acts on).
        self.register_buffer("kinds", policy.kind_index(groups), persistent=False)

    @property
    def features(self) -> str:
        """The name of the feature set the policy reads."""
        return self.policy.features

    def inputs(self, layout: StateLayout, state: torch.Tensor, t: int = 0) -> torch.Tensor:
        """The rows [B, d, k] of a state batch at iteration ``t``."""
        rows = self.feature_set.rows(layout, layout.observation(state), t)
        if rows.shape[-2] != self.kinds.numel():
            raise ValueError(f"state: has {rows.shape[-2]} coordinates, allowed: "
                             f"{self.kinds.numel()} (the family this optimiser was bound to)")
        return rows

    def initial_state(self, batch: int, d: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> list[LSTMState]:
        """Zero (h, c) per coordinate for the LSTM, in a one-element list; [] for the MLP."""
        state = self.policy.initial_state(batch, d, device, dtype)
        return [] if state is None else [state]

    def forward(self, rows: torch.Tensor, state: list[LSTMState]
                ) -> tuple[torch.Tensor, list[LSTMState]]:
        """Mean steps [B, d] from rows [B, d, k]."""
        mean, new = self.policy(rows, self.kinds, state[0] if state else None)
        return mean.to(rows.dtype), [] if new is None else [new]


LearnedOptimizer = CoordinatewiseLSTM | MLPOptimizer | CoordinatewiseOptimizer


def _dtype_of(net: nn.Module) -> torch.dtype:
    return next(net.parameters()).dtype


class Unroll(NamedTuple):
    """The end of a (truncated) unroll: its meta-loss and where the runs stand."""

    loss: torch.Tensor  # Σ_t mean_b f(x_t) over the unrolled steps
    state: torch.Tensor
    f: torch.Tensor
    hidden: list[LSTMState]
    grads: list[torch.Tensor]  # the gradients the net was fed (detached)


def unroll(
    net: LearnedOptimizer,
    core: OptimizationCore,
    data: dict[str, torch.Tensor],
    state: torch.Tensor,
    f: torch.Tensor,
    hidden: list[LSTMState],
    steps: int,
    *,
    second_order: bool = False,
    frozen_grads: list[torch.Tensor] | None = None,
    t0: int = 0,
) -> Unroll:
    """Run the net as the optimiser for ``steps`` iterations through the shared core, starting
    at iteration ``t0`` of the run (a truncated segment's offset: features may depend on it).

    Without ``second_order`` the net's inputs (gradients, or the whole observation for the
    MLP, or the whole rows for the coordinatewise optimiser) are treated as constants,
    dropping the second-order terms as Andrychowicz et al. did.
    ``frozen_grads`` replaces the inputs by given constants (used to check the first-order
    meta-gradient against finite differences: that is exactly what dropping those terms means).
    """
    loss = f.new_zeros(())
    seen: list[torch.Tensor] = []
    for t in range(steps):
        g = net.inputs(core.layout, state, t0 + t)
        if frozen_grads is not None:
            g = frozen_grads[t]
        elif not second_order:
            g = g.detach()
        seen.append(g.detach())
        delta, hidden = net(g, hidden)
        res = core.step(data, state, f, delta)
        state, f = res.state, res.f
        loss = loss + f.mean()
    return Unroll(loss, state, f, hidden, seen)


def unrolled_meta_loss(
    net: LearnedOptimizer,
    core: OptimizationCore,
    data: dict[str, torch.Tensor],
    x0: torch.Tensor,
    steps: int,
    *,
    second_order: bool = False,
    frozen_grads: list[torch.Tensor] | None = None,
) -> Unroll:
    """One whole unroll from x0 (fresh LSTM state): the meta-loss Σ_t mean_b f(x_t)."""
    start = core.start(data, x0)
    hidden = net.initial_state(x0.shape[0], x0.shape[1], x0.device, _dtype_of(net))
    return unroll(net, core, data, start.state, start.f, hidden, steps,
                  second_order=second_order, frozen_grads=frozen_grads)


@dataclass
class MetaTrainConfig:
    """Meta-training settings, declared once for :func:`meta_train` and ``optenv train bptt``.

    The defaults are the command's full run: 1000 meta-iterations of 64 TRAIN objectives, Adam
    at lr 1e-3, truncated unrolls of 20 steps over a horizon of 40 (Andrychowicz et al.'s
    truncation; 40 is every optenv env's horizon), first-order meta-gradients as in the paper.
    Fields declared with :func:`~optenv.flags.option` are also the command's flags, with their
    help text and their ``--quick`` value (100 iterations of 32 objectives); the command fills
    the horizon from the env and, for the MLPs (flat and coordinatewise: no recurrent state to
    truncate), the truncation from the horizon. ``history``, ``max_grad_norm`` and ``dtype``
    are not flags (the env sets the first; the others are fixed for the command).
    """

    iterations: int = option(1000, quick=100, help="meta-iterations")
    batch_size: int = option(64, quick=32, help="objectives per iteration")
    horizon: int = option(40, shown="the env's", help="unroll horizon")
    unroll: int = option(20, shown="20 for the LSTMs, the horizon for the MLPs",
                         help="truncation length")
    lr: float = option(1e-3, help="Adam learning rate")
    second_order: bool = option(False, help="keep second-order terms (the paper drops them)")
    max_grad_norm: float = 1.0
    history: int = 25
    seed: int = option(0, help="seed (training objectives, init)")
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "horizon", "unroll", "history"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        check_number("lr", self.lr)
        check_number("max_grad_norm", self.max_grad_norm)
        parse_dtype(self.dtype)


@dataclass
class MetaTrainLog:
    """Per-iteration record: meta-loss (mean f over the applied unrolls' steps), mean clipped
    meta-gradient norm, and how many unrolls were skipped as non-finite."""

    meta_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    skipped_unrolls: int = 0


def meta_train(
    net: LearnedOptimizer,
    family: ObjectiveFamily,
    config: MetaTrainConfig,
    *,
    start_iteration: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_iteration: Callable[[int, float, float], None] | None = None,
) -> MetaTrainLog:
    """Train ``net`` by truncated BPTT on TRAIN objectives of ``family``.

    Iteration i optimises the batch of TRAIN instances with seeds
    seed·2⁴⁰ + [i·batch_size, (i+1)·batch_size) for ``horizon`` steps, updating the net (Adam)
    after each truncated unroll of ``unroll`` steps. An unroll whose meta-loss or meta-gradient
    is not finite (the inner optimisation diverged) is skipped and counted, never applied;
    meta-gradients are clipped to ``max_grad_norm``.
    """
    dtype = parse_dtype(config.dtype)
    device = next(net.parameters()).device
    net.to(dtype)
    core = OptimizationCore(family, config.history)
    opt = optimizer or torch.optim.Adam(net.parameters(), lr=config.lr)
    log = MetaTrainLog()
    for it in range(start_iteration, start_iteration + config.iterations):
        first = config.seed * 2**40 + it * config.batch_size
        seeds = torch.arange(first, first + config.batch_size)
        data, x0 = family.sample(seeds, split="train", dtype=dtype, device=device)
        start = core.start(data, x0)
        state, f = start.state, start.f
        hidden = net.initial_state(config.batch_size, family.d, device, dtype)
        total, counted, norms = 0.0, 0, []
        for t0 in range(0, config.horizon, config.unroll):
            steps = min(config.unroll, config.horizon - t0)
            loss, state, f, hidden, _ = unroll(net, core, data, state, f, hidden, steps, t0=t0,
                                               second_order=config.second_order)
            opt.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(loss))
            if ok:
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(net.parameters(), config.max_grad_norm)
                ok = bool(torch.isfinite(gn))
            if ok:
                opt.step()
                total += float(loss.detach())
                counted += steps
                norms.append(float(gn))
            else:
                opt.zero_grad(set_to_none=True)
                log.skipped_unrolls += 1
            state, f = state.detach(), f.detach()
            hidden = [(h.detach(), c.detach()) for h, c in hidden]
        mean_loss = total / counted if counted else float("nan")
        mean_norm = sum(norms) / len(norms) if norms else float("nan")
        log.meta_loss.append(mean_loss)
        log.grad_norm.append(mean_norm)
        if on_iteration is not None:
            on_iteration(it, mean_loss, mean_norm)
    return log


class LSTMPolicy:
    """A trained :class:`CoordinatewiseLSTM` acting in an optenv env from observations alone.

    Call it on a batch of observations [B, obs_dim] (numpy or torch); it returns actions
    step / max_step. It reads CUR_GRAD through the env's observation layout and keeps one LSTM
    state per row; a row whose history is all zero (the first observation of an episode) starts
    from a fresh LSTM state, so it follows autoresets without being told.
    """

    def __init__(self, net: CoordinatewiseLSTM, observation_layout: dict[str, slice],
                 max_step: float) -> None:
        self.net = net.eval()
        self.layout = observation_layout
        self.max_step = check_number("max_step", max_step)
        self._hidden: list[LSTMState] | None = None

    def reset(self) -> None:
        """Forget every row's LSTM state."""
        self._hidden = None

    @torch.no_grad()
    def __call__(self, obs: Any) -> torch.Tensor:
        param = self.net.readout.weight
        o = torch.as_tensor(obs).to(device=param.device, dtype=param.dtype)
        if o.dim() == 1:
            o = o.unsqueeze(0)
        g = o[:, self.layout["CUR_GRAD"]]
        b, d = g.shape
        fresh = self.net.initial_state(b, d, param.device, param.dtype)
        if self._hidden is None or self._hidden[0][0].shape[0] != b * d:
            self._hidden = fresh
        hist = torch.cat([o[:, self.layout["PAST_OBJ_VAL_DELTAS"]],
                          o[:, self.layout["PAST_LOC_DELTAS"]]], dim=-1)
        new_episode = (hist == 0).all(-1).repeat_interleave(d).unsqueeze(-1)
        hidden = [(torch.where(new_episode, h0, h), torch.where(new_episode, c0, c))
                  for (h, c), (h0, c0) in zip(self._hidden, fresh, strict=True)]
        step, self._hidden = self.net(g, hidden)
        return step / self.max_step


LSTM_FORMAT = "optenv.bptt.lstm/1"


def save_lstm(path: str, net: CoordinatewiseLSTM, extra: dict[str, Any] | None = None) -> None:
    """Write the net (config + weights + ``extra`` metadata) atomically to ``path``."""
    save_module(path, LSTM_FORMAT, net, extra)


def load_lstm(path: str, map_location: str | torch.device = "cpu"
              ) -> tuple[CoordinatewiseLSTM, dict[str, Any]]:
    """The net and its ``extra`` metadata from :func:`save_lstm`; ValueError if not one."""
    return load_module(path, LSTM_FORMAT, "a saved optenv LSTM optimiser", CoordinatewiseLSTM,
                       map_location)
