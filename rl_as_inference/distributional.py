"""A distributional critic: the return Z(s, a) as a categorical distribution on fixed atoms.

Bellemare, Dabney and Munos (2017, C51) learn, instead of Q(s, a) = E[Z(s, a)], the distribution of
the return on N atoms z_1 < ... < z_N evenly spaced on [v_min, v_max]; Acme's distributional MPO
uses such a critic. The Bellman target of Z(s_0, a_0) from an m-step replayed path is the law of

    A + D Z(s_m, a'),  a' ~ pi(.|s_m),  A = sum_{k<m} gamma^k r_k,  D = gamma^m (0 after a termination),

whose atoms A + D z_j fall between the fixed ones; :func:`categorical_projection` moves each one's
mass onto its two neighbours in proportion to their closeness (C51's projection, which keeps the
mean wherever A + D z_j lies inside [v_min, v_max]). The loss is the cross-entropy of the predicted
probabilities against the projected target. Q(s, a) is the predicted mean, so everything that
reads a critic's values (the E-step of MPO, say) reads this one unchanged; since the projection
keeps means, the mean of the target is the scalar critic's n-step target (alpha = 0,
:func:`rl_as_inference.bellman.n_step_target`) with the bootstrap E[Z(s_m, a')], clipped to the
support.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import nn

from rl_as_inference import bellman
from rl_as_inference.critics import QNetwork, check_n_step_correction, polyak_update

__all__ = [
    "CategoricalQ",
    "categorical_projection",
    "check_correction",
    "distributional_q_loss",
    "distributional_target",
]


def categorical_projection(
    positions: torch.Tensor, probs: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Project a categorical distribution with atoms at ``positions`` onto the evenly spaced ``support``.

    The mass p_j at position v_j (clipped into [z_1, z_N]) goes to the atoms z_i with weight
    max(0, 1 - |v_j - z_i| / dz): all of it to z_i where v_j = z_i, split between the two
    neighbours in proportion to closeness otherwise (C51's projection). Sum and, inside the
    support, mean are kept.

    Args:
        positions: ``[B, K]`` atom positions of the distribution to project.
        probs: ``[B, K]`` their probabilities.
        support: ``[N]`` evenly spaced atoms.

    Returns:
        ``[B, N]`` probabilities on ``support``.
    """
    num_atoms = support.numel()
    v_min, v_max = support[0], support[-1]
    spacing = (v_max - v_min) / (num_atoms - 1)
    # the fractional atom index of each clipped position; its mass goes to floor and floor + 1 in
    # proportion to closeness (scatter-adds: O(B K), where the weights max(0, 1 - |v - z_i| / dz)
    # over every atom would be an O(B K N) tensor)
    where = (positions.clamp(v_min, v_max) - v_min) / spacing
    low = where.floor().clamp(0, num_atoms - 1)
    upper_share = where - low
    out = torch.zeros(*positions.shape[:-1], num_atoms, dtype=probs.dtype, device=probs.device)
    out.scatter_add_(-1, low.long(), probs * (1.0 - upper_share))
    out.scatter_add_(-1, (low + 1).clamp(max=num_atoms - 1).long(), probs * upper_share)
    return out


