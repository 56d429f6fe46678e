"""The 10-line loop from the README: a random agent on a held-out logistic-regression objective."""

import gymnasium as gym

import optenv  # noqa: F401  (registers optenv/... ids)

env = gym.make("optenv/LogisticRegression-v0", split="test")
obs, info = env.reset(seed=0)
print(f"f(x0) = {info['f']:.4f}, observation of {obs.shape[0]} features")
done = False
while not done:
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    done = terminated or truncated
print(f"after {info['t']} random steps: f = {info['f']:.4f}")
