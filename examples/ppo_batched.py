"""Stable-Baselines3 PPO trained on 64 logistic-regression objectives stepped as one batch."""

from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from optenv.sb3 import SB3VecEnv

venv = VecNormalize(SB3VecEnv("optenv/LogisticRegression-v0", num_envs=64), norm_reward=False)
model = PPO("MlpPolicy", venv, n_steps=40, batch_size=256, seed=0, verbose=0)
model.learn(total_timesteps=20_000)
print("trained PPO for", model.num_timesteps, "env steps")
