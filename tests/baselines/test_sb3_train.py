"""``optenv train ppo|sac|td3|recurrent-ppo``: smoke runs, round trips, resume and errors.

Every training run here is tiny (2 envs, ~100 steps, 8-16-unit networks): the point is that the
pipeline — YAML hyper-parameters, both vec modes, VecNormalize, checkpoints, the compare loader
and held-out evaluation — is wired right, not that the agents learn (that is a benchmark, with
its figures in the issue report / README).
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import optenv
from baselines import sb3_train
from baselines.sb3_hyperparams import (
    ALGORITHMS,
    Hyperparams,
    algorithm_class,
    load_hyperparams,
    parse_override,
    read_hyperparams_file,
    safe_eval,
)
from baselines.sb3_policy import SB3Optimizer, load_run
from optenv.evaluate import evaluate
from optenv.lab import cli, methods

ENV = "optenv/LogisticRegression-v0"
STEPS = 96  # 2 envs x 48 steps: each env finishes one 40-step episode
#: Tiny networks and buffers so that every run takes about a second.
TINY: dict[str, dict[str, object]] = {
    "ppo": {"n_steps": 8, "batch_size": 16, "n_epochs": 1,
            "policy_kwargs": "dict(net_arch=[16])"},
    "sac": {"learning_starts": 16, "buffer_size": 500, "batch_size": 16, "gradient_steps": 1,
            "policy_kwargs": "dict(net_arch=[16])"},
    "td3": {"learning_starts": 16, "buffer_size": 500, "batch_size": 16, "gradient_steps": 1,
            "policy_kwargs": "dict(net_arch=[16])"},
    "recurrent-ppo": {"n_steps": 8, "batch_size": 16, "n_epochs": 1,
                      "policy_kwargs": "dict(lstm_hidden_size=8, net_arch=[8])"},
}


def _train(algo: str, out: Path, vec: str = "batched", **kw: object) -> sb3_train.TrainResult:
    args: dict[str, object] = {"steps": STEPS, "num_envs": 2, "vec": vec,
                               "overrides": TINY[algo], "checkpoint_every": 48, **kw}
    return sb3_train.train(algo, ENV, out, **args)  # type: ignore[arg-type]


def _context(env_id: str = ENV) -> dict[str, object]:
    from optenv.evaluate import resolve_env

    _, family, d = resolve_env(env_id)
    return {"env_id": env_id, "family": family, "history": d["history"],
            "max_step": d["max_step"], "device": "cpu"}


def _raw_obs(n: int = 3, steps: int = 3) -> np.ndarray:
    """Raw (unnormalised) observations of a few held-out objectives a few iterations in."""
    env = gym.make(ENV, split="test")
    rows = []
    for s in range(n):
        obs, _ = env.reset(seed=s)
        for _ in range(steps):
            obs, *_ = env.step(np.full(4, 0.3, np.float32))
        rows.append(obs)
    return np.stack(rows)


def _log(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- smoke runs
@pytest.mark.parametrize(("algo", "vec"), [
    ("ppo", "batched"), ("ppo", "dummy"), ("sac", "batched"), ("sac", "dummy"),
    ("td3", "batched"), ("recurrent-ppo", "batched"), ("recurrent-ppo", "dummy"),
])
def test_smoke_run_writes_the_run_folder_and_round_trips_through_compare(tmp_path, algo, vec):
    out = tmp_path / "run"
    res = _train(algo, out, vec=vec)
    assert res.model.num_timesteps >= STEPS
    for name in ("config.json", "checkpoint.pt", "log.csv", "curves.png", "model.zip",
                 "vecnormalize.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["algorithm"], config["vec"], config["num_envs"]) == (algo, vec, 2)
    rows = _log(out)
    steps = [int(r["timesteps"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == res.model.num_timesteps
    finished = [r for r in rows if r["mean_final_f"]]
    assert finished and all(np.isfinite(float(r["mean_final_f"])) for r in finished)
    assert int(rows[-1]["episodes"]) == 2  # one 40-step episode per env

    loader = methods.METHOD_LOADERS[algo]
    opt = loader(str(out), _context())
    assert isinstance(opt, SB3Optimizer)
    obs = _raw_obs()
    normalized = res.venv.normalize_obs(obs)
    assert not np.allclose(normalized, obs)  # VecNormalize matters, so the test is sharp
    np.testing.assert_allclose(opt.normalize(obs), normalized, rtol=1e-6, atol=1e-6)
    want, _ = res.model.predict(normalized, deterministic=True)
    got, _ = opt.predict(obs, deterministic=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    ev = evaluate(opt, ENV, n_test=3, horizon=5)
    assert ev.f.shape == (3, 6) and np.isfinite(ev.f).all()
    again = evaluate(opt, ENV, n_test=3, horizon=5)
    np.testing.assert_array_equal(ev.f, again.f)  # reset() clears any recurrent state


def test_training_leaves_no_sb3_log_folder_in_the_temp_dir(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.delenv("SB3_LOGDIR", raising=False)  # SB3's default logger would use the temp dir
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    _train("ppo", tmp_path / "run")
    assert [p.name for p in temp.iterdir() if p.name.startswith("SB3-")] == []


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_batched_and_dummy_vec_modes_train_the_same_agent_for_the_same_seed(tmp_path, algo):
    """The batched adapter is a faster way to the same data: same seed, same parameters."""
    params = []
    for vec in ("batched", "dummy"):
        res = _train(algo, tmp_path / vec, vec=vec, seed=5)
        params.append(torch.cat([p.detach().flatten() for p in res.model.policy.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)


def test_recurrent_state_is_carried_through_evaluate_and_reset_between_runs(tmp_path):
    out = tmp_path / "run"
    res = _train("recurrent-ppo", out)
    opt = load_run(out, "recurrent-ppo", _context())
    model, venv = res.model, res.venv

    class Manual:
        """The reference: SB3's documented recurrent predict loop over normalised obs."""

        def __init__(self, restart_every_step: bool) -> None:
            self.restart = restart_every_step

        def reset(self) -> None:
            self.state, self.first = None, True

        def __call__(self, obs: torch.Tensor) -> np.ndarray:
            o = venv.normalize_obs(obs.numpy())
            starts = np.full(o.shape[0], self.first or self.restart)
            action, self.state = model.predict(o, state=self.state, episode_start=starts,
                                               deterministic=True)
            self.first = False
            return action

    ours = evaluate(opt, ENV, n_test=4, horizon=8)
    ref = evaluate(Manual(False), ENV, n_test=4, horizon=8)
    np.testing.assert_allclose(ours.f, ref.f, rtol=1e-9)
    memoryless = evaluate(Manual(True), ENV, n_test=4, horizon=8)
    assert not np.allclose(ours.f, memoryless.f)  # the LSTM state does change the actions
    # Explicit state/episode_start pass straight through, as in SB3.
    obs = _raw_obs(2)
    a1, s1 = opt.predict(obs, None, np.ones(2, bool))
    a2, s2 = model.predict(venv.normalize_obs(obs), None, np.ones(2, bool), deterministic=True)
    np.testing.assert_allclose(a1, a2, rtol=1e-6)
    np.testing.assert_allclose(s1[0], s2[0], rtol=1e-6)


