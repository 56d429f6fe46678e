"""The neural optimiser policy shared by GPS and BPTT: a Gaussian with an MLP mean on Φ.

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
from optenv.validation import check_int, check_number

__all__ = ["GaussianMLPPolicy", "load_policy", "save_policy"]

POLICY_FORMAT = "optenv.policy.gaussian_mlp/1"


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
