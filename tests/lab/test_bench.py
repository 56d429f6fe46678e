"""`optenv bench env`: one JSON line per measurement, each naming its device."""

from __future__ import annotations

import json

from optenv.lab.bench import _against_floor, bench_env, bench_render, profile_env
from optenv.lab.cli import main


def test_bench_env_measures_single_sync_vector_and_batched_envs():
    rows = bench_env("optenv/Quadratic-v0", num_envs=4, steps=3, devices=["cpu"])
    impls = [r["impl"] for r in rows]
    assert impls == ["single", "gymnasium.SyncVectorEnv", "optenv.OptimizationVectorEnv"]
    for r in rows:
        assert r["device"] == "cpu" and r["device_name"] and r["env_steps_per_s"] > 0
    assert rows[-1]["speedup_vs_sync_vector"] > 0


def test_bench_cli_prints_json_lines_and_refuses_bad_arguments(capsys):
    assert main(["bench", "env", "--env", "optenv/Quadratic-v0", "--num-envs", "2",
                 "--steps", "2", "--device", "cpu", "--no-sync-vector"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["impl"] for line in lines] == ["single",
                                                            "optenv.OptimizationVectorEnv"]
    for argv, word in ((["--num-envs", "0"], "--num-envs"), (["--env", "nope"], "--env"),
                       (["--threads", "0"], "--threads")):
        assert main(["bench", "env", *argv]) == 2
        err = capsys.readouterr().err
        assert word in err and len(err.strip().splitlines()) == 1


def test_bench_profile_names_the_ops_that_take_a_steps_time(capsys):
    rows = profile_env("optenv/Quadratic-v0", num_envs=8, steps=3, device="cpu", top=5)
    assert 0 < len(rows) <= 5
    times = [r["self_us_per_step"] for r in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert all(r["device"] == "cpu" and r["op"] and not r["cuda_graph"] for r in rows)
    assert main(["bench", "env", "--env", "optenv/Quadratic-v0", "--num-envs", "2", "--steps",
                 "2", "--device", "cpu", "--profile"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(json.loads(line)["bench"] == "env-profile" for line in lines)


def test_bench_render_times_rgb_array_frames_of_the_single_env(capsys):
    row = bench_render("optenv/Quadratic-v0", frames=2)
    assert row["bench"] == "render" and row["frame_shape"] == [320, 640, 3]
    assert row["first_frame_ms"] > 0 and 0 < row["ms_per_frame"] <= row["max_ms"]
    assert main(["bench", "render", "--env", "optenv/Quadratic-v0", "--steps", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["env_id"] for line in lines] == ["optenv/Quadratic-v0",
                                                              "optenv/NeuralNet-v0"]


def test_batched_env_rows_report_their_step_time_over_the_torch_func_floor_at_the_same_n():
    env = {"bench": "env", "impl": "optenv.OptimizationVectorEnv", "device": "cpu",
           "dtype": "float64"}
    rows = [{**env, "num_envs": 64, "env_steps_per_s": 800.0},
            {**env, "num_envs": 16, "env_steps_per_s": 900.0},
            {"bench": "objective", "impl": "torch.func.vmap(grad_and_value)", "device": "cpu",
             "dtype": "float64", "num_envs": 64, "evals_per_s": 3200.0}]
    _against_floor(rows)
    assert rows[0]["step_vs_torch_func_floor"] == 4.0  # 1/800 s a step against 1/3200 s
    assert "step_vs_torch_func_floor" not in rows[1]  # no floor measured at N = 16
