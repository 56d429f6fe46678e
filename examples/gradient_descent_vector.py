"""Gradient descent as a policy on 1024 objectives at once, through the batched vector env.

The policy reads the current gradient from the observation (``observation_layout``) and steps
against it; the whole batch is one torch computation per iteration.
"""

import gymnasium as gym
import torch

import optenv  # noqa: F401

venv = gym.make_vec("optenv/RobustRegression-v0", num_envs=1024, split="test",
                    autoreset_mode="Disabled")
obs, info = venv.reset(seed=0)
grad = venv.unwrapped.observation_layout["CUR_GRAD"]
lr = 2.0
print(f"mean f(x0) = {info['f'].mean():.4f}")
for _ in range(40):
    obs, reward, terminated, truncated, info = venv.step(-lr * obs[:, grad].double())
print(f"mean f after 40 GD steps (lr={lr}) = {info['f'].mean():.4f}, "
      f"diverged: {int(terminated.sum())}")
print("median f:", float(torch.median(info["f"])))
