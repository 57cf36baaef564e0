"""Soft Q-learning: the KL-regularized critic alone, its policy the closed-form E-step (Discrete actions).

With a finite action set the E-step of the source's eq. (7) needs no network: the optimal variational
policy for a critic Q at temperature alpha is q(a|s) = pi(a|s) exp(Q(s, a) / alpha) / Z(s), and the
soft value it attains is V(s) = E_q[Q - alpha (log q - log pi)] = alpha log sum_a pi(a) exp(Q / alpha).
So one network Q is trained, by regression onto the sampled soft Bellman target

    y = r + gamma (1 - terminated) V'(s'),   V'(s') = alpha log sum_a pi(a) exp(Q'(s', a) / alpha),

with Q' a Polyak-averaged copy, and acting samples from q (:class:`~rl_as_inference.guides.
SoftQPolicy`, pi uniform: the maximum-entropy eq. 10). It is the fixed point of T^{pi,q} with q
greedy-in-KL (:func:`rl_as_inference.bellman.greedy_in_kl`), i.e. soft value iteration on
samples; as alpha -> 0 it becomes Q-learning. alpha can be annealed (:class:`~rl_as_inference.
temperature.Temperature`): large early for exploration, small late for a near-greedy policy.

Against MPO's categorical variant on the same data, it drops the policy network, its target copy
and the second critic with its target: a learner step runs two networks (Q forward and backward,
Q' forward) instead of six, which is what a compute-bound learner (MountainCar-v0's) pays for.

``n_step`` > 1 regresses onto the n-step target of T^{pi,q} along a replayed path
(:func:`rl_as_inference.critics.n_step_discrete_soft_target`: the target network run once per path state),

    y = sum_{k<m} gamma^k (r_k - [k > 0] alpha (log q'(a_k|s_k) - log pi(a_k))) + gamma^m V'(s_m),

where alpha (log q' - log pi)(a_k) = Q'(s_k, a_k) - V'(s_k) for the greedy-in-KL q' of the target
network: each later step adds r_k + gamma (...) - Q'(s_k, a_k) + V'(s_k), a correction that vanishes
in expectation when a_k ~ q'. Replayed actions come from older q's, so it is exact on-policy and an
approximation off-policy (``n_step_correction = "none"``, the default), or corrected by Retrace's
truncated traces c_k = trace_lambda min(1, q'(a_k|s_k) / mu(a_k|s_k)) (``"retrace"``), whose fixed
point is the soft Q of q' whatever the behaviour mu was.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rl_as_inference import bellman, envs
from rl_as_inference.algos.collect import Collector
from rl_as_inference.algos.registry import Algorithm, logged_or_configured
from rl_as_inference.algos.sac import TrainResult
from rl_as_inference.algos.schedules import decay_learning_rates
from rl_as_inference.algos.settings import RunSettings, rank_share
from rl_as_inference.algos.stats import IntervalMeans, emit_row, finish, row_due
from rl_as_inference.critics import constant_log_prior, n_step_discrete_soft_target, polyak_update
from rl_as_inference.guides.normalization import attach_obs_normalizer
from rl_as_inference.guides.policies import SoftQPolicy
from rl_as_inference.optim import adam
from rl_as_inference.resume import Checkpointer
from rl_as_inference.temperature import Temperature

__all__ = ["SoftQConfig", "soft_q_loss", "train"]


@dataclass
class SoftQConfig(RunSettings):
    """Hyperparameters of soft Q-learning."""

    env: str = "MountainCar-v0"
    learning_starts: int = 1_000  # env steps of random actions before the first update
    batch_size: int = 256  # transitions per learner update
    buffer_size: int = 100_000  # transitions the replay buffer keeps
    gamma: float = 0.99  # probability of continuing after each step (the discount)
    tau: float = 0.005  # Polyak rate of the target network
    n_step: int = 1  # critic targets from n-step paths (1: one-step), with the KL terms of T^{pi,q}
    # "none": replayed actions taken as q's (exact on-policy); "retrace": traces trace_lambda *
    # min(1, q / mu) with mu stored at collection (fixed point Q^q for any behaviour)
    n_step_correction: str = "none"
    trace_lambda: float = 1.0  # lambda of the Retrace traces
    updates_every: int = 1  # collection steps (of num_envs transitions) per learner turn
    updates_per_step: int = 1  # learner steps per turn, each on its own batch (as SAC's)
    lr: float = 1e-3  # Adam learning rate of the critic
    anneal_lr: bool = False  # decay the learning rate linearly to 0 over the budget
    alpha: float = 1.0  # temperature of q (reward units), the start of a schedule with alpha_final
    alpha_final: float | None = None
    alpha_schedule: str = "exponential"
    alpha_anneal_steps: int | None = None  # env steps of the schedule (None: total_env_steps)
    double_q: bool = False  # the next state's q from the online network, its values from the target
    loss: str = "huber"  # "huber" (smooth L1 at delta 1, as DQN) or "mse"
    hidden: tuple[int, ...] = (256, 256)  # hidden layer widths of every network


def soft_q_loss(
    q_net: SoftQPolicy,
    target: SoftQPolicy,
    batch: dict,
    *,
    gamma: float,
    loss: str = "huber",
    double_q: bool = False,
    correction: str = "none",
    trace_lambda: float = 1.0,
) -> torch.Tensor:
    """Regression of Q(s, a) onto y = r + gamma (1 - terminated) V'(s') at replayed transitions.

    V'(s') is the target network's soft value alpha log sum_a pi(a) exp(Q'(s', a) / alpha); with
    ``double_q`` it is E_{a~q}[Q'(s', a)] - alpha KL(q || pi) with q from the online network (the
    soft analogue of double DQN's decoupling of selection from evaluation). An n-step batch (a
    ``path`` field) regresses onto :func:`~rl_as_inference.critics.n_step_discrete_soft_target` with the
    same V' and the same q (the target's q' = softmax(Q' / alpha), the online one with
    ``double_q``): ``correction`` ``"none"`` or ``"retrace"`` with ``trace_lambda``.
    """
    log_pi = -math.log(q_net.net[-1].out_features)  # pi uniform over the actions
    chooser = q_net if double_q else target  # whose q the values and the KL terms are of

    def soft_value(obs: torch.Tensor) -> torch.Tensor:
        q_next = target.q_values(obs)
        if double_q:
            probs = q_net(obs).probs
            log_prior = torch.as_tensor(log_pi)  # 0-d on the host: no copy per step
            return bellman.soft_value_of_distribution(q_next, probs, log_prior, q_net.temperature)
        return target.soft_value(q_next)

    def tables(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Q'(s, .) and log q(.|s), q = softmax(Q / alpha) of the chooser: one target pass
        q_next = target.q_values(obs)
        q_choice = q_net.q_values(obs) if double_q else q_next
        return q_next, torch.log_softmax(q_choice / chooser.temperature.to(q_choice.dtype), -1)

    with torch.no_grad():
        if "path" in batch:
            y = n_step_discrete_soft_target(
                batch,
                gamma=gamma,
                alpha=target.temperature,
                tables=tables,
                log_pi=constant_log_prior(log_pi),
                correction=correction,
                trace_lambda=trace_lambda,
            )
        else:
            y = bellman.bellman_target(
                batch["reward"], batch["terminated"], soft_value(batch["next_obs"]), gamma
            )
    q = q_net.q_values(batch["obs"]).gather(-1, batch["action"].long().unsqueeze(-1)).squeeze(-1)
    if loss == "huber":
        return torch.nn.functional.smooth_l1_loss(q, y)
    return (q - y).square().mean()


def train(
    config: SoftQConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train soft Q-learning on ``config.env`` (callback and checkpointer as in :func:`rl_as_inference.algos.sac.train`)."""
    config = rank_share(config)  # in a data-parallel run, this rank's share
    device = envs.base.resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = Collector.for_config(config, device, "softq", discrete=True, reward_scale=config.reward_scale)
    if not data.discrete:
        data.close()
        raise ValueError(f"softq needs a Discrete action space; {config.env} has {data.action_space}")
    q_net = SoftQPolicy(
        data.observation_space,
        data.action_space,
        hidden=config.hidden,
        activation=torch.nn.ReLU,
        rescale_obs=config.rescale_obs,
        temperature=config.alpha,
    ).to(device)
    target = copy.deepcopy(q_net).requires_grad_(False)
    attach_obs_normalizer(data.obs_normalizer, q_net, target)
    optimizer = adam(q_net.parameters(), lr=config.lr)
    temperature = Temperature(
        alpha=config.alpha,
        alpha_final=config.alpha_final,
        schedule=config.alpha_schedule,
        anneal_steps=config.alpha_anneal_steps or config.total_env_steps,
        device=device,
    )

    result = TrainResult(policy=q_net)
    loop = {"learner_steps": 0, "collections": 0, "next_log": config.log_every, "wall_time": 0.0}
    interval = IntervalMeans()
    ckpt = checkpointer or Checkpointer(None)
    ckpt.attach(
        "softq",
        {
            "data": data,
            "policy": q_net,
            "target": target,
            "optimizer": optimizer,
            "temperature": temperature,
            "stats": interval,
        },
        loop,
    )
    start = time.perf_counter() - loop["wall_time"]
    while data.env_steps < config.total_env_steps:
        ckpt.maybe_save(data.env_steps, time.perf_counter() - start)
        data.step(None if data.env_steps < config.learning_starts else q_net)
        loop["collections"] += 1
        if data.env_steps < config.learning_starts or loop["collections"] % config.updates_every:
            continue
        temperature.advance(data.env_steps)
        q_net.set_temperature(temperature.value)
        target.set_temperature(temperature.value)
        if config.anneal_lr:
            decay_learning_rates(
                [(g, config.lr) for g in optimizer.param_groups], data.env_steps, config.total_env_steps
            )
        for _ in range(config.updates_per_step):
            batch = data.sample(config.batch_size, n_step=config.n_step)
            loss = soft_q_loss(
                q_net,
                target,
                batch,
                gamma=config.gamma,
                loss=config.loss,
                double_q=config.double_q,
                correction=config.n_step_correction,
                trace_lambda=config.trace_lambda,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            polyak_update(target, q_net, config.tau)
            interval.add({"critic_loss": loss, "alpha": temperature.item()})
            loop["learner_steps"] += 1
        if row_due(loop, data.env_steps, config):
            emit_row(result, callback, data, start, interval.pop())
    return finish(result, data, ckpt, start)


ALGORITHM = Algorithm(
    action_spaces=("Discrete",),
    name="softq",
    config=SoftQConfig,
    train=train,
    temperature=logged_or_configured("alpha"),
    temperature_note="soft Q-learning's alpha: the config's fixed value, else the last logged (annealed) one",
)