def test_cli_train_then_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "ppo"
    hp = [f"{k}={v}" for k, v in TINY["ppo"].items()]
    assert cli.main(["train", "ppo", "--env", ENV, "--steps", str(STEPS), "--num-envs", "2",
                     "--out", str(out), "--quiet", "--seed", "3", "--hyperparams", *hp]) == 0
    assert "ppo:" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    cmp_out = tmp_path / "cmp"
    assert cli.main(["compare", "--env", ENV, "--methods", f"gd,ppo:{out}", "--n-test", "4",
                     "--horizon", "5", "--no-tune", "--no-plots", "--quiet",
                     "--out", str(cmp_out)]) == 0
    doc = json.loads((cmp_out / "results.json").read_text())
    assert set(doc["methods"]) == {"gd", f"ppo:{out}"}
    assert all(np.isfinite(doc["methods"][f"ppo:{out}"]["final_f"]))


def test_train_subcommands_are_registered():
    parser = cli.build_parser()
    for algo in ALGORITHMS:
        args = parser.parse_args(["train", algo, "--env", ENV, "--out", "x"])
        assert args.sb3_algorithm == algo and args.func is sb3_train.run
        assert args.vec is None and args.steps is None  # resolved from YAML / the saved run


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_resume_continues_the_step_count_log_and_replay_buffer(tmp_path, algo):
    out = tmp_path / "run"
    first = _train(algo, out)
    n1 = first.model.num_timesteps
    rb1 = getattr(first.model, "replay_buffer", None)
    kept = None if rb1 is None else rb1.observations[:rb1.pos].copy()
    rows1 = _log(out)
    second = sb3_train.train(algo, ENV, out, steps=2 * STEPS, resume=True)  # rest from config
    assert second.model.num_timesteps >= 2 * STEPS > n1
    rows2 = _log(out)
    assert rows2[:len(rows1)] == rows1
    steps = [int(r["timesteps"]) for r in rows2]
    assert steps == sorted(set(steps)) and steps[-1] == second.model.num_timesteps
    assert float(rows2[-1]["wall_s"]) > float(rows1[-1]["wall_s"])  # wall time accumulates
    assert int(rows2[-1]["episodes"]) == 4
    if algo == "sac":  # the replay buffer came back: it holds both halves' transitions
        rb2 = second.model.replay_buffer
        assert rb2.pos == second.model.num_timesteps // 2
        np.testing.assert_array_equal(rb2.observations[:len(kept)], kept)
    # Finished runs resume to a no-op; a changed configuration is refused.
    third = sb3_train.train(algo, ENV, out, steps=2 * STEPS, resume=True)
    assert third.model.num_timesteps == second.model.num_timesteps
    with pytest.raises(ValueError, match="--resume: the configuration differs"):
        sb3_train.train(algo, ENV, out, steps=3 * STEPS, resume=True, num_envs=3)
    with pytest.raises(ValueError, match=r"--out: .* already holds a run"):
        _train(algo, out)


