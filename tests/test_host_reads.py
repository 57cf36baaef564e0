"""No host reads in the hot paths: the policies' distributions, the MPO / V-MPO losses, the SAC
and soft Q-learning learner steps and segment SVI's actor step run on torch's ``meta`` device,
where any read of a tensor's value back to the host (``bool``, ``item``, a distribution's argument
validation) raises. On CUDA each such read is a device synchronization per rollout or learner
step; this is how CI, which has no GPU, catches one. On the CPU the same distributions still
validate their arguments."""

from __future__ import annotations

import copy

import gymnasium as gym
import pytest
import torch
from torch.distributions import kl_divergence

from rl_as_inference import critics, envs, models
from rl_as_inference.algos import mpo, sac, softq, svi, vmpo
from rl_as_inference.algos.svi_actor import SegmentActor
from rl_as_inference.critics import TwinQ
from rl_as_inference.guides import CategoricalMLP, GaussianMLP, SoftQPolicy, TanhGaussianMLP

META = torch.device("meta")
POLICIES = {
    "categorical": (CategoricalMLP, "CartPole-v1"),
    "softq": (SoftQPolicy, "CartPole-v1"),
    "gaussian": (GaussianMLP, "Pendulum-v1"),
    "tanh-gaussian": (TanhGaussianMLP, "Pendulum-v1"),
}


def _policy(name: str, device: torch.device | str = "cpu"):
    cls, env_id = POLICIES[name]
    env = gym.make(env_id)
    return cls(env.observation_space, env.action_space).to(device), env


def test_meta_tensors_refuse_host_reads():
    # the premise of this module: were meta tensors readable, the tests below could not fail
    with pytest.raises(RuntimeError, match="meta"):
        bool(torch.zeros(1, device=META).any())


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_policy_step_and_its_kl_to_a_frozen_copy_read_nothing_back(name):
    policy, env = _policy(name, META)
    prior = copy.deepcopy(policy)  # pi_k of em / svi's KL objective: other tensors, the same box
    obs = torch.zeros(8, *env.observation_space.shape, device=META)
    d = policy(obs)
    action = d.rsample() if d.has_rsample else d.sample()
    assert d.log_prob(action).shape == (8,)
    assert kl_divergence(d, prior(obs)).shape == (8,)


@pytest.mark.parametrize("name", list(POLICIES))
def test_on_the_cpu_the_distributions_still_validate(name):
    policy, env = _policy(name)
    obs = torch.full((2, *env.observation_space.shape), float("nan"))
    with pytest.raises(ValueError, match="Expected parameter"):
        policy(obs)


def test_squashed_gaussians_on_different_boxes_are_still_refused():
    policy, _ = _policy("tanh-gaussian")
    wide = TanhGaussianMLP(
        gym.make("Pendulum-v1").observation_space, gym.spaces.Box(-4.0, 4.0, (1,)), hidden=(64, 64)
    )
    wide.load_state_dict(
        policy.state_dict() | {"action_mid": torch.zeros(1), "action_half": torch.full((1,), 4.0)}
    )
    obs = torch.zeros(3, 3)
    with pytest.raises(NotImplementedError, match="different boxes"):
        kl_divergence(policy(obs), wide(obs))


@pytest.mark.parametrize("name", ["categorical", "gaussian"])
def test_the_vmpo_loss_reads_nothing_back(name):
    policy, env = _policy(name, META)
    obs = torch.zeros(16, *env.observation_space.shape, device=META)
    online, target = policy(obs), copy.deepcopy(policy)(obs)
    actions = target.sample()
    dim = 1 if name == "categorical" else 2
    loss, stats = vmpo.vmpo_losses(
        torch.zeros(16, device=META),
        torch.zeros(16, device=META, requires_grad=True),
        actions,
        online,
        target,
        torch.zeros((), device=META, requires_grad=True),
        torch.zeros(dim, device=META, requires_grad=True),
        vmpo.VMPOConfig(env=env.spec.id),
    )
    assert loss.shape == () and stats


