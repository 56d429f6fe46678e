"""Load a Stable-Baselines3 ``model.zip`` without unpickling anything in it.

SB3's zip holds ``data``, a JSON object of the model's attributes, where every value JSON cannot
hold is a cloudpickle (``{":type:": ..., ":serialized:": base64}``): the policy class, the
spaces, the schedules, the last observations, the episode buffers, the replay-buffer class,
``train_freq``, the action noise, and ``policy_kwargs`` when it names a class (``activation_fn``).
``BaseAlgorithm.load`` unpickles each of them (``save_util.json_to_data``) unless its key is in
``custom_objects``, so loading a crafted zip runs its code. The ``*.pth`` members (the policy and
optimiser state dicts, ``pytorch_variables``) are read by SB3 2.9.2 with
``torch.load(weights_only=True)``; older SB3 releases did not pass it.

:func:`load_sb3_model` therefore never hands SB3 the user's bytes. It reads the zip itself,
replaces every serialized entry of ``data`` by ``null`` and supplies each through
``custom_objects`` from what optenv knows — the algorithm's policy class, the spaces of the env
the model is for, the run's own hyper-parameters (its ``config.json``), SB3's defaults, or
nothing for state that training rebuilds — and refuses a zip with a serialized entry it cannot
supply. Each ``.pth`` member is read with ``weights_only=True`` here and written back as plain
tensors. The zip SB3 then loads holds no pickle but torch's tensor files, whatever SB3 version
reads it.
"""

from __future__ import annotations

import inspect
import io
import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from baselines.sb3_hyperparams import algorithm_class

__all__ = ["TRAINING_STATE", "load_sb3_model", "serialized_keys", "spaces_for_shapes"]

#: Serialized entries that are state of the last training session, which SB3 rebuilds when
#: training starts (``_setup_learn``: a reset gives new observations, new episode buffers) and
#: prediction never reads: supplied as None.
TRAINING_STATE = ("_last_obs", "_last_original_obs", "_last_episode_starts", "ep_info_buffer",
                  "ep_success_buffer", "lr_schedule")
#: Serialized entries that shape the networks: without the run's config.json they cannot be
#: supplied (a default would build another network).
NETWORK_KEYS = ("policy_kwargs",)
#: Largest ``data`` member read (a model's attributes are a few kB; this bounds a crafted zip).
MAX_DATA_BYTES = 64 << 20


def spaces_for_shapes(obs_shape: tuple[int, ...], action_dim: int) -> tuple[spaces.Box,
                                                                            spaces.Box]:
    """The observation and action spaces of an optenv env with these shapes: float32
    observations without bounds, steps in [-1, 1] per coordinate (as ``optenv.env`` declares
    them)."""
    return (spaces.Box(-np.inf, np.inf, tuple(obs_shape), np.float32),
            spaces.Box(-1.0, 1.0, (int(action_dim),), np.float32))


def serialized_keys(data: Mapping[str, Any]) -> list[str]:
    """The entries of an SB3 ``data`` object that are cloudpickles (what SB3 would unpickle)."""
    return [k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v]


def declared_shape(entry: Any) -> tuple[int, ...] | None:
    """The shape a serialized Box space's readable attributes declare (its ``_shape``, a JSON
    list); None where there is none."""
    shape = entry.get("_shape") if isinstance(entry, dict) else None
    if isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool)
                                       and n >= 0 for n in shape):
        return tuple(shape)
    return None


def load_sb3_model(algorithm: str, source: str | Path | bytes, *, what: str,
                   obs_space: spaces.Space | None, action_space: spaces.Space | None,
                   model_kwargs: Mapping[str, Any] | None = None, policy: str | None = None,
                   replace: Mapping[str, Any] | None = None, env: Any = None,
                   device: str = "cpu") -> Any:
    """The SB3 model of ``algorithm`` in ``source`` (a model.zip's path or bytes), loaded
    without unpickling (module docstring).

    Args:
        algorithm: the CLI name (``ppo``, ``sac``, ``td3``, ``recurrent-ppo``).
        source: the zip.
        what: how errors name the source (``"path: 'runs/ppo/model.zip'"``).
        obs_space, action_space: the spaces of the env the model is for; None: an optenv env
            of the shapes the zip declares (:func:`spaces_for_shapes`).
        model_kwargs: the run's hyper-parameters as constructor arguments
            (:class:`~baselines.sb3_hyperparams.Hyperparams`' ``model_kwargs``); an entry the
            run did not set takes the constructor's default, as it did in training.
        policy: the policy name the run used (default: the algorithm's ``MlpPolicy`` or
            ``MlpLstmPolicy``).
        replace: plain (JSON) entries to load with another value, e.g. ``{"buffer_size": 1}``
            for a model that will only predict.
        env, device: as ``BaseAlgorithm.load``.

    ValueError starting with ``what`` for a file that is not an SB3 zip, holds a serialized
    entry optenv cannot supply, a ``.pth`` member that is not plain tensors, or weights that do
    not fit the spaces and hyper-parameters.
    """
    cls = algorithm_class(algorithm)
    raw = Path(source).read_bytes() if isinstance(source, str | Path) else bytes(source)
    data, members = _read_zip(raw, what)
    custom = _custom_objects(cls, algorithm, data, what, obs_space, action_space,
                             dict(model_kwargs or {}), policy)
    clean = {k: (None if k in custom else v) for k, v in data.items()}
    custom.update({k: v for k, v in (replace or {}).items() if k in data})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        out.writestr("data", json.dumps(clean))
        for name, tensors in members.items():
            member = io.BytesIO()
            torch.save(tensors, member)
            out.writestr(name, member.getvalue())
    buf.seek(0)
    try:
        return cls.load(buf, env=env, device=device, custom_objects=custom)
    except (AssertionError, AttributeError, KeyError, RuntimeError, TypeError,
            ValueError) as err:
        raise ValueError(f"{what}: cannot load a {algorithm} model ({err})") from err


