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


def step_eager_and_graphed(envs: list[Any], mode: AutoresetMode, steps: int,
                           reset_at: int) -> tuple[Any, ...]:
    """Step ``envs[0]`` (eager) and ``envs[1]`` (the graph path, on the accelerators' reset
    path) with the same random actions, asserting identical outputs at every step; in DISABLED
    mode, envs 0 and 2 are reset by mask after step ``reset_at``. Returns the graphed env's last
    outputs. The caller patches warm_up/capture (:class:`ReplayCalls`)."""
    eager, graphed = envs
    n = graphed.num_envs
    graphed._graph_actions = torch.zeros(n, graphed.family.d, dtype=torch.float64)
    # what cuda_graph=True sets up: fixed observation buffer, the ring's order on the device
    graphed._fresh_obs = False
    graphed._ring.device_indexed = True
    graphed._index_resets = eager._index_resets = False  # the accelerators' reset path
    for e in envs:
        e.reset(seed=2)
    rng = np.random.default_rng(3)
    out: tuple[Any, ...] = ()
    for step in range(steps):
        a = torch.as_tensor(random_actions(rng, n, graphed.family.d))
        eager_out, out = (e.step(a) for e in envs)
        for k in range(4):
            torch.testing.assert_close(out[k], eager_out[k], rtol=0, atol=0)
        if mode is AutoresetMode.DISABLED and step == reset_at:
            for e in envs:
                e.reset(options={"reset_mask": torch.tensor([True, False] * (n // 2))})
    return out
