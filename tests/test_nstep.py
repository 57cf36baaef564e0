"""n-step replay critics end to end: the path targets read nothing back from the device (meta
tensors), every replay algorithm trains with n-step paths, uncorrected and with Retrace, and a run
whose buffer stores the behaviour's log-probabilities resumes bit-identical."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import pytest
import torch

from rl_as_inference import critics
from rl_as_inference.algos import em, mpo, sac, softq, svi
from rl_as_inference.critics import TwinQ, policy_log_prior
from rl_as_inference.guides import CategoricalMLP, SoftQPolicy, TanhGaussianMLP
from rl_as_inference.resume import Checkpointer

META = torch.device("meta")


def _path_batch(env: gym.Env, n: int, b: int, device: torch.device) -> dict:
    """An n-step batch shaped as ReplayBuffer.sample_n_step returns it, of zeros."""
    obs_shape = env.observation_space.shape
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    action_shape = () if discrete else env.action_space.shape
    path = {
        "obs": torch.zeros(n, b, *obs_shape, device=device),
        "action": torch.zeros(
            n, b, *action_shape, dtype=torch.long if discrete else torch.float32, device=device
        ),
        "reward": torch.zeros(n, b, device=device),
        "next_obs": torch.zeros(n, b, *obs_shape, device=device),
        "terminated": torch.zeros(n, b, dtype=torch.bool, device=device),
        "truncated": torch.zeros(n, b, dtype=torch.bool, device=device),
        "behaviour_log_prob": torch.zeros(n, b, device=device),
    }
    last = torch.zeros(b, dtype=torch.long, device=device)
    return {key: value[0] for key, value in path.items()} | {"path": path, "last": last}


@pytest.mark.parametrize("correction", critics.N_STEP_CORRECTIONS)
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_a_twin_q_path_target_reads_nothing_back(env_id, correction):
    env = gym.make(env_id)
    policy_cls = TanhGaussianMLP if env_id == "Pendulum-v1" else CategoricalMLP
    policy = policy_cls(env.observation_space, env.action_space, hidden=(16,)).to(META)
    prior = copy.deepcopy(policy)  # em's pi_k
    critic = TwinQ(env.observation_space, env.action_space, hidden=(16,)).to(META)
    alpha = torch.tensor(0.2, device=META)  # a learned temperature lives on the device
    batch = _path_batch(env, 4, 8, META)
    loss = critics.soft_q_loss(
        critic, policy, batch, alpha=alpha, log_pi=policy_log_prior(prior), gamma=0.99, correction=correction
    )
    assert loss.shape == ()


@pytest.mark.parametrize("correction", critics.N_STEP_CORRECTIONS)
@pytest.mark.parametrize("double_q", [False, True])
def test_a_soft_q_path_target_reads_nothing_back(double_q, correction):
    env = gym.make("CartPole-v1")
    q_net = SoftQPolicy(env.observation_space, env.action_space, hidden=(16,), temperature=0.1).to(META)
    target = copy.deepcopy(q_net)
    batch = _path_batch(env, 3, 8, META)
    loss = softq.soft_q_loss(q_net, target, batch, gamma=0.99, double_q=double_q, correction=correction)
    assert loss.shape == ()


SMALL = {"total_env_steps": 700, "learning_starts": 200, "log_every": 100, "batch_size": 32, "hidden": (16,)}
RETRACE = {"n_step": 3, "n_step_correction": "retrace", "trace_lambda": 0.9}
CASES = {
    "sac": (sac, sac.SACConfig(env="Pendulum-v1", num_envs=2, **RETRACE, **SMALL)),
    "em": (em, em.EMConfig(env="Pendulum-v1", num_envs=2, horizon=2, actor_batch_size=8, **RETRACE, **SMALL)),
    "mpo-categorical": (mpo, mpo.MPOConfig(env="CartPole-v1", num_envs=3, **RETRACE, **SMALL)),
    "softq": (softq, softq.SoftQConfig(env="CartPole-v1", num_envs=3, **RETRACE, **SMALL)),
}


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", list(CASES))
def test_a_retrace_run_resumes_bit_identical(name, tmp_path):
    module, config = CASES[name]
    whole = module.train(config, checkpointer=Checkpointer(tmp_path / "whole.pt", every=250))
    assert all(math.isfinite(row["critic_loss"]) for row in whole.metrics)

    def stop(row):
        if row["env_steps"] >= 500:
            raise Stop

    with pytest.raises(Stop):
        module.train(config, callback=stop, checkpointer=Checkpointer(tmp_path / "cut.pt", every=250))
    resumed = module.train(config, checkpointer=Checkpointer(tmp_path / "cut.pt", every=250, resume=True))
    assert resumed.env_steps == whole.env_steps
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key


@pytest.mark.parametrize(
    "module, config",
    [
        (svi, svi.SVIConfig(env="Pendulum-v1", horizon=2, actor_batch_size=8, n_step=3, **SMALL)),
        (
            mpo,
            mpo.MPOConfig(env="Pendulum-v1", num_samples=4, n_step=3, n_step_correction="retrace", **SMALL),
        ),
    ],
    ids=["svi-n3", "mpo-gaussian-retrace"],
)
def test_replay_algorithms_train_on_n_step_paths(module, config):
    result = module.train(config)
    assert result.env_steps == config.total_env_steps
    assert all(math.isfinite(row["critic_loss"]) for row in result.metrics)