def test_the_gaussian_mpo_loss_reads_nothing_back():
    m, b, d = 4, 8, 1
    zeros = torch.zeros(b, d, device=META)
    loss, stats = mpo.mpo_losses(
        torch.zeros(m, b, device=META),
        torch.zeros(m, b, d, device=META),
        (zeros.clone().requires_grad_(), torch.ones(b, d, device=META, requires_grad=True)),
        (zeros, torch.ones(b, d, device=META)),
        torch.zeros((), device=META, requires_grad=True),
        torch.zeros((), device=META, requires_grad=True),
        torch.zeros((), device=META, requires_grad=True),
        mpo.MPOConfig(env="Pendulum-v1"),
    )
    assert loss.shape == () and stats


def _batch(env: gym.Env, b: int, device: torch.device) -> dict:
    obs_dim = env.observation_space.shape[0]
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    action = torch.zeros(b, dtype=torch.long, device=device) if discrete else torch.zeros(b, 1, device=device)
    return {
        "obs": torch.zeros(b, obs_dim, device=device),
        "action": action,
        "reward": torch.zeros(b, device=device),
        "next_obs": torch.zeros(b, obs_dim, device=device),
        "terminated": torch.zeros(b, dtype=torch.bool, device=device),
    }


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_a_sac_learner_step_reads_nothing_back(env_id):
    env = gym.make(env_id)
    policy_cls = TanhGaussianMLP if env_id == "Pendulum-v1" else CategoricalMLP
    policy = policy_cls(env.observation_space, env.action_space).to(META)
    critic = TwinQ(env.observation_space, env.action_space, hidden=(16,)).to(META)
    batch = _batch(env, 8, META)
    loss = critics.soft_q_loss(critic, policy, batch, alpha=0.2, log_pi=0.0, gamma=0.99)
    assert loss.shape == ()
    if env_id == "Pendulum-v1":  # the reparameterized actor loss (continuous actions only)
        actor, log_q = sac.actor_loss(policy, critic, batch["obs"], 0.2, 0.0)
        assert actor.shape == () and log_q.shape == (8,)


@pytest.mark.parametrize("double_q", [False, True])
def test_a_soft_q_learner_step_reads_nothing_back(double_q):
    env = gym.make("CartPole-v1")
    q_net = SoftQPolicy(env.observation_space, env.action_space, hidden=(16,), temperature=0.1).to(META)
    target = copy.deepcopy(q_net)
    loss = softq.soft_q_loss(q_net, target, _batch(env, 8, META), gamma=0.99, double_q=double_q)
    assert loss.shape == ()


@pytest.mark.parametrize("objective", ["maxent", "kl"])
def test_an_svi_actor_step_reads_nothing_back(objective):
    # segment SVI (and em, its "kl" objective against a frozen pi_k): the trajectory ELBO of an
    # H-step model rolled out through the torch port of Pendulum-v1, its gradient and Adam step
    env = envs.make("Pendulum-v1", device=META)
    config = svi.SVIConfig(env="Pendulum-v1", horizon=3, objective=objective, hidden=(16,))
    actor = SegmentActor.build(config, env, META)
    critic = TwinQ(env.observation_space, env.action_space, hidden=(16,)).to(META)

    def soft_value(s: torch.Tensor) -> torch.Tensor:
        obs = env.observe(s, dtype=None).float()
        d = actor.policy(obs)
        action = d.rsample()
        return critic.min(obs, action) - 0.2 * d.log_prob(action)

    model = models.TrajectoryModel(
        env, actor.prior, horizon=3, alpha=0.2, gamma=0.99, terminal_value=soft_value
    )
    starts = torch.zeros(8, *env.state_shape, device=META)
    loss = actor.loss.differentiable_loss(model, actor.guide, 8, starts)
    assert loss.shape == ()
    actor.step(0.2 * loss)