class CategoricalQ(nn.Module):
    """A distributional critic with a slowly tracking target copy; its values are the means E[Z(s, a)].

    It answers the calls MPO makes of :class:`rl_as_inference.critics.TwinQ` with one network
    (``min`` and ``target_min`` are the online and target means, ``q2`` is None), and
    :func:`distributional_q_loss` trains it.

    Args:
        observation_space, action_space: the env's spaces (Box or Discrete actions).
        hidden: hidden layer sizes.
        num_atoms: N >= 2 atoms, evenly spaced on [v_min, v_max].
        v_min, v_max: the support, in the units of the (scaled) rewards the critic learns from;
            returns outside it are clipped onto its ends.
        rescale_obs: see :class:`rl_as_inference.guides.policies.ObservationEncoder`.
        clip_actions: see :class:`rl_as_inference.critics.QNetwork`.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (256, 256),
        num_atoms: int = 51,
        v_min: float = -150.0,
        v_max: float = 150.0,
        rescale_obs: bool = False,
        clip_actions: bool = False,
    ):
        super().__init__()
        if isinstance(num_atoms, bool) or not isinstance(num_atoms, int) or num_atoms < 2:
            raise ValueError(f"num_atoms={num_atoms!r} is not allowed; use an integer >= 2")
        if not float(v_min) < float(v_max):
            raise ValueError(f"v_min={v_min!r} and v_max={v_max!r}: the support needs v_min < v_max")
        self.q1 = QNetwork(
            observation_space, action_space, hidden, rescale_obs, outputs=num_atoms, clip_actions=clip_actions
        )
        self.q2 = None
        self.register_buffer("support", torch.linspace(float(v_min), float(v_max), num_atoms))
        self.target = copy.deepcopy(nn.ModuleList([self.q1])).requires_grad_(False)

    def _mean(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.softmax(-1) * self.support.to(logits.dtype)).sum(-1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """(Q,): the online network's means, ``[B]`` (Box) or ``[B, n]`` (Discrete)."""
        return (self._mean(self.q1(obs, action)),)

    def online_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should train (the target only tracks them)."""
        return list(self.q1.parameters())

    def min(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """E[Z(s, a)] of the online network (one network: nothing to take a minimum of)."""
        return self._mean(self.q1(obs, action))

    def target_min(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """E[Z'(s, a)] of the target network."""
        return self._mean(self.target[0](obs, action))

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """Polyak averaging: target <- (1 - tau) target + tau online."""
        polyak_update(self.target[0], self.q1, tau)


def check_correction(correction: str) -> None:
    """Raise a one-line ValueError unless ``correction`` is ``"none"``: Retrace's per-step traces do
    not act on whole distributions."""
    check_n_step_correction(correction, 1.0)
    if correction != "none":
        raise ValueError(
            f"n_step_correction={correction!r} is not available with the distributional critic; use 'none'"
        )


def _affine_target(batch: dict, gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, D, s_m): the target return is A + D Z(s_m, a'), for a one-step or an n-step batch."""
    if "path" not in batch:
        reward = batch["reward"]
        return reward, gamma * (~batch["terminated"]).to(reward.dtype), batch["next_obs"]
    path = batch["path"]
    rewards, terminated, truncated = path["reward"], path["terminated"], path["truncated"]
    rows = torch.arange(rewards.shape[1], device=rewards.device)
    zeros = torch.zeros_like(rewards)
    one = torch.ones_like(rewards[0])
    # n_step_target is affine in its bootstrap: A at bootstrap 0, D the coefficient of bootstrap 1
    offset = bellman.n_step_target(
        rewards, terminated, zeros, torch.zeros_like(one), gamma, truncated=truncated
    )
    scale = bellman.n_step_target(zeros, terminated, zeros, one, gamma, truncated=truncated)
    return offset, scale, path["next_obs"][batch["last"], rows]


def distributional_target(
    critic: CategoricalQ, policy: nn.Module, batch: dict, *, gamma: float
) -> torch.Tensor:
    """The projected law of A + D Z'(s_m, a'), a' ~ ``policy``: ``[B, N]`` probabilities on the support.

    One sampled a' per state for Box actions (the target's law is then right in expectation over
    the batch, as the scalar critic's one-sample target is), the mixture over every action weighted
    by pi(a'|s_m) for Discrete ones. Z' is the target network. A one-step batch has A = r and
    D = gamma (0 after a termination); an n-step one (a ``path`` field) the discounted rewards and
    gamma^m of :func:`rl_as_inference.bellman.n_step_target`, uncorrected for the replayed actions.
    """
    support = critic.support
    with torch.no_grad():
        offset, scale, last_obs = _affine_target(batch, gamma)
        d = policy(last_obs)
        if critic.q1.discrete:
            probs = (d.probs.unsqueeze(-1) * critic.target[0](last_obs).softmax(-1)).sum(-2)
        else:
            probs = critic.target[0](last_obs, d.sample()).softmax(-1)
        positions = offset.to(support.dtype).unsqueeze(-1) + scale.to(support.dtype).unsqueeze(-1) * support
        return categorical_projection(positions, probs.to(support.dtype), support)


def distributional_q_loss(
    critic: CategoricalQ,
    policy: nn.Module,
    batch: dict,
    *,
    gamma: float,
    correction: str = "none",
) -> torch.Tensor:
    """Cross-entropy of the predicted Z(s_0, a_0) against :func:`distributional_target`.

    ``correction`` must be ``"none"``: Retrace's per-step traces do not act on whole distributions.
    """
    check_correction(correction)
    target = distributional_target(critic, policy, batch, gamma=gamma)
    logits = critic.q1(batch["obs"], batch["action"])
    if critic.q1.discrete:
        index = batch["action"].long().view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
        logits = logits.gather(-2, index).squeeze(-2)
    return -(target * logits.log_softmax(-1)).sum(-1).mean()