def _read_zip(raw: bytes, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``data`` as JSON, each ``.pth`` member read with weights_only) of an SB3 zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            names = archive.namelist()
            if "data" not in names:
                raise ValueError("it has no 'data' member")
            if archive.getinfo("data").file_size > MAX_DATA_BYTES:
                raise ValueError(f"its 'data' member is over {MAX_DATA_BYTES >> 20} MB")
            data = json.loads(archive.read("data").decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("its 'data' member is not a JSON object")
            members = {}
            for name in names:
                if name.endswith(".pth"):
                    with archive.open(name) as fh:
                        members[name] = torch.load(io.BytesIO(fh.read()), map_location="cpu",
                                                   weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{what}: holds a .pth member that is not plain tensors (it would "
                         f"need unpickling, which optenv never does with a file): {err}"
                         ) from err
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError, RuntimeError,
            EOFError, KeyError) as err:
        raise ValueError(f"{what}: is not a readable Stable-Baselines3 model.zip ({err})"
                         ) from err
    return data, members


def _custom_objects(cls: type, algorithm: str, data: dict[str, Any], what: str,
                    obs_space: spaces.Space | None, action_space: spaces.Space | None,
                    model_kwargs: dict[str, Any], policy: str | None) -> dict[str, Any]:
    """An object for every serialized entry of ``data`` (module docstring), or ValueError
    naming the first that cannot be supplied."""
    keys = serialized_keys(data)
    if obs_space is None or action_space is None:
        obs_shape = declared_shape(data.get("observation_space"))
        act_shape = declared_shape(data.get("action_space"))
        if obs_shape is None or act_shape is None or len(act_shape) != 1:
            raise ValueError(f"{what}: does not declare the shapes of its spaces; allowed: a "
                             "model.zip written by optenv train (or pass the env's spaces)")
        default_obs, default_act = spaces_for_shapes(obs_shape, act_shape[0])
        obs_space = obs_space or default_obs
        action_space = action_space or default_act
    name = policy or ("MlpLstmPolicy" if algorithm == "recurrent-ppo" else "MlpPolicy")
    aliases = getattr(cls, "policy_aliases", {})
    if name not in aliases:
        raise ValueError(f"{what}: the run's policy {name!r} is not one of {cls.__name__}'s "
                         f"({', '.join(aliases)})")
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.default is not inspect.Parameter.empty}
    known = {"policy_class": aliases[name], "observation_space": obs_space,
             "action_space": action_space, **dict.fromkeys(TRAINING_STATE)}
    custom: dict[str, Any] = {}
    for key in keys:
        if key in known:
            custom[key] = known[key]
        elif key in model_kwargs:
            custom[key] = model_kwargs[key]
        elif key in defaults and key not in NETWORK_KEYS:
            custom[key] = defaults[key]
        else:
            kind = _type_name(data[key])
            why = ("it sets the network, and the folder has no config.json whose "
                   "hyper-parameters would give it" if key in NETWORK_KEYS else
                   f"{cls.__name__} takes no argument of that name")
            raise ValueError(f"{what}: entry {key!r} ({kind}) is stored pickled and optenv "
                             f"cannot supply it ({why}); optenv never unpickles a file. "
                             "Allowed: a model.zip written by optenv train, in its run folder")
    shapes = {"observation_space": obs_space, "action_space": action_space}
    for key, space in shapes.items():
        declared = declared_shape(data.get(key))
        if declared is not None and declared != tuple(space.shape):
            raise ValueError(f"{what}: the model has {key.split('_')[0]} shape {declared}, the "
                             f"env {tuple(space.shape)}")
    return custom


def _type_name(entry: Any) -> str:
    """The type a serialized entry says it holds (its readable ``:type:``), for messages."""
    kind = entry.get(":type:") if isinstance(entry, dict) else None
    return kind if isinstance(kind, str) else "an object"
