"""RLlib PPO on optenv, with its environment steps in a remote env runner (a separate process).

Needs ``pip install "ray[rllib]"``, which pins its own Gymnasium version (RLlib 2.60: 1.2.2;
optenv works with Gymnasium >= 1.1), so install it in an environment of its own. Checked
2026-12-02 with Ray 2.60.0: this script runs with Gymnasium 1.2.2 and with 1.4.0.

The id is given as ``"optenv:optenv/LogisticRegression-v0"``: the part before the colon is a
module Gymnasium imports before it looks the id up, and that is what registers optenv's ids
in the runner process (a plain ``"optenv/..."`` id fails there with "Namespace optenv not
found", while the driver shows only an IndexError). Every multiprocess client needs this form.
"""

import ray
from ray.rllib.algorithms.ppo import PPOConfig

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
config = (
    PPOConfig()
    .environment("optenv:optenv/LogisticRegression-v0")
    .env_runners(num_env_runners=1, num_envs_per_env_runner=1, rollout_fragment_length=200)
    .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
    .debugging(seed=0)
)
algo = config.build_algo()
result = algo.train()
steps = result["num_env_steps_sampled_lifetime"]
print(f"RLlib PPO: one training iteration, {steps} env steps sampled in a remote runner")
algo.stop()
ray.shutdown()
