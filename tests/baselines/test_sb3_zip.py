"""baselines.sb3_zip: an SB3 model.zip is loaded without unpickling anything in it.

Each test plants pickles that would create a marker file in a real run's zip (or checkpoint):
``compare --methods ppo:DIR`` and ``--resume`` still load what they need from optenv's own
knowledge, or refuse, and the marker never appears. Each also proves the file is armed (SB3's
own ``load`` on it creates the marker), so the tests could fail.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from baselines import sb3_train
from baselines.sb3_policy import load_run
from baselines.sb3_zip import serialized_keys
from optenv.checkpoint import read_payload, save_tagged
from optenv.evaluate import resolve_env
from optenv.runs import CHECKPOINT_FORMAT

ENV = "optenv/LogisticRegression-v0"
#: A tiny PPO whose policy_kwargs name a class and whose learning rate is a schedule, so that
#: both are stored pickled in its zip, as with the packaged hyper-parameters.
TINY = {"n_steps": 8, "batch_size": 16, "n_epochs": 1, "learning_rate": "lin_1e-3",
        "policy_kwargs": "dict(net_arch=[16], activation_fn=nn.Tanh)"}


def _context() -> dict[str, object]:
    _, family, d = resolve_env(ENV)
    return {"env_id": ENV, "family": family, "history": d["history"],
            "max_step": d["max_step"], "device": "cpu"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sb3zip") / "run"
    sb3_train.train("ppo", ENV, out, steps=32, num_envs=2, overrides=TINY,
                    checkpoint_every=16).venv.close()
    return out


def _armed_zip(raw: bytes, bomb: object, *, extra: dict | None = None,
               members: dict[str, bytes] | None = None) -> bytes:
    """``raw`` with every serialized ``data`` entry replaced by ``bomb``'s pickle, ``extra``
    entries added, and ``members`` replaced."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    data = json.loads(src.read("data"))
    payload = base64.b64encode(pickle.dumps(bomb)).decode()
    for key in serialized_keys(data):
        data[key][":serialized:"] = payload
    data.update(extra or {})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            body = json.dumps(data).encode() if name == "data" else (members or {}).get(
                name, src.read(name))
            dst.writestr(name, body)
    return out.getvalue()


def _assert_armed(raw: bytes, marker: Path) -> None:
    """SB3's own loader on these bytes creates the marker: the file really is hostile."""
    assert not marker.exists()
    with contextlib.suppress(Exception):
        PPO.load(io.BytesIO(raw), device="cpu")
    assert marker.exists()
    marker.unlink()


def _copy_run(run: Path, dest: Path, zip_bytes: bytes, config: bool = True) -> Path:
    dest.mkdir()
    for name in ("vecnormalize.pt", *(("config.json",) if config else ())):
        (dest / name).write_bytes((run / name).read_bytes())
    (dest / "model.zip").write_bytes(zip_bytes)
    return dest


def test_the_zip_stores_the_entries_sb3_would_unpickle(run) -> None:
    data = json.loads(zipfile.ZipFile(run / "model.zip").read("data"))
    keys = set(serialized_keys(data))
    assert {"policy_class", "observation_space", "action_space", "policy_kwargs",
            "learning_rate", "lr_schedule", "clip_range", "_last_obs"} <= keys


def test_a_crafted_model_zip_loads_for_compare_without_running_its_pickles(run, tmp_path,
                                                                          armed) -> None:
    marker, bomb = armed
    clean = load_run(run, "ppo", _context())
    raw = _armed_zip((run / "model.zip").read_bytes(), bomb)
    folder = _copy_run(run, tmp_path / "crafted", raw)
    loaded = load_run(folder, "ppo", _context())
    assert not marker.exists()
    obs = np.random.default_rng(0).normal(size=(3, 229)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs)[0], clean.predict(obs)[0])
    _assert_armed(raw, marker)


def test_a_zip_with_a_pickled_entry_optenv_cannot_supply_is_refused(run, tmp_path,
                                                                   armed) -> None:
    marker, bomb = armed
    raw = _armed_zip((run / "model.zip").read_bytes(), bomb,
                     extra={"evil": {":type:": "<class 'x'>", ":serialized:": "AAAA"}})
    folder = _copy_run(run, tmp_path / "unknown", raw)
    with pytest.raises(ValueError, match=r"entry 'evil' .* stored pickled and optenv cannot "
                                         r"supply it"):
        load_run(folder, "ppo", _context())
    armed_only = _armed_zip((run / "model.zip").read_bytes(), bomb)
    no_config = _copy_run(run, tmp_path / "bare", armed_only, config=False)
    with pytest.raises(ValueError, match=r"entry 'policy_kwargs' .* no config\.json"):
        load_run(no_config, "ppo", _context())
    assert not marker.exists()


def test_a_pth_member_that_is_not_plain_tensors_is_refused(run, tmp_path, armed) -> None:
    marker, bomb = armed
    member = io.BytesIO()
    torch.save({"mlp_extractor.policy_net.0.weight": bomb}, member)
    raw = _armed_zip((run / "model.zip").read_bytes(), bomb,
                     members={"policy.pth": member.getvalue()})
    folder = _copy_run(run, tmp_path / "pth", raw)
    with pytest.raises(ValueError, match=r"\.pth member that is not plain tensors"):
        load_run(folder, "ppo", _context())
    assert not marker.exists()


def test_resume_from_a_checkpoint_holding_a_crafted_model_runs_none_of_it(run, tmp_path,
                                                                         armed) -> None:
    """A checkpoint's checksum guards against damage, not intent: a crafted one can carry a
    valid checksum, so the model inside is loaded without unpickling too."""
    marker, bomb = armed
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("config.json", "checkpoint.pt"):
        (out / name).write_bytes((run / name).read_bytes())
    payload = read_payload(out / "checkpoint.pt", "a checkpoint")
    payload["state"]["model"] = _armed_zip(payload["state"]["model"], bomb)
    save_tagged(out / "checkpoint.pt", CHECKPOINT_FORMAT,
                {k: v for k, v in payload.items() if k not in ("format", "sha256")})
    res = sb3_train.train("ppo", ENV, out, steps=48, resume=True)
    res.venv.close()
    assert res.model.num_timesteps >= 48 and not marker.exists()
    _assert_armed(payload["state"]["model"], marker)
