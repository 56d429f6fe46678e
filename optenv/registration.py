"""Gymnasium ids for the built-in families, registered idempotently on ``import optenv``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from optenv.families import FAMILIES, ObjectiveFamily, make_family

__all__ = ["BUILTIN_IDS", "DEFAULT_HORIZON", "MLP_IDS", "MLP_VARIANTS", "register_envs",
           "register_objective"]

DEFAULT_HORIZON = 40
ENTRY_POINT = "optenv.env:OptimizationEnv"
VECTOR_ENTRY_POINT = "optenv.vector:OptimizationVectorEnv"
BUILTIN_IDS: tuple[str, ...] = tuple(
    f"optenv/{name}-v0" for name in ("Quadratic", "LogisticRegression", "RobustRegression",
                                     "NeuralNet")
)

#: Neural-net training (Li & Malik 2017, §4): id → (horizon, MLPClassifier arguments). The first
#: is the meta-training objective (the paper's net, batch and horizon, on the bundled digits);
#: the others change one axis the paper meta-tests on: a larger net (100 inputs, 200 hidden
#: units), noisier gradients (minibatches of 10), a longer horizon (800), another data set.
MLP_VARIANTS: dict[str, tuple[int, dict[str, Any]]] = {
    "optenv/MLPClassifier-v0": (400, {}),
    "optenv/MLPClassifierLarge-v0": (400, {"inputs": 100, "hidden": [200]}),
    "optenv/MLPClassifierNoisy-v0": (400, {"batch_size": 10}),
    "optenv/MLPClassifierLong-v0": (800, {}),
    "optenv/MLPClassifierMNIST1D-v0": (400, {"dataset": "mnist1d"}),
}
MLP_IDS: tuple[str, ...] = tuple(MLP_VARIANTS)


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
    """Register every built-in id, the 2016 families' and the neural-net ones (safe to call
    any number of times)."""
    for env_id in BUILTIN_IDS:
        name = env_id.split("/")[1].rsplit("-", 1)[0]
        register_objective(env_id, name)
    for env_id, (horizon, kwargs) in MLP_VARIANTS.items():
        register_objective(env_id, "MLPClassifier", max_episode_steps=horizon, **kwargs)


def family_of(env_id: str) -> ObjectiveFamily:
    """The family behind a registered optenv id, built with the id's arguments."""
    spec = gym.spec(env_id)
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in _ENV_KWARGS and k != "family"}
    return make_family(spec.kwargs["family"], **kwargs)
