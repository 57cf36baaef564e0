"""The distributional critic: C51's projection against a floor/ceil reference, its target's mean
against the scalar n-step target, and policy evaluation against the exact Q^pi of a finite MDP."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference import bellman
from rl_as_inference.algos import mpo
from rl_as_inference.distributional import (
    CategoricalQ,
    categorical_projection,
    distributional_q_loss,
    distributional_target,
)


def _floor_ceil_projection(positions: np.ndarray, probs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """C51's projection written as in the paper's algorithm: b = (clip(v) - v_min) / dz, the mass
    split between atoms floor(b) and ceil(b) (all to one where they coincide)."""
    v_min, v_max, n = support[0], support[-1], len(support)
    dz = (v_max - v_min) / (n - 1)
    out = np.zeros((positions.shape[0], n))
    for row in range(positions.shape[0]):
        for v, p in zip(positions[row], probs[row], strict=True):
            b = (min(max(v, v_min), v_max) - v_min) / dz
            lo, hi = math.floor(b), math.ceil(b)
            if lo == hi:
                out[row, lo] += p
            else:
                out[row, lo] += p * (hi - b)
                out[row, hi] += p * (b - lo)
    return out


def test_the_projection_is_c51s_and_keeps_mass_and_inner_means():
    gen = torch.Generator().manual_seed(0)
    support = torch.linspace(-2.0, 3.0, 11, dtype=torch.float64)
    positions = torch.rand(6, 7, generator=gen, dtype=torch.float64) * 7.0 - 3.0  # some outside
    positions[0, :3] = support[[0, 4, 10]]  # exactly on atoms
    probs = torch.rand(6, 7, generator=gen, dtype=torch.float64)
    probs /= probs.sum(-1, keepdim=True)
    projected = categorical_projection(positions, probs, support)
    reference = _floor_ceil_projection(positions.numpy(), probs.numpy(), support.numpy())
    np.testing.assert_allclose(projected.numpy(), reference, atol=1e-12)
    assert torch.allclose(projected.sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-12)
    clipped = positions.clamp(-2.0, 3.0)
    assert torch.allclose((projected * support).sum(-1), (probs * clipped).sum(-1), atol=1e-12)


def _uniform_policy(n: int):
    def policy(obs: torch.Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=torch.zeros(obs.shape[0], n))

    return policy


def test_the_target_mean_is_the_scalar_n_step_target_of_the_bootstrapped_mean():
    """Inside the support, E[target] = n_step_target(bootstrap = E_{a'~pi}[E Z'(s_m, a')]): the
    mean of a truncated, a terminated and an unfinished path, each with its own m."""
    torch.manual_seed(1)
    obs_space, act_space = gym.spaces.Discrete(4), gym.spaces.Discrete(3)
    critic = CategoricalQ(obs_space, act_space, hidden=(16,), num_atoms=41, v_min=-20.0, v_max=20.0)
    n, b = 3, 3
    rewards = torch.tensor([[1.0, -0.5, 0.25], [0.5, 2.0, -1.0], [0.3, 0.7, 0.1]])
    terminated = torch.zeros(n, b, dtype=torch.bool)
    truncated = torch.zeros(n, b, dtype=torch.bool)
    terminated[1, 0] = True  # path 0 ends by termination after 2 steps
    truncated[0, 1] = True  # path 1 is cut by a time limit after 1 step: bootstrap there
    next_obs = torch.tensor([[1, 2, 3], [2, 0, 1], [3, 1, 0]])
    last = torch.tensor([1, 0, 2])
    path = {
        "obs": torch.tensor([[0, 1, 2], [1, 2, 3], [2, 0, 1]]),
        "action": torch.tensor([[0, 1, 2], [1, 0, 2], [2, 2, 0]]),
        "reward": rewards,
        "terminated": terminated,
        "truncated": truncated,
        "next_obs": next_obs,
    }
    batch = {"obs": path["obs"][0], "action": path["action"][0], "path": path, "last": last}
    policy = _uniform_policy(3)
    gamma = 0.9
    target = distributional_target(critic, policy, batch, gamma=gamma)
    mean = (target * critic.support).sum(-1)
    with torch.no_grad():
        last_obs = next_obs[last, torch.arange(b)]
        bootstrap = critic.target_min(last_obs).mean(-1)  # uniform pi over the 3 actions
    scalar = bellman.n_step_target(
        rewards, terminated, torch.zeros(n, b), bootstrap, gamma, truncated=truncated
    )
    assert torch.allclose(mean, scalar, atol=1e-5), (mean, scalar)
    assert mean[0] == pytest.approx(1.0 + 0.9 * 0.5, abs=1e-5)  # terminated: the rewards alone


def test_policy_evaluation_converges_to_the_exact_q_of_a_finite_mdp():
    """Full-batch fitted iteration of the projected distributional Bellman operator on every (s, a)
    of a deterministic 4-state MDP under a uniform policy: its fixed point's means solve
    Q = R + gamma P pi Q (the projection keeps means inside the support), compared with the
    linear solve."""
    torch.manual_seed(0)
    gen = np.random.default_rng(3)
    num_s, num_a, gamma = 4, 2, 0.8
    next_state = gen.integers(0, num_s, (num_s, num_a))
    reward = gen.uniform(0.0, 1.0, (num_s, num_a))
    # exact Q^pi: Q(s, a) = R(s, a) + gamma mean_a' Q(s'(s, a), a'), solved as a linear system
    size = num_s * num_a
    transition = np.zeros((size, size))
    for s in range(num_s):
        for a in range(num_a):
            for a2 in range(num_a):
                transition[s * num_a + a, next_state[s, a] * num_a + a2] += 1.0 / num_a
    exact = np.linalg.solve(np.eye(size) - gamma * transition, reward.reshape(-1)).reshape(num_s, num_a)
    # returns lie in [0, 1 / (1 - gamma)] = [0, 5]: a support that contains them
    critic = CategoricalQ(
        gym.spaces.Discrete(num_s),
        gym.spaces.Discrete(num_a),
        hidden=(32,),
        num_atoms=51,
        v_min=-1.0,
        v_max=6.0,
    )
    states = torch.arange(num_s).repeat_interleave(num_a)
    actions = torch.arange(num_a).repeat(num_s)
    batch = {
        "obs": states,
        "action": actions,
        "reward": torch.as_tensor(reward.reshape(-1), dtype=torch.float32),
        "terminated": torch.zeros(size, dtype=torch.bool),
        "next_obs": torch.as_tensor(next_state.reshape(-1)),
    }
    opt = torch.optim.Adam(critic.online_parameters(), lr=1e-2)
    policy = _uniform_policy(num_a)
    for _ in range(40):  # 40 backups: gamma^40 < 1.4e-4 of the initial error remains
        critic.update_target(1.0)
        for _ in range(100):
            loss = distributional_q_loss(critic, policy, batch, gamma=gamma)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        learned = critic.min(torch.arange(num_s)).numpy()
    # the tolerance is the fit's, not sampling's (the targets are exact expectations): each inner
    # fit reaches its target's mean to about 1e-3, and the backups' errors add up to at most
    # 1e-3 / (1 - gamma) = 5e-3; 0.02 leaves room for Adam's last oscillations
    np.testing.assert_allclose(learned, exact, atol=0.02)


def test_mpo_trains_with_the_distributional_critic_and_refuses_twins():
    config = mpo.MPOConfig(
        env="Pendulum-v1",
        total_env_steps=300,
        learning_starts=200,
        hidden=(16,),
        log_every=100,
        distributional_critic=True,
        twin_critic=False,
        v_min=-200.0,
        v_max=10.0,
        n_step=3,
    )
    result = mpo.train(config)
    row = result.metrics[-1]
    assert all(math.isfinite(float(row[k])) for k in ("loss", "critic_loss", "temperature"))
    with pytest.raises(ValueError, match="distributional_critic = true is one network.*twin_critic = false"):
        mpo.train(mpo.MPOConfig(env="Pendulum-v1", distributional_critic=True, total_env_steps=10))
    with pytest.raises(
        ValueError, match="n_step_correction='retrace' is not available with the distributional"
    ):
        mpo.train(
            mpo.MPOConfig(
                env="Pendulum-v1",
                distributional_critic=True,
                twin_critic=False,
                n_step=2,
                n_step_correction="retrace",
                total_env_steps=300,
                learning_starts=100,
                hidden=(8,),
            )
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_atoms": 1}, "num_atoms=1 is not allowed"),
        ({"v_min": 1.0, "v_max": 1.0}, "v_min=1.0 and v_max=1.0"),
    ],
)
def test_a_bad_support_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CategoricalQ(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)), **kwargs)
