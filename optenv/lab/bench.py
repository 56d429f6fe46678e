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

Every env row gives d and the bytes of state per env (the env's dtype; the state's histories
make it (2 + 2H)·d + H numbers, so ``--env-kwargs history=2`` is how a large net fits). For the
neural-net family (``optenv/MLPClassifier-v0``) ``--num-envs 1,16,64`` measures several N, and
extra rows time f/∇f alone: the family's closed form against its floor, one batched
``torch.func`` forward+backward (``vmap(grad)``) of the same N nets on the same minibatches.
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
from optenv.runs import torch_threads
from optenv.validation import check_int

__all__ = ["add_parser", "bench_env", "bench_objective", "bench_render", "device_name",
           "profile_env", "run"]


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
                 check_actions: bool, n_actions: int, seed: int,
                 env_kwargs: dict[str, Any] | None = None) -> tuple[Any, torch.Tensor]:
    """A reset batched env and ``n_actions`` random action batches drawn on its device."""
    venv = gym.make_vec(env_id, num_envs=n, device=dev, dtype=dtype, check_actions=check_actions,
                        **({"cuda_graph": True} if graphed else {}), **(env_kwargs or {}))
    venv.reset(seed=seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    acts = torch.rand(n_actions, n, venv.single_action_space.shape[0], generator=g,
                      device=dev) * 2 - 1
    return venv, acts


def _state_bytes(env: Any, dtype: str) -> int:
    """Bytes of one env's state in ``dtype`` (the histories dominate: (2 + 2H)·d + H)."""
    return int(env.unwrapped.layout.state_dim) * torch.finfo(getattr(torch, dtype)).bits // 8


def bench_env(env_id: str, num_envs: int | list[int], steps: int, *, devices: list[str],
              sync_vector: bool = True, seed: int = 0,
              env_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of env-steps/s for the single env, SyncVectorEnv and the batched env (at each N of
    ``num_envs`` on the CPU), the env made with ``env_kwargs``."""
    rows: list[dict[str, Any]] = []
    cpu = torch.device("cpu")
    sizes_cpu = [num_envs] if isinstance(num_envs, int) else list(num_envs)
    kwargs = dict(env_kwargs or {})
    rng = np.random.default_rng(seed)

    single = gym.make(env_id, **kwargs)
    single.reset(seed=seed)
    base = {"bench": "env", "env_id": env_id, "torch": torch.__version__,
            **({"env_kwargs": kwargs} if kwargs else {}), "d": single.unwrapped.family.d}
    acts = rng.uniform(-1, 1, (steps + 10, single.action_space.shape[0])).astype(np.float32)

    def single_step(i: int) -> None:
        _, _, term, trunc, _ = single.step(acts[i])
        if term or trunc:
            single.reset()

    dt = _timed(single_step, steps, 10, lambda: None)
    rows.append({**base, "impl": "single", "num_envs": 1, "device": "cpu",
                 "device_name": device_name(cpu), "dtype": "float64",
                 "state_bytes_per_env": _state_bytes(single, "float64"),
                 "env_steps_per_s": steps / dt})
    sync_rates: dict[int, float] = {}
    for n in sizes_cpu if sync_vector else []:
        sv = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", **kwargs)
        sv.reset(seed=seed)
        sv_steps = max(5, steps // 20)
        sacts = rng.uniform(-1, 1, (sv_steps + 2, n, single.action_space.shape[0]))
        dt = _timed(lambda i, v=sv, a=sacts: v.step(a[i].astype(np.float32)), sv_steps, 2,
                    lambda: None)
        sync_rates[n] = sv_steps * n / dt
        rows.append({**base, "impl": "gymnasium.SyncVectorEnv", "num_envs": n,
                     "device": "cpu", "device_name": device_name(cpu), "dtype": "float64",
                     "state_bytes_per_env": _state_bytes(single, "float64"),
                     "env_steps_per_s": sync_rates[n]})
        sv.close()
    for dev_s in devices:
        dev = torch.device(dev_s)
        # 65 536 envs on an accelerator where their float64 states fit in 8 GiB (not the nets)
        large = _state_bytes(single, "float64") * 65536 <= 8 * 2**30
        sizes = sizes_cpu if dev.type == "cpu" or not large else sorted({*sizes_cpu, 65536})
        dtypes = ["float64"] if dev.type == "cpu" else ["float32", "float64"]
        graphs = [False] if dev.type != "cuda" else [False, True]
        for n, dt_name, graphed in ((n, d, g) for n in sizes for d in dtypes for g in graphs):
            venv, vacts = _batched_env(env_id, n, dev, dt_name, graphed, dev.type == "cpu", 8,
                                       seed, kwargs)
            sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
            dt = _timed(lambda i, v=venv, a=vacts: v.step(a[i % 8]), steps, 10, sync)
            rate = steps * n / dt
            row = {**base, "impl": "optenv.OptimizationVectorEnv", "num_envs": n,
                   "device": dev.type, "device_name": device_name(dev), "dtype": dt_name,
                   "state_bytes_per_env": _state_bytes(venv, dt_name),
                   "env_steps_per_s": rate}
            if graphed:
                row["cuda_graph"] = bool(venv.unwrapped.graph_captured)
            if n in sync_rates and dev.type == "cpu":
                row["speedup_vs_sync_vector"] = rate / sync_rates[n]
            rows.append(row)
            venv.close()
    return rows


def _vmap_floor(family: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]:
    """(x [N, d], X [N, b, k], y [N, b]) → (f, ∇f) of the family's nets by one
    ``torch.func.vmap(grad_and_value)`` over N functional MLPs: the reference floor."""
    import torch.nn.functional as F

    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[family.activation]

    def loss(xi: torch.Tensor, Xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        a, reg = Xi, xi.new_zeros(())
        layers = family.unpack(xi.unsqueeze(0))
        for index, (W, b) in enumerate(layers):
            a = F.linear(a, W[0], b[0])
            reg = reg + (W[0] * W[0]).sum()
            if index < len(layers) - 1:
                a = act(a)
        return F.cross_entropy(a, yi) + 0.5 * family.l2 * reg

    return torch.func.vmap(torch.func.grad_and_value(loss))


def bench_objective(env_id: str, num_envs: list[int], steps: int, *, device: str = "cpu",
                    dtype: str = "float64", env_kwargs: dict[str, Any] | None = None,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Rows timing f and ∇f alone on N instances' minibatches of a neural-net id: the family's
    ``value_and_grad`` and the ``torch.func`` floor (:func:`_vmap_floor`), with their ratio."""
    from optenv.registration import family_of

    family = family_of(env_id)
    if env_kwargs:
        family = type(family)(**{**family.config(), **{
            k: v for k, v in env_kwargs.items() if k in family.config()}})
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    floor = _vmap_floor(family)
    rows = []
    for n in num_envs:
        data, x = family.sample(list(range(seed, seed + n)), dtype=getattr(torch, dtype),
                                device=dev)
        X, y = family.minibatch(data, x)
        ours = _timed(lambda i, d=data, x=x: family.value_and_grad(x, d), steps, 3, sync)
        ref = _timed(lambda i, x=x, X=X, y=y: floor(x, X, y), steps, 3, sync)
        base = {"bench": "objective", "env_id": env_id, "d": family.d, "num_envs": n,
                "batch_size": family.batch_size, "device": dev.type,
                "device_name": device_name(dev), "dtype": dtype, "torch": torch.__version__}
        rows.append({**base, "impl": "MLPClassifier.value_and_grad",
                     "evals_per_s": steps * n / ours, "time_vs_torch_func": ours / ref})
        rows.append({**base, "impl": "torch.func.vmap(grad_and_value)",
                     "evals_per_s": steps * n / ref})
    return rows


def _against_floor(rows: list[dict[str, Any]]) -> None:
    """Add to each batched-env row ``step_vs_torch_func_floor``: its step's time over the
    time of the floor (one batched ``torch.func`` forward+backward of the same N nets, same
    device and dtype), the issue's "within 2× of the floor" figure for the whole step."""
    floor = {(r["device"], r["dtype"], r["num_envs"]): r["evals_per_s"] for r in rows
             if r.get("impl") == "torch.func.vmap(grad_and_value)"}
    for r in rows:
        key = (r["device"], r["dtype"], r["num_envs"])
        if r.get("impl") == "optenv.OptimizationVectorEnv" and key in floor:
            r["step_vs_torch_func_floor"] = floor[key] / r["env_steps_per_s"]


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
    p.add_argument("--num-envs", default="256",
                   help="N for the vector envs, or a comma list of them (e.g. 1,16,64)")
    p.add_argument("--env-kwargs", default=None, metavar="KEY=VALUE,...",
                   help="env or family arguments, e.g. history=2 or hidden=100,inputs=784 "
                        "(values read as int, float, bool or str)")
    p.add_argument("--steps", type=int, default=400, help="timed steps per measurement")
    p.add_argument("--device", action="append", default=None,
                   help="device for the batched env (repeatable; default cpu, and cuda if present)")
    p.add_argument("--no-sync-vector", action="store_true", help="skip SyncVectorEnv")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 on a shared machine)")
    p.add_argument("--profile", action="store_true",
                   help="print the ops with the most self time per batched step instead")
    p.set_defaults(func=run)


def _parse_sizes(text: str) -> list[int]:
    """``--num-envs``: "64" or "1,16,64" → [64] / [1, 16, 64]; ValueError naming the flag."""
    try:
        sizes = [int(part) for part in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--num-envs: got {text!r}, allowed: an int >= 1 or a comma list of "
                         "them") from None
    for n in sizes:
        check_int("--num-envs", n, 1)
    return sizes


def _measure(args: argparse.Namespace, sizes: list[int], devices: list[str],
             env_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows ``optenv bench env`` prints (render, profile, or throughput)."""
    if args.what == "render":
        ids = list(dict.fromkeys([args.env, "optenv/NeuralNet-v0"]))
        return [bench_render(env_id, args.steps) for env_id in ids]
    if args.profile:
        return [r for d in devices for r in profile_env(args.env, sizes[-1], args.steps,
                                                          device=d)]
    rows = bench_env(args.env, sizes, args.steps, devices=devices,
                     sync_vector=not args.no_sync_vector, env_kwargs=env_kwargs)
    if gym.spec(args.env).kwargs.get("family") == "MLPClassifier":
        rows += [r for d in devices for r in bench_objective(
            args.env, sizes, args.steps, device=d, env_kwargs=env_kwargs,
            dtype="float64" if d == "cpu" else "float32")]
        _against_floor(rows)
    return rows


def run(args: argparse.Namespace) -> int:
    from optenv.lab.compare import parse_env_kwargs

    sizes = _parse_sizes(args.num_envs)
    env_kwargs = parse_env_kwargs(getattr(args, "env_kwargs", None))
    check_int("--steps", args.steps, 1)
    threads = check_int("--threads", args.threads, 1, optional=True)
    if args.env not in gym.registry:
        raise ValueError(f"--env: got {args.env!r}, allowed: {', '.join(optenv.BUILTIN_IDS)}")
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device: got {d!r}, but CUDA is not available here")
    with torch_threads(threads):  # the caller's thread count comes back afterwards
        rows = _measure(args, sizes, devices, env_kwargs)
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0

