"""Stable-Baselines3 on the batched vector env, without N single envs in between.

SB3 wants its own ``VecEnv`` interface: numpy arrays, same-step autoreset, and a list of info
dicts with ``terminal_observation`` for the envs that just finished. :class:`SB3VecEnv` gives
that over one :class:`~optenv.vector.OptimizationVectorEnv` in SAME_STEP mode, so all N
objectives are still stepped as one torch batch. The list of N info dicts is SB3's format and
the one per-env loop left (it only builds dicts).

Example::

    from stable_baselines3 import PPO
    from optenv.sb3 import SB3VecEnv

    venv = SB3VecEnv("optenv/LogisticRegression-v0", num_envs=64)
    PPO("MlpPolicy", venv, n_steps=40).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from optenv.vector import OptimizationVectorEnv

__all__ = ["SB3VecEnv"]


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over an :class:`OptimizationVectorEnv` (or an optenv id).

    Args:
        env: a vector env built with ``autoreset_mode="SameStep"``, or a registered id, from
            which one is made with ``gym.make_vec(env, num_envs, autoreset_mode=SAME_STEP,
            **kwargs)``.
        num_envs: with an id, the number of envs (default 8).
        kwargs: with an id, further env arguments (``device``, ``dtype``, family arguments,
            ``observation="coordinatewise"`` and ``features``: SB3 then gets rows [N, d, k],
            which its MlpPolicy flattens, ...).
    """

    def __init__(self, env: OptimizationVectorEnv | str, num_envs: int | None = None,
                 **kwargs: Any) -> None:
        if isinstance(env, str):
            env = gym.make_vec(env, num_envs=8 if num_envs is None else num_envs,
                               vectorization_mode="vector_entry_point",
                               autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
        elif num_envs is not None or kwargs:
            raise ValueError("num_envs/kwargs: only allowed when env is an id, "
                             f"got {type(env).__name__}")
        venv = env.unwrapped if hasattr(env, "unwrapped") else env
        if not isinstance(venv, OptimizationVectorEnv):
            raise TypeError(f"env: got {type(venv).__name__}, allowed: an optenv id or "
                            "OptimizationVectorEnv")
        if venv.autoreset_mode is not AutoresetMode.SAME_STEP:
            raise ValueError(f"env: autoreset_mode is {venv.autoreset_mode.value!r}, allowed: "
                             "'SameStep' (SB3 resets in the same step)")
        self.venv = venv
        self.render_mode = venv.render_mode
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: torch.Tensor | None = None

    def reset(self) -> VecEnvObs:
        seeds = None if self._seeds[0] is None else [int(s) for s in self._seeds]
        obs, _ = self.venv.reset(seed=seeds)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = torch.as_tensor(np.asarray(actions, dtype=np.float64))

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait: call step_async first")
        obs, reward, term, trunc, infos = self.venv.step(self._actions)
        self._actions = None
        term_np, trunc_np = term.cpu().numpy(), trunc.cpu().numpy()
        dones = term_np | trunc_np
        f = infos["f"].cpu().numpy()
        final_obs = infos["final_obs"].cpu().numpy()
        final_f = infos["final_info"]["f"].cpu().numpy()
        out_infos: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            info: dict[str, Any] = {"f": float(f[i])}
            if dones[i]:
                info["terminal_observation"] = final_obs[i]
                info["TimeLimit.truncated"] = bool(trunc_np[i] and not term_np[i])
                info["f"] = float(final_f[i])
            out_infos.append(info)
        return (obs.cpu().numpy(), reward.cpu().numpy().astype(np.float32), dones, out_infos)

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if self._indices(indices) != list(range(self.num_envs)):
            raise ValueError("indices: the batched env shares its attributes; allowed: all envs")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render() if self.venv.render_mode == "rgb_array" else None
        shown: Iterable[Any] = frames or ()
        return [*shown, *([None] * (self.num_envs - len(frames or ())))]
