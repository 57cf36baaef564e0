"""Trajectory SVI over H-step segments with a learned soft terminal value (DESIGN.md s.1, long horizons).

The actor step is stochastic variational inference on a truncated trajectory model: from start
states drawn from the replay buffer, the guide q rolls out H steps through the differentiable
dynamics, and the rest of the episode is summarized by the terminal factor gamma^H V(s_H) / alpha,

    ELBO = E_q[ sum_{t<H} gamma^t (r_t / alpha - KL(q || pi)(s_t)) + gamma^H V(s_H) / alpha ],

with V(s) = E_{a~q}[ min Q(s, a) - alpha (log q(a|s) - log pi(a|s)) ] from twin soft critics learned
with T^{pi,q} (:mod:`rl_as_inference.bellman`). Gradients are pathwise through the H steps, so
the actor sees how an action changes the next H states, not only the critic's local slope. H = 1
without the dynamics gradient is SAC; H = episode length without a critic is a pure pathwise
policy gradient (chaotic on Pendulum over 200 steps; a short H is the middle ground).

Objective ``maxent`` is the source's eq. (10) (pi uniform over the action box); ``kl`` is the source's eq. (2)
with pi a frozen copy of the policy refreshed every ``prior_update_every`` actor steps (a proximal,
trust-region-like iteration). The same pi enters the critic's T^{pi,q} and V
(:func:`critic_log_prior`): against pi_k, Q is the KL-regularized value of eq. (2), not SAC's soft Q. The temperature is fixed or learned by the dual of an entropy target.
Reads top to bottom: config, networks, collection, critic, actor (SVI), temperature.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pyro
import torch

from rl_as_inference import envs, models
from rl_as_inference.algos.collect import Collector
from rl_as_inference.algos.registry import Algorithm, logged_or_configured
from rl_as_inference.algos.sac import TrainResult, make_temperature, uniform_log_prior
from rl_as_inference.algos.settings import RunSettings, check_settings, rank_share
from rl_as_inference.algos.stats import IntervalMeans, emit_row, finish, row_due
from rl_as_inference.algos.svi_actor import SegmentActor, anneal_actor_critic
from rl_as_inference.algos.svi_rollout import train_on_rollouts
from rl_as_inference.critics import LogPrior, TwinQ, constant_log_prior, policy_log_prior, soft_q_loss
from rl_as_inference.guides.normalization import attach_obs_normalizer
from rl_as_inference.optim import adam
from rl_as_inference.resume import Checkpointer

__all__ = ["SVIConfig", "critic_log_prior", "terminal_soft_value", "train"]


@dataclass
class SVIConfig(RunSettings):
    """Hyperparameters of segment SVI (critic settings as SAC's rl-baselines3-zoo Pendulum-v1 ones)."""

    algo_name: ClassVar[str] = "svi"  # the name errors use (em shares these settings)
    learning_starts: int = 1_000  # env steps of random actions before the first update
    horizon: int = 5  # H: steps differentiated through the dynamics per actor update
    batch_size: int = 256  # transitions per critic update
    actor_batch_size: int = 256  # start states (episodes) per actor update; each rolls out H steps
    buffer_size: int = 100_000  # transitions the replay buffer keeps
    gamma: float = 0.99  # probability of continuing after each step (the discount)
    tau: float = 0.005  # Polyak rate of the target networks
    actor_lr: float = 1e-3  # Adam learning rate of the policy
    critic_lr: float = 1e-3  # Adam learning rate of the critics
    alpha_lr: float = 1e-3  # Adam learning rate of the temperature's dual
    hidden: tuple[int, ...] = (256, 256)  # hidden layer widths of every network
    objective: str = "maxent"  # "maxent" (eq. 10) or "kl" (eq. 2 against a lagged copy of q)
    prior_update_every: int = 100  # actor steps between refreshes of pi (objective "kl")
    kl_bound: float = 0.05  # epsilon of the KL dual (objective "kl" with a learned temperature)
    alpha: float | None = None  # None: learned by its dual (target_entropy for "maxent", kl_bound for "kl")
    initial_alpha: float = 1.0  # the learned temperature's starting value
    alpha_final: float | None = None  # with alpha: anneal alpha -> alpha_final (a temperature schedule)
    alpha_schedule: str = "linear"  # "linear" or "exponential"
    alpha_anneal_steps: int | None = None  # env steps of the schedule (None: total_env_steps)
    target_entropy: float | None = None  # None: -dim(A)
    # replay: critic targets from n-step paths, the KL terms of the stored actions under the current
    # q against the objective's prior (1: one-step T^{pi,q}); n_step_correction "none" or "retrace"
    # (Retrace traces trace_lambda * min(1, q / mu): fixed point Q^q for any behaviour), as in SAC
    n_step: int = 1
    n_step_correction: str = "none"
    trace_lambda: float = 1.0
    # "replay": segments start at replayed states, twin soft Q critics (this module); "rollout":
    # segments continue the envs' own episodes, soft V critic by TD(lambda) (svi_rollout)
    start_states: str = "replay"
    anneal_lr: bool = False  # decay the actor and critic learning rates linearly to 0 over the budget
    td_lambda: float = 0.95  # rollout: lambda of the critic's TD(lambda) targets
    critic_updates: int = 4  # rollout: critic steps per segment
    reward_scale: float = 1.0  # rollout: the critic learns reward_scale * V (targets of order one)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reward_scale != 1.0 and self.start_states == "replay":
            raise ValueError(
                f"reward_scale={self.reward_scale!r} is not allowed with start_states='replay', whose "
                "critic learns in reward units; use 1, or start_states='rollout'"
            )


def critic_log_prior(actor: SegmentActor, action_space: gym.spaces.Box) -> LogPrior:
    """The prior pi of the critic's T^{pi,q} and of the terminal value: the trajectory model's own.

    Objective ``maxent``: the uniform density on the action box (the source's eq. 10). Objective ``kl``:
    log pi_k(a|s) of the frozen reference policy (the source's eq. 2), so that Q and V are the KL-regularized
    values against pi_k and the temperature, the multiplier of the bound E_s[KL(q || pi_k)] <=
    kl_bound, scales that KL and no maximum-entropy bonus.
    """
    if actor.reference is None:
        return constant_log_prior(uniform_log_prior(action_space))
    return policy_log_prior(actor.reference)


def terminal_soft_value(
    env: envs.FunctionalEnv,
    policy: torch.nn.Module,
    critic: TwinQ,
    log_pi: LogPrior,
    alpha: float | torch.Tensor,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """V(s) = E_{a~q}[min Q(s, a) - alpha (log q(a|s) - log pi(a|s))] at one reparameterized a ~ q:
    the value gamma^H V(s_H) / alpha of the segment's terminal factor, differentiable in q (pathwise
    through a, and through log q's parameters). With pi = pi_k and q = pi_k the KL part has zero
    expected gradient (KL(q || pi_k) is at its minimum); with the uniform prior it is an entropy bonus."""

    def soft_value(s: torch.Tensor) -> torch.Tensor:
        o = env.observe(s, dtype=None).float()
        d = policy(o)
        a = d.rsample()
        return critic.min(o, a) - alpha * (d.log_prob(a) - log_pi(o, a))

    return soft_value


def train(
    config: SVIConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train the segment-SVI policy on the functional port of ``config.env`` (callback and
    checkpointer as in :func:`rl_as_inference.algos.sac.train`)."""
    # A param-store scope of its own: the guide registers its policy with Pyro, and a second run in
    # the same process (or the caller's own guides) must not meet this run's parameters.
    check_settings(config)  # a config changed after construction is checked again
    with pyro.get_param_store().scope():
        if config.start_states == "rollout":
            return train_on_rollouts(config, callback=callback, checkpointer=checkpointer)
        return _train(config, callback=callback, checkpointer=checkpointer)


def _train(
    config: SVIConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """The body of :func:`train`, run inside its param-store scope."""
    config = rank_share(config)  # in a data-parallel run, this rank's share
    device = envs.base.resolve_device(config.device)
    torch.manual_seed(config.seed)
    # store_states: the actor re-simulates from replayed states
    data = Collector.for_config(config, device, "svi", store_states=True)
    env, space, obs_space = data.env, data.action_space, data.observation_space
    actor = SegmentActor.build(config, env, device)  # q, the prior (uniform or pi_k), guide, loss
    policy, reference = actor.policy, actor.reference
    critic = TwinQ(obs_space, space, hidden=config.hidden, rescale_obs=config.rescale_obs).to(device)
    attach_obs_normalizer(data.obs_normalizer, *actor.networks(), critic)
    critic_opt = adam(critic.online_parameters(), lr=config.critic_lr)
    temperature = make_temperature(config, device)
    target_entropy = -float(np.prod(space.shape)) if config.target_entropy is None else config.target_entropy
    log_pi = critic_log_prior(actor, space)  # uniform (maxent) or the frozen pi_k (kl)

    result = TrainResult(policy=policy)
    loop = {"actor_steps": 0, "next_log": config.log_every, "wall_time": 0.0}
    interval = IntervalMeans()  # statistics averaged over every actor step of a metric row
    ckpt = checkpointer or Checkpointer(None)
    components = {"data": data, "critic": critic, "critic_opt": critic_opt, "temperature": temperature}
    ckpt.attach(
        "svi", components | actor.components() | {"stats": interval}, loop
    )  # em runs too: em is svi with the KL objective
    start = time.perf_counter() - loop["wall_time"]
    while data.env_steps < config.total_env_steps:
        ckpt.maybe_save(data.env_steps, time.perf_counter() - start)
        data.step(None if data.env_steps < config.learning_starts else policy)
        if data.env_steps < config.learning_starts:
            continue
        anneal_actor_critic(config, actor, critic_opt, data.env_steps)
        temperature.advance(data.env_steps)
        alpha = temperature.value  # a device tensor when learned: never read back in the loop
        batch = data.sample(config.batch_size, n_step=config.n_step)
        # ---- critic: T^{pi,q} on sampled transitions (or paths), as in SAC, against the model's prior
        critic_loss = soft_q_loss(
            critic,
            policy,
            batch,
            alpha=alpha,
            log_pi=log_pi,
            gamma=config.gamma,
            correction=config.n_step_correction,
            trace_lambda=config.trace_lambda,
        )
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()

        # ---- actor: SVI on the H-step trajectory model started at replayed states
        model = models.TrajectoryModel(
            env,
            actor.prior,
            horizon=config.horizon,
            alpha=alpha,
            gamma=config.gamma,
            terminal_value=terminal_soft_value(env, policy, critic, log_pi, alpha),
        )
        starts = batch["state"][: config.actor_batch_size]
        elbo_loss = actor.loss.differentiable_loss(model, actor.guide, len(starts), starts)
        actor_loss = alpha * elbo_loss  # reward units: the step size does not drift with alpha
        actor.step(actor_loss)
        loop["actor_steps"] += 1
        actor.refresh_prior(loop["actor_steps"], config.prior_update_every)
        # ---- temperature: a dual variable. maxent: the entropy constraint E[-log q] >= target_entropy;
        # kl: the trust region E_s[KL(q || pi_k)] <= kl_bound (alpha grows while q strays too far).
        with torch.no_grad():
            d = policy(batch["obs"])
            a = d.sample()
            log_q = d.log_prob(a)
            # Only the "kl" objective has a pi_k to stray from; maxent would pay for a forward pass
            # against a copy of the initial policy that nothing uses.
            kl = (log_q - reference(batch["obs"]).log_prob(a)).mean() if reference is not None else None
        temperature.dual_step(log_q + target_entropy if kl is None else kl - config.kl_bound)
        critic.update_target(config.tau)
        step_stats = {"critic_loss": critic_loss, "actor_loss": actor_loss, "elbo": -elbo_loss}
        interval.add(step_stats | ({"kl": kl} if kl is not None else {}))
        if row_due(loop, data.env_steps, config):
            # means over the interval's actor steps; elbo is per start state, in nats (H-step
            # segment + terminal value); kl is the sample estimate of KL(q || pi_k) at replayed
            # states ("kl" objective; NaN for maxent)
            stats = {"alpha": temperature.item(), "kl": float("nan")} | interval.pop()
            emit_row(result, callback, data, start, stats)
    return finish(result, data, ckpt, start)


ALGORITHM = Algorithm(
    needs_dynamics=True,
    name="svi",
    config=SVIConfig,
    train=train,
    temperature=logged_or_configured("alpha"),
    temperature_note="the trajectory model's alpha: the config's fixed value, else the last logged one",
    elbo_note=(
        "segment SVI's logged 'elbo' = -ELBO loss: the training objective per start state "
        "(H-step segment with a learned terminal soft value), not eq. 2's full-episode ELBO"
    ),
    elbo_units="nats",
)
