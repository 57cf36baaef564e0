"""SAC: the H = 1, no-dynamics-gradient special case of the trajectory ELBO (DESIGN.md s.1).

With a one-step horizon and the rest of the trajectory summarized by a soft critic, the ELBO of a
``TrajectoryModel`` (prior pi, temperature alpha) at a state s is, in reward units,

    E_{a~q}[ Q(s, a) - alpha (log q(a|s) - log pi(a|s)) ],   Q(s, a) = r + gamma V(s'),

which is SAC's actor objective; Q is learned with the KL-regularized Bellman operator T^{pi,q}
(:mod:`rl_as_inference.bellman`). pi uniform over the action box gives maximum-entropy SAC (seed
eq. 10). Reads top to bottom: config, networks, collection, critic update, actor update, temperature.
Defaults follow the rl-baselines3-zoo SAC settings for Pendulum-v1 (lr 1e-3, 256x256 networks,
batch 256, tau 0.005, gamma 0.99, automatic temperature with target entropy -dim(A)).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from rl_as_inference import envs
from rl_as_inference.algos.collect import Collector, uniform_log_density
from rl_as_inference.algos.registry import Algorithm, logged_or_configured
from rl_as_inference.algos.settings import RunSettings, rank_share
from rl_as_inference.algos.stats import IntervalMeans, emit_row, finish, row_due
from rl_as_inference.critics import TwinQ, soft_q_loss
from rl_as_inference.guides.normalization import attach_obs_normalizer
from rl_as_inference.guides.policies import TanhGaussianMLP
from rl_as_inference.optim import adam
from rl_as_inference.resume import Checkpointer
from rl_as_inference.temperature import Temperature

__all__ = ["SACConfig", "TrainResult", "actor_loss", "make_temperature", "train", "uniform_log_prior"]


@dataclass
class SACConfig(RunSettings):
    """Hyperparameters of SAC (defaults: rl-baselines3-zoo, Pendulum-v1)."""

    learning_starts: int = 1_000  # random actions before the first update
    batch_size: int = 256  # transitions per learner update
    buffer_size: int = 100_000  # transitions the replay buffer keeps
    gamma: float = 0.99  # probability of continuing after each step (the discount)
    tau: float = 0.005  # Polyak rate of the target networks
    actor_lr: float = 1e-3  # Adam learning rate of the policy
    critic_lr: float = 1e-3  # Adam learning rate of the critics
    alpha_lr: float = 1e-3  # Adam learning rate of the temperature's dual
    hidden: tuple[int, ...] = (256, 256)  # hidden layer widths of every network
    alpha: float | None = None  # None: learned by its dual to reach target_entropy
    initial_alpha: float = 1.0  # the learned temperature's starting value
    alpha_final: float | None = None  # with alpha: anneal alpha -> alpha_final (a temperature schedule)
    alpha_schedule: str = "linear"  # "linear" or "exponential"
    alpha_anneal_steps: int | None = None  # env steps of the schedule (None: total_env_steps)
    target_entropy: float | None = None  # None: -dim(A)
    updates_per_step: int = 1  # gradient steps per collected batch
    # critic targets from n-step replayed paths: sum_k gamma^k (r_k - [k > 0] alpha (log q - log pi)(a_k))
    # + gamma^m V(s_m), the KL terms of the stored actions under the current q (1: one-step T^{pi,q})
    n_step: int = 1
    # "none": the replayed actions taken as q's (exact on-policy; toward the older behaviours' values
    # off-policy); "retrace": Retrace traces trace_lambda * min(1, q / mu), fixed point Q^q whatever
    # the behaviour mu was (stores log mu at collection; one more critic pass over the path)
    n_step_correction: str = "none"
    trace_lambda: float = 1.0  # lambda of the Retrace traces (n_step_correction = "retrace")


@dataclass
class TrainResult:
    """What ``train`` returns: the trained policy (obs -> distribution) and the metric rows."""

    policy: torch.nn.Module
    metrics: list[dict] = field(default_factory=list)
    env_steps: int = 0
    wall_time: float = 0.0


def make_temperature(config, device: torch.device) -> Temperature:
    """The :class:`~rl_as_inference.temperature.Temperature` that a config's alpha fields describe."""
    return Temperature(
        alpha=config.alpha,
        initial_alpha=config.initial_alpha,
        alpha_final=config.alpha_final,
        schedule=config.alpha_schedule,
        anneal_steps=config.alpha_anneal_steps or config.total_env_steps,
        lr=config.alpha_lr,
        device=device,
    )