# ----------------------------------------------------------------------------- hyper-parameters
@pytest.mark.filterwarnings("ignore:You have specified a mini-batch size")
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_packaged_yaml_covers_every_builtin_id_and_builds_a_model(algo):
    doc = read_hyperparams_file(None, algo)
    assert set(optenv.BUILTIN_IDS) <= set(doc)
    for env_id in optenv.BUILTIN_IDS:
        raw = load_hyperparams(algo, env_id)
        assert {"n_envs", "n_timesteps", "policy", "normalize", "policy_kwargs"} <= set(raw)
        d = gym.make(env_id).action_space.shape[0]
        hp = Hyperparams(algo, raw, action_dim=d)
        assert hp.n_envs >= 1 and hp.n_timesteps >= 100_000
        assert isinstance(hp.model_kwargs["policy_kwargs"], dict)
        kwargs = dict(hp.model_kwargs)
        if "buffer_size" in kwargs:
            kwargs["buffer_size"] = 100  # the check is the arguments, not the allocation
        venv = sb3_train.make_venv(env_id, "batched", 2, 0, hp.normalize)
        model = algorithm_class(algo)(hp.policy, venv, device="cpu", **kwargs)
        assert model.observation_space.shape == venv.observation_space.shape
        venv.close()


def test_safe_eval_reads_rl_zoo_strings_and_refuses_code():
    value = safe_eval("dict(net_arch=dict(pi=[64, 64], vf=[64]), activation_fn=nn.Tanh, "
                      "log_std_init=-1.0, optimizer_class=th.optim.Adam)", "x")
    assert value == {"net_arch": {"pi": [64, 64], "vf": [64]}, "activation_fn": torch.nn.Tanh,
                     "log_std_init": -1.0, "optimizer_class": torch.optim.Adam}
    assert safe_eval("{'a': (1, 2), 'b': None}", "x") == {"a": (1, 2), "b": None}
    for bad in ("__import__('os').system('true')", "dict(a=open('f'))", "nn.Module",
                "dict(**{'a': 1})", "[x for x in ()]", "1 +", "lambda: 0", "os.system"):
        with pytest.raises(ValueError, match="policy_kwargs"):
            safe_eval(bad, "policy_kwargs")


def test_overrides_and_rl_zoo_conventions(tmp_path):
    assert parse_override("learning_rate=1e-3") == ("learning_rate", "1e-3")
    assert parse_override("train_freq=[1, episode]") == ("train_freq", [1, "episode"])
    assert parse_override("policy_kwargs=dict(net_arch=[8])")[1] == "dict(net_arch=[8])"
    with pytest.raises(ValueError, match="--hyperparams"):
        parse_override("nokey")
    raw = load_hyperparams("td3", ENV, overrides={
        "learning_rate": "lin_1e-3", "train_freq": [1, "episode"], "batch_size": "64",
        "noise_type": "ornstein-uhlenbeck"})
    hp = Hyperparams("td3", raw, action_dim=4)
    assert hp.model_kwargs["learning_rate"](1.0) == pytest.approx(1e-3)
    assert hp.model_kwargs["learning_rate"](0.5) == pytest.approx(5e-4)
    assert hp.model_kwargs["train_freq"] == (1, "episode")
    assert type(hp.model_kwargs["action_noise"]).__name__ == "OrnsteinUhlenbeckActionNoise"
    assert hp.normalize == {"norm_obs": True, "norm_reward": False}
    conf = tmp_path / "mine.yml"
    conf.write_text(f"{ENV}:\n  n_envs: 3\n  n_timesteps: !!float 2e5\n  normalize: false\n")
    hp = Hyperparams("ppo", load_hyperparams("ppo", ENV, conf), action_dim=4)
    assert (hp.n_envs, hp.n_timesteps, hp.normalize, hp.model_kwargs) == (3, 200_000, None, {})


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "--steps: got 0"),
    ({"num_envs": 0}, "--num-envs: got 0"),
    ({"seed": -1}, "--seed: got -1"),
    ({"vec": "subproc"}, "--vec: got 'subproc'"),
    ({"device": "nodevice"}, "--device: got 'nodevice'"),
    ({"checkpoint_every": 0}, "--checkpoint-every: got 0"),
    ({"env_id": "optenv/Nope-v0"}, "--env: got 'optenv/Nope-v0'"),
    ({"env_id": "CartPole-v1"}, "--env: got 'CartPole-v1'"),
    ({"algorithm": "a2c"}, "algorithm: got 'a2c'"),
    ({"overrides": {"nope": 1}}, "unknown key 'nope' for PPO"),
    ({"overrides": {"frame_stack": 4}}, "'frame_stack' .* not supported"),
    ({"overrides": {"n_envs": 0}}, "n_envs: got 0"),
    ({"overrides": {"policy_kwargs": "__import__('os')"}}, "policy_kwargs"),
    ({"overrides": {"normalize": "dict(norm_obz=True)"}}, "normalize: unknown"),
    ({"overrides": {"learning_rate": "lin_x"}}, "learning_rate: got 'lin_x'"),
    ({"conf_file": "/nonexistent.yml"}, "--conf-file: cannot read"),
    ({"resume": True}, "--resume: .* holds no run to resume"),
])
def test_bad_arguments_raise_value_error_and_write_nothing(tmp_path, kwargs, match):
    out = tmp_path / "run"
    args: dict[str, object] = {"algorithm": "ppo", "env_id": ENV, "out": out, "steps": 10}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sb3_train.train(**args)  # type: ignore[arg-type]
    assert not out.exists()


