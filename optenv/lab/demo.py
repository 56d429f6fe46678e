"""``optenv demo``: step an env with two simple policies and show what the env gives back.

A gradient-descent policy (it reads CUR_GRAD from the observation, through the documented
``observation_layout``) and a random policy each optimise the same held-out objectives through
the batched vector env; the command prints the mean objective per iteration and writes one
rendered frame of the GD run as PNG.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import optenv
from optenv.checkpoint import atomic_write
from optenv.validation import check_int, check_number

__all__ = ["add_parser", "run"]


def _rollout(env_id: str, n: int, horizon: int, lr: float | None, seed: int) -> np.ndarray:
    """[n, horizon + 1] objective values of GD (lr) or uniform random actions (lr None)."""
    venv = gym.make_vec(env_id, num_envs=n, split="test", max_episode_steps=horizon,
                        autoreset_mode="Disabled")
    obs, info = venv.reset(seed=seed)
    grad_slice = venv.unwrapped.observation_layout["CUR_GRAD"]
    d = grad_slice.stop - grad_slice.start
    gen = torch.Generator().manual_seed(seed)
    fs = [info["f"]]
    for _ in range(horizon):
        if lr is None:
            act = torch.rand(obs.shape[0], d, generator=gen) * 2 - 1
        else:
            act = -lr * obs[:, grad_slice].double() / venv.unwrapped.max_step
        obs, _, _, _, info = venv.step(act)
        fs.append(info["f"])
    return torch.stack(fs, dim=1).numpy()


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="run an env with GD and random policies")
    p.add_argument("--env", default="optenv/LogisticRegression-v0", help="env id")
    p.add_argument("--n", type=int, default=64, help="number of held-out objectives")
    p.add_argument("--horizon", type=int, default=40, help="iterations per run")
    p.add_argument("--lr", type=float, default=1.0, help="GD learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the test objectives")
    p.add_argument("--out", default="runs/demo", help="folder for the PNG frame")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.env not in gym.registry or not args.env.startswith("optenv/"):
        raise ValueError(f"--env: got {args.env!r}, allowed: {', '.join(optenv.BUILTIN_IDS)}")
    n = check_int("--n", args.n, 1)
    horizon = check_int("--horizon", args.horizon, 1)
    lr = check_number("--lr", args.lr)
    seed = check_int("--seed", args.seed, 0)
    os.makedirs(args.out, exist_ok=True)
    if not os.access(args.out, os.W_OK):
        raise ValueError(f"--out: {args.out!r} is not writable")
    gd = _rollout(args.env, n, horizon, lr, seed)
    rnd = _rollout(args.env, n, horizon, None, seed)
    print(f"{args.env}: mean f over {n} held-out objectives (test split)")
    print(f"{'iter':>5} {'GD lr=' + format(lr, 'g'):>14} {'random':>14}")
    for t in sorted({*range(0, horizon + 1, max(1, horizon // 8)), horizon}):
        print(f"{t:>5} {np.nanmean(gd[:, t]):>14.6g} {np.nanmean(rnd[:, t]):>14.6g}")
    env = gym.make(args.env, split="test", render_mode="rgb_array", max_episode_steps=horizon)
    obs, _ = env.reset(seed=seed)
    gs = env.unwrapped.observation_layout["CUR_GRAD"]
    done = False
    while not done:
        obs, _, term, trunc, _ = env.step(np.clip(-lr * obs[gs] / env.unwrapped.max_step, -1, 1))
        done = term or trunc
    frame = env.render()
    from matplotlib.image import imsave

    path = atomic_write(os.path.join(args.out, "gd_run.png"),
                        lambda fh: imsave(fh, frame, format="png"), binary=True)
    print(f"wrote {path}")
    return 0
