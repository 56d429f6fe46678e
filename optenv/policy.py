"""The neural optimiser policies shared by GPS and BPTT.

Two classes. :class:`GaussianMLPPolicy` (Li & Malik 2016) maps the flat observation Φ to the whole
step, so it is tied to one d. :class:`CoordinatewisePolicy` (Li & Malik 2017) runs one small
network on each coordinate's row of the coordinatewise observation, with parameters shared
across coordinates, so it runs on any d and transfers between models.

The flat policy:

Li & Malik's policy maps the observation Φ (the state without CUR_LOC) to the step Δx: a
Gaussian whose mean is an MLP (default one hidden layer of 50 ReLU units) and whose covariance is
diagonal. GPS trains it by regression on its controllers' actions; the BPTT baseline trains the
SAME class by back-propagating through unrolls, so the study compares training methods on one
architecture. Outputs are steps in the objective's units; as an env policy it returns
``step / max_step`` (the env multiplies by ``max_step`` again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from optenv.checkpoint import load_module, save_module
from optenv.families.groups import GROUP_KINDS, check_groups
from optenv.features import check_features
from optenv.validation import check_int, check_number

__all__ = [
    "CELLS",
    "CoordinatewiseEnvPolicy",
    "CoordinatewisePolicy",
    "GaussianMLPPolicy",
    "load_coordinatewise_policy",
    "load_policy",
    "save_coordinatewise_policy",
    "save_policy",
]

POLICY_FORMAT = "optenv.policy.gaussian_mlp/1"
COORDINATEWISE_FORMAT = "optenv.policy.coordinatewise/1"
#: The per-coordinate networks :class:`CoordinatewisePolicy` offers.
CELLS = ("mlp", "lstm")
#: Per-coordinate recurrent state of the LSTM cell: (h, c), each [B·d, hidden].
CellState = tuple[torch.Tensor, torch.Tensor]


class GaussianMLPPolicy(nn.Module):
    """π(Δx | Φ) = N(MLP(Φ), diag(exp(2·log_std))).

    Args:
        obs_dim: length of Φ (``env.observation_space.shape[0]``).
        d: number of variables (the step's length).
        hidden: hidden layer widths (default (50,), the authors').
        init_std: initial standard deviation of every step coordinate.
        obs_scale: Φ is multiplied by this before the MLP (a fixed input normalisation;
            GPS may set a per-feature scale from its samples).
    """

    def __init__(self, obs_dim: int, d: int, hidden: Sequence[int] = (50,),
                 init_std: float = 0.1, obs_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        check_int("obs_dim", obs_dim, 1)
        check_int("d", d, 1)
        hidden = tuple(int(h) for h in hidden)
        for h in hidden:
            check_int("hidden", h, 1)
        check_number("init_std", init_std)
        self.obs_dim, self.d, self.hidden = obs_dim, d, hidden
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, d))
        self.mean_net = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((d,), float(torch.log(torch.tensor(init_std)))))
        scale = torch.ones(obs_dim) if obs_scale is None else torch.as_tensor(obs_scale).float()
        if scale.shape != (obs_dim,):
            raise ValueError(f"obs_scale: got shape {tuple(scale.shape)}, allowed: ({obs_dim},)")
        self.register_buffer("obs_scale", scale)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (without obs_scale, which is saved as a buffer)."""
        return {"obs_dim": self.obs_dim, "d": self.d, "hidden": list(self.hidden)}

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean step [B, d] for observations [B, obs_dim]."""
        w = self.mean_net[0].weight
        return self.mean_net(obs.to(w.dtype) * self.obs_scale.to(w.dtype))

    @property
    def variance(self) -> torch.Tensor:
        """Diagonal of the step covariance, [d]."""
        return torch.exp(2.0 * self.log_std)

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A step drawn from π(·|Φ), [B, d]."""
        mean = self(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                            dtype=mean.dtype)
        return mean + noise * torch.exp(self.log_std).to(mean.dtype)

    def as_env_policy(self, max_step: float) -> EnvPolicy:
        """A callable acting in an optenv env: observations → ``mean step / max_step``."""
        return EnvPolicy(self, max_step)


class EnvPolicy:
    """A :class:`GaussianMLPPolicy` as a deterministic env policy (the mean step, rescaled)."""

    def __init__(self, policy: GaussianMLPPolicy, max_step: float) -> None:
        self.policy = policy
        self.max_step = check_number("max_step", max_step)

    @torch.no_grad()
    def __call__(self, obs: Any) -> torch.Tensor:
        w = self.policy.mean_net[0].weight
        o = torch.as_tensor(obs).to(device=w.device)
        squeeze = o.dim() == 1
        step = self.policy(o.unsqueeze(0) if squeeze else o) / self.max_step
        return step[0] if squeeze else step


def save_policy(path: str, policy: GaussianMLPPolicy, extra: dict[str, Any] | None = None) -> None:
    """Write the policy (config, weights, ``extra`` metadata) atomically to ``path``."""
    save_module(path, POLICY_FORMAT, policy, extra)


def load_policy(path: str, map_location: str | torch.device = "cpu"
                ) -> tuple[GaussianMLPPolicy, dict[str, Any]]:
    """The policy and its ``extra`` metadata from :func:`save_policy`; ValueError if not one."""
    return load_module(path, POLICY_FORMAT, "a saved optenv GaussianMLPPolicy",
                       GaussianMLPPolicy, map_location)


class CoordinatewisePolicy(nn.Module):
    """π(Δx_j | row_j) = N(net(row_j, kind_j), exp(2·log_std[kind_j])), the same net for every j.

    Li & Malik (2017, §3): the policy sees one coordinate's row of the coordinatewise
    observation (its own gradient and step history and the shared objective changes; never its
    value x_j, so the step is translation-invariant) plus the kind of the coordinate's group
    (weight, bias, other: :data:`optenv.families.groups.GROUP_KINDS`, one-hot), and outputs that
    coordinate's mean step. Parameters are shared across coordinates — so permuting the
    coordinates of a group permutes their steps, and the policy runs on any d, any number and
    size of groups — and the diagonal covariance has one variance per kind.

    Args:
        width: k, the length of a coordinate's row (``env.observation_space.shape[-1]``).
        features: the name of the feature set the rows come from (saved with the policy; its
            env wrapper computes that set from flat observations, and a loader must refuse an
            env that emits another set: rows of two sets can have the same width).
        hidden: hidden widths of the MLP (``cell="mlp"``), or ``(cells,)`` of the LSTM.
        cell: ``"mlp"`` (stateless) or ``"lstm"`` (one LSTM state per coordinate).
        kinds: the group kinds it distinguishes (default all of GROUP_KINDS).
        init_std: initial standard deviation of every step coordinate.
        obs_scale: [width] fixed per-column input scale (GPS may set it from its samples).
    """

    def __init__(self, width: int, features: str = "li-malik-2016", hidden: Sequence[int] = (50,),
                 cell: str = "mlp", kinds: Sequence[str] | None = None, init_std: float = 0.1,
                 obs_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        check_int("width", width, 1)
        if cell not in CELLS:
            raise ValueError(f"cell: got {cell!r}, allowed: {', '.join(CELLS)}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or (cell == "lstm" and len(hidden) != 1):
            raise ValueError(f"hidden: got {hidden!r}, allowed: one or more widths for the MLP, "
                             "exactly one (the cells) for the LSTM")
        for h in hidden:
            check_int("hidden", h, 1)
        kinds = tuple(GROUP_KINDS if kinds is None else kinds)
        unknown = [k for k in kinds if k not in GROUP_KINDS]
        if not kinds or unknown or len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds: got {kinds!r}, allowed: distinct values of {GROUP_KINDS}")
        check_number("init_std", init_std)
        self.width, self.features, self.hidden, self.cell, self.kinds = (
            width, str(features), hidden, cell, kinds)
        n_in = width + len(kinds)
        if cell == "lstm":
            self.lstm = nn.LSTMCell(n_in, hidden[0])
            self.readout = nn.Linear(hidden[0], 1)
        else:
            layers: list[nn.Module] = []
            for h in hidden:
                layers += [nn.Linear(n_in, h), nn.ReLU()]
                n_in = h
            layers.append(nn.Linear(n_in, 1))
            self.mean_net = nn.Sequential(*layers)
        log_std = float(torch.log(torch.tensor(init_std)))
        self.log_std = nn.Parameter(torch.full((len(kinds),), log_std))
        scale = torch.ones(width) if obs_scale is None else torch.as_tensor(obs_scale).float()
        if scale.shape != (width,):
            raise ValueError(f"obs_scale: got shape {tuple(scale.shape)}, allowed: ({width},)")
        self.register_buffer("obs_scale", scale)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (no d: the policy runs on any d)."""
        return {"width": self.width, "features": self.features, "hidden": list(self.hidden),
                "cell": self.cell, "kinds": list(self.kinds)}

    @property
    def recurrent(self) -> bool:
        """Whether the policy carries a per-coordinate state between steps."""
        return self.cell == "lstm"

    def kind_index(self, groups: Sequence[Any], d: int | None = None) -> torch.Tensor:
        """[d] int64: each coordinate's kind, as an index into ``kinds``, from a family's
        :meth:`~optenv.families.ObjectiveFamily.coordinate_groups`; ValueError for a kind the
        policy was not trained with, or groups that do not partition the coordinates."""
        total = (1 + max(int(g.index.max()) for g in groups if g.size) if d is None else d) \
            if groups else 0
        groups = check_groups(groups, total)
        out = torch.full((total,), -1, dtype=torch.int64)
        for g in groups:
            if g.kind not in self.kinds:
                raise ValueError(f"groups: group {g.name!r} has kind {g.kind!r}, which this "
                                 f"policy was not trained with; allowed: {', '.join(self.kinds)}")
            out[g.index] = self.kinds.index(g.kind)
        return out

    def initial_state(self, batch: int, d: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> CellState | None:
        """Zero per-coordinate state for ``batch`` models of ``d`` coordinates (None: MLP)."""
        if not self.recurrent:
            return None
        z = torch.zeros(batch * d, self.hidden[0], device=device, dtype=dtype)
        return (z, z)

    def forward(self, rows: torch.Tensor, kinds: torch.Tensor,
                state: CellState | None = None) -> tuple[torch.Tensor, CellState | None]:
        """Mean steps [B, d] for rows [B, d, width] and coordinate kinds [d] (or [B, d]);
        returns the LSTM's next state too (None for the MLP; a missing LSTM state is zero)."""
        b, d, k = rows.shape
        if k != self.width:
            raise ValueError(f"rows: got {k} columns, allowed: {self.width} (the width this "
                             f"policy was built for, feature set {self.features!r})")
        w = self.log_std
        one_hot = nn.functional.one_hot(kinds.to(rows.device), len(self.kinds)).to(w.dtype)
        inp = torch.cat([rows.to(w.dtype) * self.obs_scale.to(w.dtype),
                         one_hot.expand(b, d, -1)], dim=-1)
        if not self.recurrent:
            return self.mean_net(inp).squeeze(-1), None
        if state is None:
            state = self.initial_state(b, d, rows.device, w.dtype)
        h, c = self.lstm(inp.reshape(b * d, -1), state)
        return self.readout(h).reshape(b, d), (h, c)

    def variance(self, kinds: torch.Tensor) -> torch.Tensor:
        """Diagonal of the step covariance for coordinates of these kinds ([d] → [d])."""
        return torch.exp(2.0 * self.log_std)[kinds.to(self.log_std.device)]

    def as_env_policy(self, max_step: float, groups: Sequence[Any],
                      layout: Any = None) -> CoordinatewiseEnvPolicy:
        """A callable acting in an optenv env whose family has these coordinate groups."""
        return CoordinatewiseEnvPolicy(self, max_step, groups, layout)


class CoordinatewiseEnvPolicy:
    """A :class:`CoordinatewisePolicy` as a deterministic env policy: the mean step / max_step.

    Takes coordinatewise observations [d, k] or [B, d, k] (an env in the coordinatewise mode
    with the policy's feature set); given the env's :class:`~optenv.core.StateLayout`
    (``layout``) it takes flat observations [obs_dim] or [B, obs_dim] instead and computes the
    rows of the policy's feature set (:data:`optenv.features.FEATURE_SETS`) itself.

    The iteration t of each observation: pass ``t=`` (an int, or one per row: the envs'
    ``info["t"]``) and it is used as given; without it, t is counted from ``reset()``, every
    row of a batch at the same iteration (as in :func:`optenv.evaluate.evaluate`). An LSTM
    policy keeps its per-coordinate state between calls; ``reset()`` clears it and the count.

    Why ``t=`` exists: a vector env restarts each of its envs on its own (autoresets), which a
    shared counter and a shared recurrent state cannot follow. With ``t=infos["t"]`` the rows
    whose t is 0 start a new episode: their recurrent state is cleared before the step, the
    others keep theirs. That holds in every autoreset mode, since t is the iteration of the
    observation the policy is given.
    """

    def __init__(self, policy: CoordinatewisePolicy, max_step: float, groups: Sequence[Any],
                 layout: Any = None) -> None:
        self.policy = policy
        self.max_step = check_number("max_step", max_step)
        self.kinds = policy.kind_index(groups)
        self.layout = layout
        self.features = check_features(policy.features) if layout is not None else None
        self.state: CellState | None = None
        self.t = 0

    def reset(self) -> None:
        self.state = None
        self.t = 0

    def _iterations(self, t: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        """``t`` as an int64 tensor [batch] (None when not given); ValueError if it is not."""
        if t is None:
            return None
        tt = torch.as_tensor(t, device=device)
        if tt.is_floating_point() or tt.is_complex() or tt.dtype == torch.bool:
            raise ValueError(f"t: got dtype {tt.dtype}, allowed: integers (the envs' info['t'])")
        if tt.dim() > 1 or (tt.dim() == 1 and tt.numel() != batch):
            raise ValueError(f"t: got shape {tuple(tt.shape)}, allowed: () or ({batch},) "
                             "(one iteration per observation)")
        if bool((tt < 0).any()):
            raise ValueError(f"t: got {tt.tolist()}, allowed: iterations >= 0")
        return tt.to(torch.int64).expand(batch)

    @torch.no_grad()
    def __call__(self, obs: Any, t: Any = None) -> torch.Tensor:
        o = torch.as_tensor(obs).to(device=self.policy.log_std.device)
        squeeze = o.dim() == (1 if self.features is not None else 2)
        batch = 1 if squeeze else o.shape[0]
        given = self._iterations(t, batch, o.device)
        if self.features is not None:
            iteration = given.reshape(()) if squeeze and given is not None else given
            o = self.features.rows(self.layout, o, self.t if iteration is None else iteration)
            if given is None:
                self.t += 1
        rows = o.unsqueeze(0) if squeeze else o
        if self.state is not None and self.state[0].shape[0] != rows.shape[0] * rows.shape[1]:
            self.state = None  # a new batch size: a new run
        if self.state is not None and given is not None:
            keep = (given != 0).repeat_interleave(rows.shape[1]).unsqueeze(1)
            h, c = self.state
            self.state = (torch.where(keep, h, 0.0), torch.where(keep, c, 0.0))
        mean, self.state = self.policy(rows, self.kinds, self.state)
        step = mean / self.max_step
        return step[0] if squeeze else step


def save_coordinatewise_policy(path: str, policy: CoordinatewisePolicy,
                               extra: dict[str, Any] | None = None) -> None:
    """Write a coordinatewise policy (config, weights, ``extra``) atomically to ``path``."""
    save_module(path, COORDINATEWISE_FORMAT, policy, extra)


def load_coordinatewise_policy(path: str, map_location: str | torch.device = "cpu"
                               ) -> tuple[CoordinatewisePolicy, dict[str, Any]]:
    """The policy and its ``extra`` from :func:`save_coordinatewise_policy`; ValueError if the
    file is not one."""
    return load_module(path, COORDINATEWISE_FORMAT, "a saved optenv CoordinatewisePolicy",
                       CoordinatewisePolicy, map_location)
