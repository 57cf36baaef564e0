"""Segment SVI on the learner's own rollouts: ``svi`` with ``start_states = "rollout"``.

The same trajectory model and ELBO as :mod:`rl_as_inference.algos.svi`,

    ELBO = E_q[ sum_{t<H} gamma^t (r_t / alpha - KL(q || pi)) + gamma^H V(s_H) / alpha ],

(the source's eq. 2; eq. 10 with pi uniform), but the H-step segments are not re-simulated from replayed
states: they continue the ``num_envs`` episodes the learner is playing (:class:`SegmentEnvs`). One
rollout of the guide is at once the interaction with the envs, the Monte-Carlo sample of the ELBO
(its gradient pathwise through the differentiable dynamics) and the critic's data. This is the
short-horizon actor-critic of differentiable simulators (SHAC, Xu et al. 2022) written as SVI:

- actor: one step on -ELBO (in reward units, times alpha) per segment;
- critic: a soft state value V, regressed ``critic_updates`` times per segment on TD(lambda)
  targets of the segment's soft rewards r_t - alpha (log q - log pi) (:func:`bellman.lambda_returns`),
  bootstrapped from a target copy that tracks it at rate ``tau``. It learns ``reward_scale`` times
  the value (targets of order one are easier to fit); the terminal factor divides that back out.
- temperature: fixed, scheduled, or the dual of the entropy target (maxent) / KL bound (kl), fed
  with the segment's own log q - log pi, so it costs no extra forward pass.

With no replay buffer and no twin Q, each env step is used once; what it buys is that every
update is cheap, on-policy and sees the dynamics' gradient over H steps, with many envs in
parallel. The replay-buffer settings of :class:`~rl_as_inference.algos.svi.SVIConfig`
(``learning_starts``, ``batch_size``, ``actor_batch_size``, ``buffer_size``, ``n_step``) do not apply.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from rl_as_inference import bellman, envs, models
from rl_as_inference.algos.sac import TrainResult, make_temperature, uniform_log_prior
from rl_as_inference.algos.segments import SegmentEnvs
from rl_as_inference.algos.settings import check_settings, rank_share
from rl_as_inference.algos.stats import IntervalMeans, emit_row, finish, row_due
from rl_as_inference.algos.svi_actor import SegmentActor, anneal_actor_critic
from rl_as_inference.critics import StateValue, polyak_update
from rl_as_inference.elbo import ELBOTerms
from rl_as_inference.guides.normalization import attach_obs_normalizer
from rl_as_inference.optim import adam
from rl_as_inference.resume import Checkpointer

if TYPE_CHECKING:
    from rl_as_inference.algos.svi import SVIConfig

__all__ = ["segment_log_ratios", "train_on_rollouts"]


def segment_log_ratios(terms: ELBOTerms, alpha: float | torch.Tensor, gamma: float) -> torch.Tensor:
    """``[H, N]`` per-step log pi(a_t|s_t) - log q(a_t|s_t) (or -KL(q || pi) where analytic) of an
    evaluated segment, undiscounted, read off the ELBO's own costs without another forward pass:
    costs[t] = gamma^t (r_t / alpha + that log-ratio) (zero after termination)."""
    rewards = terms.trajectory.rewards
    discounts = gamma ** torch.arange(rewards.shape[0], device=rewards.device, dtype=rewards.dtype)
    return terms.costs[: rewards.shape[0]] / discounts[:, None] - rewards / alpha


def train_on_rollouts(
    config: SVIConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train segment SVI on the learner's own rollouts (call through :func:`svi.train`, which opens
    the param-store scope and dispatches on ``config.start_states``)."""
    check_settings(config)  # a config changed after construction is checked again
    config = rank_share(config)  # in a data-parallel run, this rank's share
    device = envs.base.resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = SegmentEnvs(
        config.env,
        num_envs=config.num_envs,
        device=device,
        seed=config.seed,
        exploring_starts=config.exploring_starts,
        normalize_obs=config.normalize_obs,
        obs_clip=config.obs_clip,
        env_kwargs=config.env_kwargs,
    )
    env, space, obs_space = data.env, data.action_space, data.observation_space
    actor = SegmentActor.build(config, env, device)  # q, the prior (uniform or pi_k), guide, loss
    value = StateValue(obs_space, config.hidden, torch.nn.ReLU, rescale_obs=config.rescale_obs).to(device)
    target = copy.deepcopy(value).requires_grad_(False)
    attach_obs_normalizer(data.obs_normalizer, *actor.networks(), value, target)
    critic_opt = adam(value.parameters(), lr=config.critic_lr)
    temperature = make_temperature(config, device)
    target_entropy = -float(np.prod(space.shape)) if config.target_entropy is None else config.target_entropy
    log_pi = uniform_log_prior(space)
    horizon, gamma, scale = config.horizon, config.gamma, config.reward_scale

    def soft_value(state: torch.Tensor) -> torch.Tensor:
        """The terminal factor's V(s_H) in reward units (the critic learns it times reward_scale)."""
        return value(env.observe(state, dtype=None).float()) / scale

    result = TrainResult(policy=actor.policy)
    loop = {"actor_steps": 0, "next_log": config.log_every, "wall_time": 0.0}
    interval = IntervalMeans()
    ckpt = checkpointer or Checkpointer(None)
    components = {"data": data, "value": value, "target": target, "critic_opt": critic_opt}
    components |= {"temperature": temperature} | actor.components() | {"stats": interval}
    ckpt.attach("svi-rollout", components, loop)
    start = time.perf_counter() - loop["wall_time"]
    while data.env_steps < config.total_env_steps:
        ckpt.maybe_save(data.env_steps, time.perf_counter() - start)
        anneal_actor_critic(config, actor, critic_opt, data.env_steps)
        temperature.advance(data.env_steps)
        alpha = temperature.value
        # ---- actor: one SVI step on the segment that continues every env's episode
        model = models.TrajectoryModel(
            env, actor.prior, horizon=horizon, alpha=alpha, gamma=gamma, terminal_value=soft_value
        )
        terms = actor.loss.terms(model, actor.guide, data.num_envs, data.states)
        actor_loss = alpha * terms.surrogate  # reward units: the step size does not drift with alpha
        actor.step(actor_loss)
        loop["actor_steps"] += 1
        actor.refresh_prior(loop["actor_steps"], config.prior_update_every)
        traj = terms.trajectory

        # ---- critic: TD(lambda) on the segment's soft rewards, from the target copy
        with torch.no_grad():
            alive = traj.alive.to(torch.float32)
            log_ratio = segment_log_ratios(terms, alpha, gamma)
            soft_rewards = scale * (traj.rewards + alpha * log_ratio)
            # detached: no_grad does not cut the actor's graph from a tensor built before it, and an
            # env whose observation is its state (an identity observe) hands that graph straight back
            obs = env.observe(traj.states.detach(), dtype=None).float()
            returns = bellman.lambda_returns(
                soft_rewards, traj.terminated, target(obs), gamma, config.td_lambda
            )
            weight = alive / alive.sum().clamp(min=1.0)
        for _ in range(config.critic_updates):
            critic_loss = ((value(obs[:horizon]) - returns).square() * weight).sum()
            critic_opt.zero_grad()
            critic_loss.backward()
            critic_opt.step()
        polyak_update(target, value, config.tau)

        # ---- temperature: the same duals as replay svi, from the segment's log-ratios
        mean_log_ratio = (log_ratio * weight).sum()
        if actor.reference is None:  # maxent: log q = log pi - log_ratio; constraint E[-log q] >= target
            temperature.dual_step(log_pi - mean_log_ratio + target_entropy)
        else:  # kl: E[KL(q || pi_k)] <= kl_bound
            temperature.dual_step(-mean_log_ratio - config.kl_bound)
        data.advance(traj)
        step_stats = {"critic_loss": critic_loss, "actor_loss": actor_loss, "elbo": terms.elbo}
        interval.add(step_stats | ({"kl": -mean_log_ratio} if actor.reference is not None else {}))
        if row_due(loop, data.env_steps, config):
            # elbo: per episode, in nats (H-step segment + terminal value); kl: E[KL(q || pi_k)]
            # over the segments' steps ("kl" objective; NaN for maxent)
            stats = {"alpha": temperature.item(), "kl": float("nan")} | interval.pop()
            emit_row(result, callback, data, start, stats)
    return finish(result, data, ckpt, start)
