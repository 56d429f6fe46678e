"""Helpers shared by the vector-env test files (tests/optenv/test_vector_*.py).

A plain module rather than conftest.py because ``MODES`` parametrises tests at import time;
pytest's default (prepend) import mode puts this folder on ``sys.path``, so the test files
import it by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

#: Every autoreset mode the vector env supports.
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


def to_numpy(t: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array, to compare with the single env."""
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def random_actions(rng: np.random.Generator, n: int, d: int, scale: float = 1.5) -> np.ndarray:
    """[n, d] uniform actions in [-scale, scale]: beyond [-1, 1], so clipping is exercised."""
    return rng.uniform(-scale, scale, size=(n, d))


class ReplayCalls:
    """Stands in for a captured CUDA graph on the CPU: replaying runs the captured work."""

    def __init__(self, work: Any) -> None:
        self.work = work

    def replay(self) -> None:
        self.work()
