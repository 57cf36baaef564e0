"""Critics: action-value networks Q(s, a) with target copies, for the KL-regularized Bellman operator."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import nn

from rl_as_inference import bellman
from rl_as_inference.guides.policies import ObservationEncoder, mlp

__all__ = ["QNetwork", "StateValue", "TwinQ", "polyak_update", "soft_q_loss"]


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging of a target network: target <- (1 - tau) target + tau online.

    One multi-tensor ``lerp`` over all parameters (the kernel torch's optimizers use): the same
    arithmetic as a per-parameter loop, without a Python call per tensor on every learner step.
    """
    targets, onlines = list(target.parameters()), list(online.parameters())
    if len(targets) != len(onlines):
        raise ValueError(f"target has {len(targets)} parameters, online {len(onlines)}")
    torch._foreach_lerp_(targets, onlines, tau)


class QNetwork(nn.Module):
    """Q(s, a): for a Box action space an MLP over [features(obs), a] -> [B]; for Discrete(n) an MLP
    over features(obs) -> [B, n] (all actions at once, so expectations over q are exact).
    ``rescale_obs=True`` maps bounded observation coordinates onto [-1, 1] (:class:`ObservationEncoder`)."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (256, 256),
        rescale_obs: bool = False,
    ):
        super().__init__()
        self.encoder = ObservationEncoder(observation_space, rescale=rescale_obs)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.net = mlp([self.encoder.dim, *hidden, int(action_space.n)], nn.ReLU)
        else:
            self.net = mlp([self.encoder.dim + int(action_space.shape[0]), *hidden, 1], nn.ReLU)

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encoder(obs, self.net[0].weight.dtype)
        if self.discrete:
            return self.net(x)
        return self.net(torch.cat((x, action.to(x.dtype)), dim=-1)).squeeze(-1)


class StateValue(nn.Module):
    """V(s): an MLP over the (encoded) observation; ``forward(obs)`` returns ``[*B]`` values."""

    def __init__(
        self,
        observation_space: gym.Space,
        hidden: tuple[int, ...],
        activation: type[nn.Module],
        rescale_obs: bool = False,
    ):
        super().__init__()
        self.encoder = ObservationEncoder(observation_space, rescale=rescale_obs)
        self.net = mlp([self.encoder.dim, *hidden, 1], activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Values of a batch of observations ``[*B, ...]`` -> ``[*B]``."""
        return self.net(self.encoder(obs, self.net[0].weight.dtype)).squeeze(-1)


class TwinQ(nn.Module):
    """Two Q networks and their slowly tracking targets: clipped double-Q (min of the two) curbs the
    overestimation that a max or an expectation over a learned Q otherwise accumulates."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (256, 256),
        rescale_obs: bool = False,
    ):
        super().__init__()
        self.q1 = QNetwork(observation_space, action_space, hidden, rescale_obs)
        self.q2 = QNetwork(observation_space, action_space, hidden, rescale_obs)
        self.target = copy.deepcopy(nn.ModuleList([self.q1, self.q2])).requires_grad_(False)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(obs, action), self.q2(obs, action)

    def online_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should train (the targets only track them)."""
        return [*self.q1.parameters(), *self.q2.parameters()]

    def min(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """min(Q1, Q2) of the online networks."""
        return torch.minimum(*self(obs, action))

    def target_min(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """min(Q1', Q2') of the target networks."""
        return torch.minimum(self.target[0](obs, action), self.target[1](obs, action))

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """Polyak averaging: target <- (1 - tau) target + tau online."""
        polyak_update(self.target[0], self.q1, tau)
        polyak_update(self.target[1], self.q2, tau)


def soft_q_loss(
    critic: TwinQ, policy: nn.Module, batch: dict, *, alpha: float | torch.Tensor, log_pi: float, gamma: float
) -> torch.Tensor:
    """Squared error of both online Q networks against the sampled T^{pi,q} target.

    y = r + gamma (1 - terminated) V'(s'), V'(s') = E_{a'~q}[min Q'(s', a') - alpha (log q(a'|s') - log pi(a'))]
    with the target networks' clipped double-Q: one sample of a' for continuous actions, the exact
    sum over actions for discrete ones. An n-step batch (with a ``discount`` field, see
    :meth:`ReplayBuffer.sample_n_step`) uses its summed reward and gamma^m in place of r and gamma.
    """
    discount = batch.get("discount", gamma)
    with torch.no_grad():
        d_next = policy(batch["next_obs"])
        if critic.q1.discrete:
            probs = d_next.probs
            q_next = critic.target_min(batch["next_obs"]).to(probs.dtype)
            v_next = bellman.soft_value_of_distribution(q_next, probs, torch.as_tensor(log_pi), alpha)
        else:
            a_next = d_next.sample()
            v_next = bellman.soft_value_of_sample(
                critic.target_min(batch["next_obs"], a_next), d_next.log_prob(a_next), log_pi, alpha
            )
        target = bellman.bellman_target(batch["reward"], batch["terminated"], v_next, discount)
    q1, q2 = critic(batch["obs"], batch["action"])
    if critic.q1.discrete:
        index = batch["action"].long().unsqueeze(-1)
        q1, q2 = q1.gather(-1, index).squeeze(-1), q2.gather(-1, index).squeeze(-1)
    return (q1 - target).square().mean() + (q2 - target).square().mean()
