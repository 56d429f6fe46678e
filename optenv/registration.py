"""Gymnasium ids for the built-in families, registered idempotently on ``import optenv``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from optenv.families import FAMILIES, ObjectiveFamily, make_family

__all__ = ["BUILTIN_IDS", "DEFAULT_HORIZON", "register_envs", "register_objective"]

DEFAULT_HORIZON = 40
ENTRY_POINT = "optenv.env:OptimizationEnv"
VECTOR_ENTRY_POINT = "optenv.vector:OptimizationVectorEnv"
BUILTIN_IDS: tuple[str, ...] = tuple(
    f"optenv/{name}-v0" for name in ("Quadratic", "LogisticRegression", "RobustRegression",
                                     "NeuralNet")
)


def register_objective(
    env_id: str,
    family: str,
    *,
    max_episode_steps: int = DEFAULT_HORIZON,
    **kwargs: Any,
) -> None:
    """Register ``env_id`` for ``gym.make`` / ``gym.make_vec`` on a registered family name.

    ``kwargs`` (JSON-serialisable: family arguments, ``observation``, ``features``, ``history``,
    ``max_step``, ``split``, ...)
    become the id's defaults. Registering the same id with the same arguments again does
    nothing; with different ones it raises ValueError.
    """
    if family not in FAMILIES:
        raise ValueError(f"family: got {family!r}, allowed: {', '.join(sorted(FAMILIES))} "
                         "(register yours first with optenv.register_family)")
    make_family(family, **{k: v for k, v in kwargs.items() if k not in _ENV_KWARGS})
    spec_kwargs = {"family": family, **kwargs}
    if env_id in gym.registry:
        old = gym.registry[env_id]
        if old.kwargs == spec_kwargs and old.max_episode_steps == max_episode_steps:
            return
        raise ValueError(f"env_id: {env_id!r} is already registered with other arguments")
    gym.register(
        id=env_id,
        entry_point=ENTRY_POINT,
        vector_entry_point=VECTOR_ENTRY_POINT,
        max_episode_steps=max_episode_steps,
        kwargs=spec_kwargs,
    )


#: Spec kwargs that configure the env rather than its family (family_of leaves them out).
_ENV_KWARGS = frozenset({"history", "max_step", "split", "dtype", "divergence_penalty",
                         "observation", "features"})


def register_envs() -> None:
    """Register every built-in id (safe to call any number of times)."""
    for env_id in BUILTIN_IDS:
        name = env_id.split("/")[1].rsplit("-", 1)[0]
        register_objective(env_id, name)


def family_of(env_id: str) -> ObjectiveFamily:
    """The family behind a registered optenv id, built with the id's arguments."""
    spec = gym.spec(env_id)
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in _ENV_KWARGS and k != "family"}
    return make_family(spec.kwargs["family"], **kwargs)
