"""TorchRL drives every id and the batched env: ``GymEnv`` builds them (it probes with a
``frameskip`` keyword and drops it only on a TypeError in Python's words), and
``check_env_specs`` finds rewards, flags and infos of the dtypes the specs promise.
Skipped where torchrl is not installed (it is in the test extra)."""

from __future__ import annotations

import gymnasium as gym
import pytest

torchrl_envs = pytest.importorskip("torchrl.envs")
from torchrl.envs.utils import check_env_specs  # noqa: E402


def test_torchrl_gym_env_builds_every_id_and_passes_check_env_specs(env_id):
    env = torchrl_envs.GymEnv(env_id)
    check_env_specs(env, seed=0)
    rollout = env.rollout(3)
    assert rollout["next", "reward"].dtype == env.reward_spec.dtype


def test_torchrl_reads_every_info_value_into_a_typed_spec(env_id):
    env = torchrl_envs.GymEnv(env_id).auto_register_info_dict()
    check_env_specs(env, seed=0)
    step = env.rollout(2)["next"]
    for key, dtype in {"f": "float64", "grad_norm": "float64", "t": "int64",
                       "action_clipped": "bool", "diverged": "bool"}.items():
        assert str(step[key].dtype) == f"torch.{dtype}", key


@pytest.mark.parametrize("mode", ["SameStep", "Disabled"])
def test_torchrl_wraps_the_batched_env_and_passes_check_env_specs(env_id, mode):
    # TorchRL's GymWrapper takes vector envs in SAME_STEP or DISABLED autoreset mode
    venv = gym.make_vec(env_id, num_envs=3, autoreset_mode=mode)
    env = torchrl_envs.GymWrapper(venv)
    check_env_specs(env, seed=0)
    assert env.rollout(2)["next", "reward"].shape[:2] == (3, 2)
