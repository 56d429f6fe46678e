"""A trained SB3 agent as an optimiser: load a run folder, normalise like training, predict.

An agent trained under ``VecNormalize`` saw normalised observations; fed raw ones it acts on
inputs a thousand times off scale. SB3 keeps the statistics in the VecNormalize wrapper, not in
the model, so a bare ``PPO.load`` is the wrong optimiser. :class:`SB3Optimizer` holds the model
and the saved statistics (``vecnormalize.pt``, plain tensors, read with ``weights_only``) and
applies them in ``predict`` — exactly VecNormalize's ``normalize_obs`` — so it works through
:func:`optenv.evaluate.evaluate` and ``optenv compare --methods ppo:DIR``.

Recurrent agents: :func:`optenv.evaluate.evaluate` calls ``predict(obs, deterministic=...)``
once per iteration on the whole batch and ``reset()`` before a run. With no ``state`` and no
``episode_start`` given, :class:`SB3Optimizer` keeps the LSTM state itself (episode start on
the first call after ``reset()``, or when the batch size changes); given either, it passes them
through untouched, as SB3's own ``predict`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.sb3_hyperparams import ALGORITHMS, Hyperparams
from baselines.sb3_zip import load_sb3_model, spaces_for_shapes
from optenv.checkpoint import atomic_write, load_tagged, read_json_object, save_tagged
from optenv.features import observer_for
from optenv.validation import check_choice

__all__ = [
    "MODEL_FILE",
    "VECNORM_FILE",
    "SB3Optimizer",
    "load_ppo",
    "load_recurrent_ppo",
    "load_run",
    "load_sac",
    "load_td3",
    "normalization_state",
    "save_artifacts",
]

MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pt"
VECNORM_FORMAT = "baselines.sb3.vecnormalize/1"


def normalization_state(venv: Any) -> dict[str, Any] | None:
    """VecNormalize's statistics and settings as plain tensors/numbers (None if ``venv`` is not
    normalised), so they load with ``torch.load(weights_only=True)`` — no pickle."""
    from stable_baselines3.common.vec_env import VecNormalize

    if not isinstance(venv, VecNormalize):
        return None

    def rms(r: Any) -> dict[str, Any]:
        return {"mean": torch.as_tensor(np.asarray(r.mean, dtype=np.float64)),
                "var": torch.as_tensor(np.asarray(r.var, dtype=np.float64)),
                "count": float(r.count)}

    return {"obs_rms": rms(venv.obs_rms), "ret_rms": rms(venv.ret_rms),
            "norm_obs": bool(venv.norm_obs), "norm_reward": bool(venv.norm_reward),
            "clip_obs": float(venv.clip_obs), "clip_reward": float(venv.clip_reward),
            "gamma": float(venv.gamma), "epsilon": float(venv.epsilon)}


def restore_normalization(venv: Any, state: Mapping[str, Any]) -> None:
    """Put :func:`normalization_state`'s statistics back into a VecNormalize (for resume)."""
    for name in ("obs_rms", "ret_rms"):
        r, saved = getattr(venv, name), state[name]
        r.mean = saved["mean"].numpy().copy()
        r.var = saved["var"].numpy().copy()
        r.count = float(saved["count"])


def save_artifacts(out: Path, model: Any, venv: Any) -> None:
    """``model.zip`` (SB3's own format: ``PPO.load`` reads it) and ``vecnormalize.pt``,
    each written atomically; the statistics go first, so a model never sits next to stale
    ones from an older save."""
    import io

    state = normalization_state(venv)
    if state is not None:
        save_tagged(out / VECNORM_FILE, VECNORM_FORMAT, state)
    else:
        (out / VECNORM_FILE).unlink(missing_ok=True)
    buf = io.BytesIO()
    model.save(buf)
    atomic_write(out / MODEL_FILE, lambda fh: fh.write(buf.getvalue()), binary=True)


