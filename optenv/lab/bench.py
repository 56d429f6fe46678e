"""Throughput benchmarks, one JSON object per line: ``optenv bench env`` and ``optenv bench
render``.

Measures env-steps per second of: the single env (``gym.make``), Gymnasium's SyncVectorEnv of N
single envs, and the batched :class:`~optenv.vector.OptimizationVectorEnv` at the same N, on the
CPU, and on CUDA where present (float32, ``check_actions=False``: no read of the actions).
Random actions are drawn before the clock starts; every line names the device it ran on.
``--profile`` prints instead where a batched step's time goes: the ops with the most self time
per step (device time on CUDA, eager and graphed), from ``torch.profiler``.

``optenv bench render`` times ``render()`` of the single env in ``rgb_array`` mode (the frame a
``RecordVideo`` wrapper takes every step): the first frame (which builds the figure) and the
median and slowest of the frames after it, for ``--env`` and for NeuralNet (whose frames add the
data panel). The target is at most 20 ms a frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import optenv
from optenv.validation import check_int

__all__ = ["add_parser", "bench_env", "bench_render", "device_name", "profile_env", "run"]


def device_name(device: torch.device) -> str:
    """A human-readable name of the device a figure was measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _timed(step: Callable[[int], None], steps: int, warmup: int, sync: Callable[[], None]) -> float:
    for i in range(warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return time.perf_counter() - t0


def _batched_env(env_id: str, n: int, dev: torch.device, dtype: str, graphed: bool,
                 check_actions: bool, n_actions: int, seed: int) -> tuple[Any, torch.Tensor]:
    """A reset batched env and ``n_actions`` random action batches drawn on its device."""
    venv = gym.make_vec(env_id, num_envs=n, device=dev, dtype=dtype, check_actions=check_actions,
                        **({"cuda_graph": True} if graphed else {}))
    venv.reset(seed=seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    acts = torch.rand(n_actions, n, venv.single_action_space.shape[0], generator=g,
                      device=dev) * 2 - 1
    return venv, acts


def bench_env(env_id: str, num_envs: int, steps: int, *, devices: list[str],
              sync_vector: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of env-steps/s for the single env, SyncVectorEnv and the batched env."""
    rows: list[dict[str, Any]] = []
    cpu = torch.device("cpu")
    base = {"bench": "env", "env_id": env_id, "torch": torch.__version__}
    rng = np.random.default_rng(seed)

    single = gym.make(env_id)
    single.reset(seed=seed)
    acts = rng.uniform(-1, 1, (steps + 10, single.action_space.shape[0])).astype(np.float32)

    def single_step(i: int) -> None:
        _, _, term, trunc, _ = single.step(acts[i])
        if term or trunc:
            single.reset()

    dt = _timed(single_step, steps, 10, lambda: None)
    rows.append({**base, "impl": "single", "num_envs": 1, "device": "cpu",
                 "device_name": device_name(cpu), "dtype": "float64",
                 "env_steps_per_s": steps / dt})
    sync_rate = None
    if sync_vector:
        sv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
        sv.reset(seed=seed)
        sv_steps = max(5, steps // 20)
        sacts = rng.uniform(-1, 1, (sv_steps + 2, num_envs, single.action_space.shape[0]))
        dt = _timed(lambda i: sv.step(sacts[i].astype(np.float32)), sv_steps, 2, lambda: None)
        sync_rate = sv_steps * num_envs / dt
        rows.append({**base, "impl": "gymnasium.SyncVectorEnv", "num_envs": num_envs,
                     "device": "cpu", "device_name": device_name(cpu), "dtype": "float64",
                     "env_steps_per_s": sync_rate})
        sv.close()
    for dev_s in devices:
        dev = torch.device(dev_s)
        sizes = [num_envs] if dev.type == "cpu" else sorted({num_envs, 65536})
        dtypes = ["float64"] if dev.type == "cpu" else ["float32", "float64"]
        graphs = [False] if dev.type != "cuda" else [False, True]
        for n, dt_name, graphed in ((n, d, g) for n in sizes for d in dtypes for g in graphs):
            venv, vacts = _batched_env(env_id, n, dev, dt_name, graphed, dev.type == "cpu", 8,
                                       seed)
            sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
            dt = _timed(lambda i, v=venv, a=vacts: v.step(a[i % 8]), steps, 10, sync)
            rate = steps * n / dt
            row = {**base, "impl": "optenv.OptimizationVectorEnv", "num_envs": n,
                   "device": dev.type, "device_name": device_name(dev), "dtype": dt_name,
                   "env_steps_per_s": rate}
            if graphed:
                row["cuda_graph"] = bool(venv.unwrapped.graph_captured)
            if sync_rate is not None and n == num_envs and dev.type == "cpu":
                row["speedup_vs_sync_vector"] = rate / sync_rate
            rows.append(row)
            venv.close()
    return rows


def profile_env(env_id: str, num_envs: int, steps: int, *, device: str, top: int = 15,
                seed: int = 0) -> list[dict[str, Any]]:
    """Rows naming the ``top`` ops by self time per step of the batched env on ``device`` (on
    CUDA the kernels' device time, for the eager and the CUDA-graph step; on the CPU the ops'
    CPU time), so a slow step shows which of its passes to fuse or drop."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    rows: list[dict[str, Any]] = []
    for graphed in ([False, True] if on_cuda else [False]):
        venv, acts = _batched_env(env_id, num_envs, dev, "float32", graphed, False, steps, seed)
        for i in range(10):
            venv.step(acts[i % steps])
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
        with profile(activities=activities) as prof:
            for i in range(steps):
                venv.step(acts[i])
            if on_cuda:
                torch.cuda.synchronize(dev)
        key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)
        for e in events[:top]:
            rows.append({"bench": "env-profile", "env_id": env_id, "num_envs": num_envs,
                         "device": dev.type, "device_name": device_name(dev),
                         "cuda_graph": graphed, "op": e.key, "calls_per_step": e.count / steps,
                         "self_us_per_step": getattr(e, key, 0.0) / steps})
        venv.close()
    return rows


def bench_render(env_id: str, frames: int, *, seed: int = 0) -> dict[str, Any]:
    """A row of milliseconds per ``rgb_array`` frame of the single env, a step between frames
    (as RecordVideo renders): the first frame apart, then the median and slowest."""
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(frames + 1):
        _, _, term, trunc, _ = env.step(rng.uniform(-0.1, 0.1, env.action_space.shape))
        if term or trunc:
            env.reset()
        t0 = time.perf_counter()
        frame = env.render()
        times.append(1e3 * (time.perf_counter() - t0))
    env.close()
    return {"bench": "render", "env_id": env_id, "device": "cpu",
            "device_name": device_name(torch.device("cpu")), "frames": frames,
            "frame_shape": list(frame.shape), "first_frame_ms": times[0],
            "ms_per_frame": float(np.median(times[1:])), "max_ms": max(times[1:])}


def add_parser(subparsers: Any) -> None:
    """The ``optenv bench`` sub-command."""
    p = subparsers.add_parser("bench", help="throughput benchmarks (JSON lines)")
    p.add_argument("what", choices=["env", "render"],
                   help="what to measure: env steps per second, or ms per rgb_array frame")
    p.add_argument("--env", default="optenv/LogisticRegression-v0", help="env id")
    p.add_argument("--num-envs", type=int, default=256, help="N for the vector envs")
    p.add_argument("--steps", type=int, default=400, help="timed steps per measurement")
    p.add_argument("--device", action="append", default=None,
                   help="device for the batched env (repeatable; default cpu, and cuda if present)")
    p.add_argument("--no-sync-vector", action="store_true", help="skip SyncVectorEnv")
    p.add_argument("--profile", action="store_true",
                   help="print the ops with the most self time per batched step instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_int("--num-envs", args.num_envs, 1)
    check_int("--steps", args.steps, 1)
    if args.env not in gym.registry:
        raise ValueError(f"--env: got {args.env!r}, allowed: {', '.join(optenv.BUILTIN_IDS)}")
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device: got {d!r}, but CUDA is not available here")
    if args.what == "render":
        ids = list(dict.fromkeys([args.env, "optenv/NeuralNet-v0"]))
        rows = [bench_render(env_id, args.steps) for env_id in ids]
    elif args.profile:
        rows = [r for d in devices for r in profile_env(args.env, args.num_envs, args.steps,
                                                          device=d)]
    else:
        rows = bench_env(args.env, args.num_envs, args.steps, devices=devices,
                         sync_vector=not args.no_sync_vector)
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0

