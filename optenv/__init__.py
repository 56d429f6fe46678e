"""optenv: optimisation as a reinforcement-learning problem.

``import optenv`` registers the Gymnasium ids ``optenv/Quadratic-v0``,
``optenv/LogisticRegression-v0``, ``optenv/RobustRegression-v0`` and ``optenv/NeuralNet-v0``
(:data:`BUILTIN_IDS`), and the neural-net training ids ``optenv/MLPClassifier-v0`` and its
variants (:data:`MLP_IDS`)::

    import gymnasium as gym
    import optenv  # noqa: F401

    env = gym.make("optenv/LogisticRegression-v0")
    venv = gym.make_vec("optenv/LogisticRegression-v0", num_envs=1024, device="cpu")
    rows = gym.make("optenv/NeuralNet-v0", observation="coordinatewise")  # obs [d, k]

Feature sets for the coordinatewise observation: :data:`optenv.features.FEATURE_SETS`.
A trained coordinatewise optimiser trains a torch model as a ``torch.optim.Optimizer``:
:class:`optenv.LearnedOptimizer`, with the pretrained ones of :mod:`optenv.pretrained`.
"""

from __future__ import annotations

from optenv import pretrained
from optenv.core import CoreStep, OptimizationCore, StateLayout
from optenv.env import OptimizationEnv
from optenv.evaluate import Evaluation, evaluate
from optenv.families import (
    FAMILIES,
    CoordinateGroup,
    FunctionFamily,
    LogisticRegression,
    MLPClassifier,
    NeuralNet,
    ObjectiveFamily,
    Quadratic,
    RobustRegression,
    make_family,
    register_family,
)
from optenv.features import FEATURE_SETS, OBSERVATION_MODES
from optenv.optim import LearnedOptimizer
from optenv.registration import (
    BUILTIN_IDS,
    MLP_IDS,
    family_of,
    register_envs,
    register_objective,
)
from optenv.rng import KeyedRNG, instance_keys
from optenv.vector import OptimizationVectorEnv, numpy_vector_env

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_IDS",
    "FAMILIES",
    "FEATURE_SETS",
    "MLP_IDS",
    "OBSERVATION_MODES",
    "CoordinateGroup",
    "CoreStep",
    "Evaluation",
    "FunctionFamily",
    "KeyedRNG",
    "LearnedOptimizer",
    "LogisticRegression",
    "MLPClassifier",
    "NeuralNet",
    "ObjectiveFamily",
    "OptimizationCore",
    "OptimizationEnv",
    "OptimizationVectorEnv",
    "Quadratic",
    "RobustRegression",
    "StateLayout",
    "__version__",
    "evaluate",
    "family_of",
    "instance_keys",
    "make_family",
    "numpy_vector_env",
    "pretrained",
    "register_envs",
    "register_family",
    "register_objective",
]

register_envs()