def uniform_log_prior(action_space: gym.spaces.Box) -> float:
    """log pi(a) of the uniform prior on the action box (the source's eq. 10): -log vol."""
    return uniform_log_density(action_space)


def actor_loss(policy, critic: TwinQ, obs: torch.Tensor, alpha: float | torch.Tensor, log_pi: float):
    """alpha (log q(a|s) - log pi(a|s)) - min Q(s, a) at a ~ q (reparameterized), averaged: minus the
    one-step (H = 1) trajectory ELBO in reward units. Returns (loss, log q(a|s))."""
    d = policy(obs)
    action = d.rsample()
    log_q = d.log_prob(action)
    return (alpha * (log_q - log_pi) - critic.min(obs, action)).mean(), log_q


def train(
    config: SACConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train SAC on ``config.env``; ``callback(row)`` sees each metric row, ``checkpointer`` saves (and
    on resume restores) the whole training state."""
    config = rank_share(config)  # in a data-parallel run, this rank's share
    device = envs.base.resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = Collector.for_config(config, device, "sac", reward_scale=config.reward_scale)
    space = data.action_space
    policy = TanhGaussianMLP(
        data.observation_space,
        space,
        hidden=config.hidden,
        activation=torch.nn.ReLU,
        rescale_obs=config.rescale_obs,
    )
    critic = TwinQ(data.observation_space, space, hidden=config.hidden, rescale_obs=config.rescale_obs)
    policy.to(device)
    critic.to(device)
    attach_obs_normalizer(data.obs_normalizer, policy, critic)
    actor_opt = adam(policy.parameters(), lr=config.actor_lr)
    critic_opt = adam(critic.online_parameters(), lr=config.critic_lr)
    temperature = make_temperature(config, device)
    target_entropy = -float(np.prod(space.shape)) if config.target_entropy is None else config.target_entropy
    log_pi = uniform_log_prior(space)

    result = TrainResult(policy=policy)
    loop = {"next_log": config.log_every, "wall_time": 0.0}
    # the losses are means over every learner step of a metric row: the last step's alone would
    # alias with anything periodic in the loop (and is one batch's noise)
    interval = IntervalMeans()
    ckpt = checkpointer or Checkpointer(None)
    ckpt.attach(
        "sac",
        {
            "data": data,
            "policy": policy,
            "critic": critic,
            "actor_opt": actor_opt,
            "critic_opt": critic_opt,
            "temperature": temperature,
            "stats": interval,
        },
        loop,
    )
    start = time.perf_counter() - loop["wall_time"]
    while data.env_steps < config.total_env_steps:
        ckpt.maybe_save(data.env_steps, time.perf_counter() - start)
        data.step(None if data.env_steps < config.learning_starts else policy)
        if data.env_steps < config.learning_starts:
            continue
        temperature.advance(data.env_steps)
        for _ in range(config.updates_per_step):
            alpha = temperature.value
            batch = data.sample(config.batch_size, n_step=config.n_step)
            # ---- critic: regress Q onto T^{pi,q} Q' at the sampled transition (clipped double-Q target)
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
            # ---- actor: maximize the H = 1 ELBO E_q[Q - alpha (log q - log pi)]
            loss, log_q = actor_loss(policy, critic, batch["obs"], alpha, log_pi)
            actor_opt.zero_grad()
            loss.backward()
            actor_opt.step()
            # ---- temperature: dual of the entropy constraint E[-log q] >= target_entropy
            temperature.dual_step(log_q + target_entropy)
            critic.update_target(config.tau)
            interval.add({"critic_loss": critic_loss, "actor_loss": loss})
        if row_due(loop, data.env_steps, config):
            means = interval.pop()
            stats = {
                "critic_loss": means["critic_loss"],
                "actor_loss": means["actor_loss"],
                "elbo": -means["actor_loss"],  # the H = 1 trajectory ELBO in reward units (batch mean)
                "alpha": temperature.item(),  # the temperature at the row (the one the policy ends with)
            }
            emit_row(result, callback, data, start, stats)
    return finish(result, data, ckpt, start)


ALGORITHM = Algorithm(
    name="sac",
    config=SACConfig,
    train=train,
    temperature=logged_or_configured("alpha"),
    temperature_note="SAC's alpha: the config's fixed value, else the last logged (learned or scheduled) one",
    elbo_note=(
        "SAC's logged 'elbo' = -actor loss: the one-step objective E[min Q(s,a) - alpha (log q(a|s) - "
        "log pi(a))] over replayed states, with the critic of the moment (not eq. 2's trajectory ELBO)"
    ),
    elbo_units="reward units",
)
