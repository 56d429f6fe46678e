"""Per-env hyper-parameters for the SB3 agents, in rl-zoo3's YAML format, parsed safely.

The files ``baselines/hyperparams/{ppo,sac,td3,recurrent_ppo}.yml`` ship with the package and
follow rl-zoo3 (https://github.com/DLR-RM/rl-baselines3-zoo) so that a user can move a setting
between the two without translation: top-level keys are env ids, each value a dict with

* ``n_envs`` (parallel envs), ``n_timesteps`` (default training length), ``policy``,
* ``normalize`` (``true``/``false``, or a string ``"dict(norm_obs=True, norm_reward=False)"``
  of VecNormalize arguments),
* ``noise_type`` (``normal`` / ``ornstein-uhlenbeck``) and ``noise_std`` for SAC/TD3,
* every other key: a keyword argument of the algorithm's constructor; ``policy_kwargs`` as a
  string ``"dict(net_arch=[64, 64], activation_fn=nn.Tanh)"``, schedules as ``"lin_3e-4"``.

rl-zoo3 ``eval()``s the strings; here they are parsed with :mod:`ast` and only literals,
``dict(...)`` calls and a fixed table of names (activation functions, optimiser classes) are
accepted, so a hyper-parameter file can never run code. Unknown keys are a ValueError naming
the key, rather than a TypeError from deep inside SB3.
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from optenv.validation import check_choice

__all__ = [
    "ALGORITHMS",
    "FILE_NAMES",
    "Hyperparams",
    "algorithm_class",
    "load_hyperparams",
    "parse_override",
    "read_hyperparams_file",
    "safe_eval",
]

#: CLI / compare name → (module, class) of the SB3 algorithm.
ALGORITHMS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "sac": ("stable_baselines3", "SAC"),
    "td3": ("stable_baselines3", "TD3"),
    "recurrent-ppo": ("sb3_contrib", "RecurrentPPO"),
}
#: CLI name → YAML file name (rl-zoo3 names the sb3-contrib one ``ppo_lstm.yml``; ours follows
#: the CLI name with an underscore, as the issue asks).
FILE_NAMES: dict[str, str] = {
    "ppo": "ppo.yml", "sac": "sac.yml", "td3": "td3.yml", "recurrent-ppo": "recurrent_ppo.yml",
}

#: Names a policy_kwargs string may use (rl-zoo3 writes ``nn.Tanh``, ``th.optim.Adam``, ...).
_ACTIVATIONS = ("Tanh", "ReLU", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Softplus")
_OPTIMIZERS = ("Adam", "AdamW", "RMSprop", "SGD")
SAFE_NAMES: dict[str, Any] = {
    **{f"{p}{a}": getattr(nn, a) for a in _ACTIVATIONS
       for p in ("nn.", "th.nn.", "torch.nn.")},
    **{f"{p}{o}": getattr(torch.optim, o) for o in _OPTIMIZERS
       for p in ("th.optim.", "torch.optim.", "optim.")},
    "True": True, "False": False, "None": None,
}

#: Keys this module consumes itself (the rest go to the algorithm's constructor).
SPECIAL_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "noise_type", "noise_std")
#: rl-zoo3 keys that change the env pipeline in ways this trainer does not offer.
UNSUPPORTED_KEYS = ("frame_stack", "env_wrapper", "vec_env_wrapper", "callback",
                    "normalize_kwargs", "env_kwargs", "eval_env_kwargs")
_SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")
_NOT_KWARGS = ("self", "policy", "env", "_init_setup_model", "seed", "device", "verbose",
               "tensorboard_log")


def algorithm_class(name: str) -> type[Any]:
    """The SB3 class for a CLI name (``ppo``, ``sac``, ``td3``, ``recurrent-ppo``)."""
    check_choice("algorithm", name, ALGORITHMS)
    module, cls = ALGORITHMS[name]
    import importlib

    return getattr(importlib.import_module(module), cls)


def safe_eval(text: str, what: str) -> Any:
    """The value of an rl-zoo3 hyper-parameter string, without ``eval``.

    Accepts Python literals (numbers, strings, lists, tuples, dicts, True/False/None, unary
    minus), ``dict(key=value, ...)`` calls and the names in :data:`SAFE_NAMES`; anything else is
    a ValueError naming ``what``.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"{what}: cannot parse {text!r} ({err.msg})") from err

    def name_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            base = name_of(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise ValueError(f"{what}: '**' is not allowed in {text!r}")
            return {ev(k): ev(v) for k, v in zip(node.keys, node.values, strict=True)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = ev(node.operand)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Call) and name_of(node.func) == "dict" and not node.args:
            if any(k.arg is None for k in node.keywords):
                raise ValueError(f"{what}: '**' is not allowed in {text!r}")
            return {k.arg: ev(k.value) for k in node.keywords}
        name = name_of(node)
        if name is not None and name in SAFE_NAMES:
            return SAFE_NAMES[name]
        shown = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
        raise ValueError(f"{what}: {shown!r} is not allowed in {text!r}; allowed: literals, "
                         "dict(...), and the names nn.Tanh, nn.ReLU, ..., th.optim.Adam, ...")

    return ev(tree.body)


def parse_override(item: str) -> tuple[str, Any]:
    """``"learning_starts=100"`` → ("learning_starts", 100) for ``--hyperparams``.

    The value is read as YAML, as if written in the file (so ``[1, episode]`` is a list and
    ``dict(net_arch=[32])`` a string that :class:`Hyperparams` parses like the file's).
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip().isidentifier():
        raise ValueError(f"--hyperparams: got {item!r}, allowed: KEY=VALUE pairs such as "
                         "learning_rate=1e-3 or 'policy_kwargs=dict(net_arch=[32])'")
    raw = raw.strip()
    try:
        value: Any = yaml.safe_load(raw) if raw else raw
    except yaml.YAMLError:
        value = raw  # e.g. "dict(a=1)" with a colon inside: kept as the string it is
    return key.strip(), value


def _typed(key: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the constructor's default (an int where the
    default is an int — ``1e6`` read as a float is taken when whole —, a number where it is a
    float, or a schedule for the schedule keys, a bool where it is a bool), so that
    ``n_steps=abc`` is a ValueError naming the key rather than a TypeError inside SB3.
    Arguments whose default is None or a string (``ent_coef="auto"``) are left to SB3."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok, allowed = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        if number and float(value).is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok or (key == "train_freq" and isinstance(value, tuple))
        allowed = "an integer" + (" or [n, 'step'|'episode']" if key == "train_freq" else "")
    elif isinstance(default, float):
        ok = (number and math.isfinite(value)) or (key in _SCHEDULE_KEYS and callable(value))
        allowed = "a number" + (" or 'lin_<number>'" if key in _SCHEDULE_KEYS else "")
    else:
        return value
    if not ok:
        raise ValueError(f"hyperparams: {key}: got {value!r}, allowed: {allowed}")
    return value


def _looks_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_hyperparams_file(path: str | Path | None, algorithm: str) -> dict[str, Any]:
    """The whole YAML document: ``path``, or the packaged file of ``algorithm``."""
    if path is None:
        check_choice("algorithm", algorithm, FILE_NAMES)
        text = (resources.files("baselines") / "hyperparams" / FILE_NAMES[algorithm]) \
            .read_text(encoding="utf-8")
        where = f"baselines/hyperparams/{FILE_NAMES[algorithm]}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"--conf-file: cannot read {str(path)!r} ({err.strerror})") from err
        where = str(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"--conf-file: {where!r} is not valid YAML ({err})") from err
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise ValueError(f"--conf-file: {where!r} must map env ids to dicts of "
                         "hyper-parameters (rl-zoo3 format)")
    return doc


def load_hyperparams(algorithm: str, env_id: str, conf_file: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The raw (JSON-serialisable) hyper-parameters of ``algorithm`` on ``env_id``.

    From ``conf_file`` or the packaged YAML, then ``overrides`` on top. The values stay as
    written (``policy_kwargs`` a string), so they can go into the run's ``config.json``; build
    the objects with :class:`Hyperparams`.
    """
    doc = read_hyperparams_file(conf_file, algorithm)
    if env_id not in doc:
        where = conf_file or f"baselines/hyperparams/{FILE_NAMES[algorithm]}"
        raise ValueError(f"--env: {env_id!r} has no {algorithm} hyper-parameters in "
                         f"{str(where)!r}; allowed: {', '.join(sorted(doc))} (or pass "
                         "--conf-file with an entry for it)")
    raw = {**doc[env_id], **dict(overrides or {})}
    return {k: _jsonable(v) for k, v in raw.items()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(e) for e in v]
    if isinstance(v, list):
        return [_jsonable(e) for e in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(e) for k, e in v.items()}
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


class Hyperparams:
    """Raw rl-zoo3 hyper-parameters → what SB3 needs: n_envs, steps, VecNormalize and model
    keyword arguments, all validated (ValueError naming the key) before anything is built.

    Args:
        algorithm: CLI name of the algorithm.
        raw: the dict from :func:`load_hyperparams`.
        action_dim: the env's action dimension (for the action-noise objects).
    """

    def __init__(self, algorithm: str, raw: Mapping[str, Any], action_dim: int) -> None:
        self.algorithm = algorithm
        self.raw = dict(raw)
        cls = algorithm_class(algorithm)
        for key in self.raw:
            if key in UNSUPPORTED_KEYS:
                raise ValueError(f"hyperparams: key {key!r} (rl-zoo3) is not supported by "
                                 "optenv train; allowed: the algorithm's arguments and "
                                 + ", ".join(SPECIAL_KEYS))
        self.n_envs = self._int("n_envs", 1, 1)
        self.n_timesteps = self._int("n_timesteps", 100_000, 1)
        self.policy = self.raw.get("policy", "MlpLstmPolicy" if algorithm == "recurrent-ppo"
                                   else "MlpPolicy")
        if not isinstance(self.policy, str):
            raise ValueError(f"hyperparams: policy: got {self.policy!r}, allowed: a policy "
                             "name such as 'MlpPolicy'")
        self.normalize = self._normalize(self.raw.get("normalize", False))
        params = inspect.signature(cls.__init__).parameters
        allowed = [p for p in params if p not in _NOT_KWARGS]
        kwargs: dict[str, Any] = {}
        for key, value in self.raw.items():
            if key in SPECIAL_KEYS:
                continue
            if key not in allowed:
                raise ValueError(f"hyperparams: unknown key {key!r} for {cls.__name__}; "
                                 f"allowed: {', '.join(list(SPECIAL_KEYS) + allowed)}")
            kwargs[key] = _typed(key, self._convert(key, value), params[key].default)
        noise = self._action_noise(action_dim)
        if noise is not None:
            if "action_noise" not in allowed:
                raise ValueError(f"hyperparams: noise_type is not used by {cls.__name__}; "
                                 "allowed for: sac, td3")
            kwargs["action_noise"] = noise
        self.model_kwargs = kwargs

    def _int(self, key: str, default: int, low: int) -> int:
        value = self.raw.get(key, default)
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            as_float = math.nan
        if isinstance(value, bool) or not (as_float >= low and as_float == int(as_float)
                                           if math.isfinite(as_float) else False):
            raise ValueError(f"hyperparams: {key}: got {value!r}, allowed: an integer >= {low}")
        return int(as_float)

    def _normalize(self, value: Any) -> dict[str, Any] | None:
        if isinstance(value, str):
            value = safe_eval(value, "hyperparams: normalize")
        if value is False or value is None:
            return None
        if value is True:
            return {}
        if isinstance(value, dict):
            from stable_baselines3.common.vec_env import VecNormalize

            allowed = [p for p in inspect.signature(VecNormalize.__init__).parameters
                       if p not in ("self", "venv", "training", "norm_obs_keys")]
            bad = sorted(set(value) - set(allowed))
            if bad:
                raise ValueError(f"hyperparams: normalize: unknown VecNormalize argument(s) "
                                 f"{bad}; allowed: {', '.join(allowed)}")
            return dict(value)
        raise ValueError(f"hyperparams: normalize: got {value!r}, allowed: true, false or "
                         "'dict(norm_obs=..., norm_reward=...)'")

    def _convert(self, key: str, value: Any) -> Any:
        from stable_baselines3.common.utils import LinearSchedule

        if key in _SCHEDULE_KEYS and isinstance(value, str) and value.startswith("lin_"):
            try:
                start = float(value[4:])
            except ValueError as err:
                raise ValueError(f"hyperparams: {key}: got {value!r}, allowed: a number or "
                                 "'lin_<number>' (linear decay to 0)") from err
            # rl-zoo3's linear_schedule: progress_remaining * start, i.e. start → 0.
            return LinearSchedule(start, 0.0, 1.0)
        if key in ("policy_kwargs", "replay_buffer_kwargs", "optimize_kwargs") and \
                isinstance(value, str):
            value = safe_eval(value, f"hyperparams: {key}")
            if not isinstance(value, dict):
                raise ValueError(f"hyperparams: {key}: got {value!r}, allowed: 'dict(...)'")
            return value
        if key == "train_freq" and isinstance(value, list):
            return tuple(value)  # rl-zoo3 writes [1, "episode"]; SB3 wants a tuple
        if isinstance(value, str) and _looks_float(value):
            return float(value)  # PyYAML reads 3e-4 (no dot) as a string
        return value

    def _action_noise(self, action_dim: int) -> Any:
        kind = self.raw.get("noise_type")
        if kind is None:
            return None
        std = self.raw.get("noise_std", 0.1)
        try:
            std = float(std)
        except (TypeError, ValueError):
            std = math.nan
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"hyperparams: noise_std: got {self.raw.get('noise_std')!r}, "
                             "allowed: a number >= 0")
        from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

        mean, sigma = np.zeros(action_dim), std * np.ones(action_dim)
        if kind == "normal":
            return NormalActionNoise(mean, sigma)
        if kind == "ornstein-uhlenbeck":
            return OrnsteinUhlenbeckActionNoise(mean, sigma)
        raise ValueError(f"hyperparams: noise_type: got {kind!r}, allowed: 'normal', "
                         "'ornstein-uhlenbeck'")