def test_noise_and_env_entries_are_checked():
    raw = load_hyperparams("ppo", ENV, overrides={"noise_type": "normal"})
    with pytest.raises(ValueError, match="noise_type is not used by PPO"):
        Hyperparams("ppo", raw, action_dim=4)
    raw = load_hyperparams("sac", ENV, overrides={"noise_type": "pink"})
    with pytest.raises(ValueError, match="noise_type: got 'pink'"):
        Hyperparams("sac", raw, action_dim=4)
    with pytest.raises(ValueError, match="--env: 'optenv/Custom-v0' has no ppo"):
        load_hyperparams("ppo", "optenv/Custom-v0")


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    base = ["train", "ppo", "--env", ENV, "--out", str(tmp_path / "r")]
    for extra in (["--steps", "0"], ["--vec", "subproc"], ["--hyperparams", "oops"],
                  ["--threads", "0"]):
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("optenv: error:") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_loaders_refuse_wrong_folders_algorithms_and_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"holds no model\.zip"):
        load_run(tmp_path, "ppo", _context())
    out = tmp_path / "run"
    _train("ppo", out, steps=16)
    with pytest.raises(ValueError, match="holds a 'ppo' run, not 'sac'"):
        methods.METHOD_LOADERS["sac"](str(out), _context())
    with pytest.raises(ValueError, match="observation shape"):
        load_run(out, "ppo", _context("optenv/NeuralNet-v0"))
    opt = load_run(out / "model.zip", "ppo", _context("optenv/RobustRegression-v0"))
    assert opt.predict(_raw_obs(1))[0].shape == (1, 4)  # same sizes: transfer is allowed
    assert methods.parse_methods(f"gd,ppo:{out},recurrent-ppo:{out}")[2][0] == "recurrent-ppo"


def test_options_are_the_flags_and_resolve_from_the_run_then_the_hyperparameters() -> None:
    """SB3Options declares train()'s options and the flags once; a None is filled from the
    resumed run's config, else from the hyper-parameters, else the default the help states."""
    from baselines.sb3_train import SB3Options

    args = cli.build_parser().parse_args(["train", "ppo", "--env", ENV, "--out", "x",
                                          "--steps", "500", "--threads", "2"])
    assert (args.steps, args.threads, args.log_every) == (500, 2, None)
    hp = Hyperparams("ppo", load_hyperparams("ppo", ENV), action_dim=4)
    fresh = SB3Options().resolve({}, hp)
    assert (fresh.steps, fresh.num_envs, fresh.vec, fresh.seed, fresh.threads) == (
        hp.n_timesteps, hp.n_envs, "batched", 0, 1)
    assert fresh.checkpoint_every == max(10_000, hp.n_timesteps // 10)
    saved = {"steps": 50, "vec": "dummy", "seed": 3, "num_envs": 5, "log_every": 7}
    resumed = SB3Options(steps=100).resolve(saved, hp)
    assert (resumed.steps, resumed.vec, resumed.seed, resumed.num_envs, resumed.log_every) == (
        100, "dummy", 3, 5, 7)
    with pytest.raises(TypeError, match="stepz"):
        sb3_train.train("ppo", ENV, "unused", stepz=10)