class SB3Optimizer:
    """A trained SB3 model plus its observation normalisation, with SB3's ``predict``.

    Args:
        model: the SB3 model (PPO, SAC, TD3, RecurrentPPO).
        normalization: :func:`normalization_state` of the training env, or None.
        name: label for results tables.
    """

    def __init__(self, model: Any, normalization: Mapping[str, Any] | None = None,
                 name: str | None = None) -> None:
        self.model = model
        self.name = name or type(model).__name__.lower()
        self.recurrent = hasattr(model.policy, "lstm_actor")
        self._mean = self._std = None
        self._clip = np.inf
        if normalization is not None and normalization.get("norm_obs", True):
            obs = normalization["obs_rms"]
            self._mean = obs["mean"].numpy()
            self._std = np.sqrt(obs["var"].numpy() + normalization["epsilon"])
            self._clip = float(normalization["clip_obs"])
        self._state: tuple[np.ndarray, ...] | None = None
        self._batch: int | None = None

    def reset(self) -> None:
        """Forget the recurrent state: the next ``predict`` starts new episodes."""
        self._state, self._batch = None, None

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """VecNormalize's ``normalize_obs`` with the saved statistics (identity if none)."""
        obs = np.asarray(obs, dtype=np.float32)
        if self._mean is None:
            return obs
        out = np.clip((obs - self._mean) / self._std, -self._clip, self._clip)
        return out.astype(np.float32)

    def predict(self, observation: np.ndarray, state: tuple[np.ndarray, ...] | None = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions for (batched or single) raw env observations, as ``model.predict`` gives
        for normalised ones. See the module docstring for how recurrent state is kept."""
        obs = self.normalize(observation)
        if not self.recurrent:
            return self.model.predict(obs, deterministic=deterministic)
        if state is not None or episode_start is not None:
            return self.model.predict(obs, state=state, episode_start=episode_start,
                                      deterministic=deterministic)
        batch = obs.shape[0] if obs.ndim == 2 else 1
        if self._state is None or self._batch != batch:
            starts = np.ones(batch, dtype=bool)
            self._state = None
        else:
            starts = np.zeros(batch, dtype=bool)
        action, self._state = self.model.predict(obs, state=self._state, episode_start=starts,
                                                 deterministic=deterministic)
        self._batch = batch
        return action, self._state


def _run_folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name == MODEL_FILE:
        p = p.parent
    if not (p / MODEL_FILE).is_file():
        raise ValueError(f"path: {str(path)!r} holds no {MODEL_FILE}; allowed: a folder written "
                         "by 'optenv train ppo|sac|td3|recurrent-ppo --out DIR'")
    return p


def load_run(path: str | Path, algorithm: str, context: Mapping[str, Any] | None = None
             ) -> SB3Optimizer:
    """The trained agent in run folder ``path`` as an :class:`SB3Optimizer`.

    ``algorithm`` must be the one the run trained (from its ``config.json``); ``context``
    (``optenv compare``'s: env_id, family, history, device, ...) gives the spaces of the env
    the agent will act in, so a model for another observation size is a clear ValueError, not
    a shape error mid-evaluation. Another env id of the same sizes is allowed (transfer to
    unseen families is a question the study asks). Nothing in the folder is unpickled: the
    model loads through :func:`baselines.sb3_zip.load_sb3_model` with the run's
    hyper-parameters from its ``config.json``, the statistics with ``weights_only``.
    """
    check_choice("algorithm", algorithm, ALGORITHMS)
    folder = _run_folder(path)
    config_path = folder / "config.json"
    config = read_json_object(config_path, "path") if config_path.is_file() else {}
    trained = config.get("algorithm")
    if trained is not None and trained != algorithm:
        raise ValueError(f"path: {str(path)!r} holds a {trained!r} run, not {algorithm!r}; "
                         f"allowed: {trained}:{path}")
    ctx = dict(context or {})
    family = ctx.get("family")
    obs_space = action_space = None
    if family is not None:
        shape = observer_for({"history": 25, **ctx}, f"{algorithm}:{path}").shape
        obs_space, action_space = spaces_for_shapes(shape, int(family.d))
    model_kwargs: dict[str, Any] = {}
    policy = None
    if isinstance(config.get("hyperparams"), dict):
        try:
            # action_dim only sizes the exploration noise, which evaluation never adds
            hp = Hyperparams(algorithm, config["hyperparams"],
                             action_dim=int(family.d) if family is not None else 1)
        except ValueError as err:
            raise ValueError(f"path: {str(config_path)!r}: {err}") from err
        model_kwargs = {k: v for k, v in hp.model_kwargs.items() if k != "action_noise"}
        policy = hp.policy
    # A 1-entry replay buffer spares allocating the training one (hundreds of MB for SAC).
    model = load_sb3_model(algorithm, folder / MODEL_FILE,
                           what=f"path: {str(folder / MODEL_FILE)!r}", obs_space=obs_space,
                           action_space=action_space, model_kwargs=model_kwargs, policy=policy,
                           replace={"buffer_size": 1}, device=ctx.get("device", "cpu"))
    normalization = None
    if (folder / VECNORM_FILE).is_file():
        normalization = load_tagged(folder / VECNORM_FILE, VECNORM_FORMAT,
                                    "VecNormalize statistics")
    return SB3Optimizer(model, normalization, name=algorithm)


def load_ppo(path: str, context: dict[str, Any]) -> SB3Optimizer:
    """``optenv compare --methods ppo:DIR`` loader."""
    return load_run(path, "ppo", context)


def load_sac(path: str, context: dict[str, Any]) -> SB3Optimizer:
    """``optenv compare --methods sac:DIR`` loader."""
    return load_run(path, "sac", context)


def load_td3(path: str, context: dict[str, Any]) -> SB3Optimizer:
    """``optenv compare --methods td3:DIR`` loader."""
    return load_run(path, "td3", context)


def load_recurrent_ppo(path: str, context: dict[str, Any]) -> SB3Optimizer:
    """``optenv compare --methods recurrent-ppo:DIR`` loader."""
    return load_run(path, "recurrent-ppo", context)
