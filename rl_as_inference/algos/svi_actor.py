"""The actor side of segment SVI, shared by its two modes (replayed starts and own rollouts).

Both modes optimize the same H-step trajectory model with the same guide and loss; they differ in
where segments start and in the critic. This module builds what they share, so the two cannot
drift apart: the tanh-Gaussian policy q, the model's prior (uniform for the source's eq. 10, a lagged copy
pi_k of q for eq. 2), the guide, the ELBO and the actor's optimizer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import gymnasium as gym
import torch

import rl_as_inference as rlai
from rl_as_inference import guides, models
from rl_as_inference.algos.schedules import decay_learning_rates
from rl_as_inference.envs import FunctionalEnv
from rl_as_inference.optim import adam

__all__ = ["SegmentActor", "anneal_actor_critic"]


@dataclass
class SegmentActor:
    """q, the trajectory model's prior, the guide, the loss and the actor optimizer of segment SVI.

    Attributes:
        policy: q(a|s), a :class:`~guides.TanhGaussianMLP`.
        reference: the frozen pi_k of the ``"kl"`` objective (``None`` for ``"maxent"``).
        prior: the model's action prior: uniform on the action box, or pi_k.
        guide: the :class:`~guides.PolicyGuide` rolling q out for ``config.horizon`` steps.
        loss: the :class:`~rl_as_inference.TrajectoryELBO` (per-episode mean).
        optimizer: Adam on q's parameters at ``config.actor_lr``.
    """

    policy: guides.TanhGaussianMLP
    reference: guides.TanhGaussianMLP | None
    prior: object
    guide: guides.PolicyGuide
    loss: rlai.TrajectoryELBO
    optimizer: torch.optim.Optimizer

    @classmethod
    def build(cls, config, env: FunctionalEnv, device: torch.device) -> SegmentActor:
        """The actor a segment-SVI config describes on ``env`` (errors for envs svi cannot use)."""
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(
                f"{config.algo_name} needs a continuous (Box) action space; {config.env} has {space}: "
                "use --algo vmpo, mpo or softq"
            )
        if not env.differentiable:
            raise ValueError(
                f"{config.algo_name} needs pathwise-unbiased dynamics (env.differentiable); {config.env} is "
                "not (its rewards or terminations jump): use --algo vmpo, sac or mpo"
            )
        policy = guides.TanhGaussianMLP(
            env.observation_space,
            space,
            hidden=config.hidden,
            activation=torch.nn.ReLU,
            rescale_obs=config.rescale_obs,
        ).to(device)
        if config.objective == "maxent":
            reference = None
            prior = models.UniformPrior(space)
        else:
            reference = copy.deepcopy(policy).requires_grad_(False)
            prior = models.PolicyPrior(lambda state: reference(env.observe(state)))
        guide = guides.PolicyGuide(env, policy, horizon=config.horizon, name="svi_policy", gamma=config.gamma)
        optimizer = adam(policy.parameters(), lr=config.actor_lr)
        return cls(policy, reference, prior, guide, rlai.TrajectoryELBO(reduction="mean"), optimizer)

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss``."""
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def refresh_prior(self, actor_steps: int, every: int) -> None:
        """The M-step of eq. (8), pi_{k+1} := q_k, every ``every`` actor steps (``"kl"`` only)."""
        if self.reference is not None and actor_steps % every == 0:
            self.reference.load_state_dict(self.policy.state_dict())

    def networks(self) -> list[torch.nn.Module]:
        """q, and the frozen pi_k where the objective has one: what an observation normalizer serves."""
        return [self.policy] + ([self.reference] if self.reference is not None else [])

    def components(self) -> dict:
        """The actor's parts a checkpoint must hold."""
        parts = {"policy": self.policy, "actor_opt": self.optimizer, "loss": self.loss}
        return parts | ({"reference": self.reference} if self.reference is not None else {})


def anneal_actor_critic(
    config, actor: SegmentActor, critic_opt: torch.optim.Optimizer, env_steps: int
) -> None:
    """With ``config.anneal_lr``, decay the actor's and the critic's learning rates linearly to 0."""
    if config.anneal_lr:
        groups = [(g, config.actor_lr) for g in actor.optimizer.param_groups]
        groups += [(g, config.critic_lr) for g in critic_opt.param_groups]
        decay_learning_rates(groups, env_steps, config.total_env_steps)
