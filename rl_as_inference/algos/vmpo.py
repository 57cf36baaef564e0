"""V-MPO: the on-policy form of coordinate ascent variant B (Song et al. 2019, DESIGN.md s.1).

Each iteration collects an on-policy batch of ``num_envs x unroll_length`` transitions with the
current policy and learns a state value V with n-step bootstrapped targets (the unroll's n = T):

    G_t = r_t + gamma * (1 - terminated_t) * (V(s'_t) if the episode was truncated at t or t = T - 1
                                              else G_{t+1}),

so a time limit bootstraps and a termination does not; the value loss is 0.5 (G - V)^2 and the
advantages are A = G - V(s).
E-step (the source's eq. 7 over the batch's samples): keep the top half of the advantages (the set K) and
weight them by psi(s, a) = exp(A / eta) / sum_K exp(A / eta), the non-parametric
q(s, a) proportional to pi_old(a|s) exp(A / eta) restricted to K; the temperature solves the dual of
KL(psi || uniform on K) <= epsilon_eta,

    L_eta = eta * epsilon_eta + eta * log mean_K exp(A / eta).

M-step (the source's eq. 8): weighted maximum likelihood L_pi = -sum_K psi log pi(a|s) subject to
E_s[KL(pi_old(.|s) || pi(.|s))] <= epsilon_alpha with a Lagrange multiplier alpha,

    L_alpha = alpha * (epsilon_alpha - sg[KL]) + sg[alpha] * KL,

one KL for a categorical policy, decoupled mean / standard-deviation KLs (two multipliers) for a
Gaussian one, as in MPO. pi_old is a target copy of pi refreshed every K learner steps. The duals
are log-parametrized, trained by Adam and clamped from below (eta, alpha >= ~1e-8) after each step.
Logged like Acme: the KL / epsilon ratios and the duals.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence

from rl_as_inference import bellman, envs
from rl_as_inference import distributed as dp
from rl_as_inference.algos.collect import (
    DEFAULT_OBS_CLIP,
    EnvActions,
    EpisodeReturns,
    episode_state,
    make_collection_env,
    make_obs_normalizer,
    restore_episodes,
    true_next_obs,
    update_obs_normalizer,
)
from rl_as_inference.algos.registry import Algorithm, last_logged
from rl_as_inference.algos.sac import TrainResult
from rl_as_inference.algos.schedules import decay_learning_rates
from rl_as_inference.algos.settings import RunSettings, rank_share
from rl_as_inference.algos.stats import IntervalMeans, emit_row, finish, row_due
from rl_as_inference.critics import StateValue
from rl_as_inference.guides.normalization import attach_obs_normalizer
from rl_as_inference.guides.policies import CategoricalMLP, GaussianMLP, activation_class, validate_on
from rl_as_inference.optim import adam
from rl_as_inference.resume import Checkpointer

__all__ = ["Rollouts", "StateValue", "VMPOConfig", "nstep_returns", "train", "vmpo_losses"]

LOG_DUAL_MIN = -18.0  # log(1.5e-8): the projection of the duals onto (nearly) positive values


@dataclass
class VMPOConfig(RunSettings):
    """Hyperparameters of V-MPO.

    The structure follows the paper: the top half of the advantages, n-step targets bootstrapped
    at the end of the unroll, a target pi_old, initial eta = 1 and alpha = 5. The paper's single
    learner step per batch suits thousands of actors; here a few dozen functional envs feed
    ``updates_per_batch`` learner steps on each on-policy batch (as PPO reuses its batches). The
    defaults are the CartPole-v1 recipe, tuned here (seeds 0-9, one CPU thread); what mattered:
    pi_old held for several batches (K = 32 learner steps: with K = 8 the multiplier alpha only saw
    the KL right after each refresh and runs collapsed after reaching 500), value targets of order
    1 (``reward_scale``; the temperature makes the E-step weights invariant to it), learning rates
    of 3e-3 decayed linearly to 0, and a fast dual learning rate (0.1) so eta tracks the advantages'
    scale as the value function improves. The Gaussian bounds are untuned placeholders of the
    size MPO uses; the Pendulum-v1 recipe loosens them.
    """

    env: str = "CartPole-v1"  # shared settings (RunSettings) with V-MPO's own defaults
    total_env_steps: int = 50_000
    num_envs: int = 32  # parallel functional envs collecting on-policy data
    log_every: int = 5_000
    unroll_length: int = 16  # steps per env per batch: the n of the n-step targets
    updates_per_batch: int = 8  # learner steps on each collected batch
    target_update_every: int = 32  # learner steps between copies of pi into pi_old (K): 4 batches
    top_fraction: float = 0.5  # share of the batch, by advantage, that the E-step keeps
    gamma: float = 0.99  # probability of continuing after each step (the discount)
    reward_scale: float = 0.1  # multiplies the rewards in the value targets (logged returns: unscaled)
    epsilon_eta: float = 0.1  # E-step bound on KL(psi || uniform on the top half)
    epsilon_alpha: float = 0.005  # M-step KL bound, categorical policies
    epsilon_mean: float = 0.01  # M-step KL bound on the mean, Gaussian policies
    epsilon_stddev: float = 1e-4  # M-step KL bound on the standard deviation, Gaussian policies
    init_temperature: float = 1.0  # paper
    init_alpha: float = 5.0  # paper (all multipliers)
    policy_lr: float = 3e-3  # Adam learning rate of the policy
    value_lr: float = 3e-3  # Adam learning rate of the state value
    dual_lr: float = 0.1  # Adam learning rate of the dual variables (temperatures, KL multipliers)
    anneal_lr: bool = True  # decay the network learning rates linearly to 0 over total_env_steps
    max_grad_norm: float | None = None  # None: no clipping of the network gradients
    hidden: tuple[int, ...] = (64, 64)  # hidden layer widths of every network
    activation: str = "Tanh"  # a torch.nn activation, for the policy and the value network
    rescale_actions: bool = False  # Box actions: the Gaussian acts in the unit box, mapped onto the env's


def nstep_returns(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """n-step bootstrapped targets over an unroll of T steps, computed backward on the device.

    The lambda = 1 returns of :func:`rl_as_inference.bellman.lambda_returns` (the library's one
    return calculator), with truncation flags.

    Args:
        rewards: ``[T, N]`` r_t.
        next_values: ``[T, N]`` V(s'_t) of the true next state of every step (SAME_STEP
            ``info["final_obs"]``), used where the unroll ends or an episode is truncated.
        terminated, truncated: ``[T, N]`` bool; a termination stops the return (no bootstrap), a
            truncation bootstraps from V(s'_t); if both, termination wins.
        gamma: discount.

    Returns:
        ``[T, N]`` G_t = r_t + gamma (1 - terminated_t) (V(s'_t) if truncated_t or t = T - 1 else G_{t+1}).
    """
    values = torch.cat((next_values[:1], next_values))  # lambda_returns' V(s_0) row, never used
    return bellman.lambda_returns(rewards, terminated, values, gamma, 1.0, truncated=truncated)


def _m_step_terms(
    online: Distribution, target: Distribution, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """log-likelihoods ``[B]`` of the fit, the KLs ``[k]`` from pi_old averaged over states, their names.

    Categorical: log pi(a|s) and KL(pi_old || pi). Gaussian, decoupled as in MPO: the mean is fitted
    with pi_old's scale and the scale with pi_old's mean, each under its own KL.
    """
    if isinstance(online, Categorical):
        return online.log_prob(actions), kl_divergence(target, online).mean().unsqueeze(0), ["kl"]
    loc, scale = online.base_dist.loc, online.base_dist.scale
    t_loc, t_scale = target.base_dist.loc.detach(), target.base_dist.scale.detach()
    check = validate_on(loc)
    fit_mean = Independent(Normal(loc, t_scale, validate_args=check), 1, validate_args=check)
    fit_scale = Independent(Normal(t_loc, scale, validate_args=check), 1, validate_args=check)
    reference = Independent(Normal(t_loc, t_scale, validate_args=check), 1, validate_args=check)
    log_lik = fit_mean.log_prob(actions) + fit_scale.log_prob(actions)
    kls = torch.stack((kl_divergence(reference, fit_mean).mean(), kl_divergence(reference, fit_scale).mean()))
    return log_lik, kls, ["kl_mean", "kl_stddev"]


def vmpo_losses(
    returns: torch.Tensor,
    values: torch.Tensor,
    actions: torch.Tensor,
    online: Distribution,
    target: Distribution,
    log_temperature: torch.Tensor,
    log_alpha: torch.Tensor,
    config: VMPOConfig,
) -> tuple[torch.Tensor, dict]:
    """The V-MPO loss as one pure function: value regression, top-half E-step with its temperature
    dual, KL-constrained weighted maximum likelihood and the multipliers' duals.

    Args:
        returns: ``[B]`` n-step targets G (no gradient).
        values: ``[B]`` V(s) of the same states (differentiable: the value loss trains it).
        actions: ``[B]`` (categorical) or ``[B, d]`` (Gaussian) actions taken.
        online: pi(.|s) over the B states, a ``Categorical`` or an ``Independent(Normal)``.
        target: pi_old(.|s), same family (treated as a constant).
        log_temperature: log eta (scalar, trainable).
        log_alpha: log alpha, ``[1]`` for a categorical policy, ``[2]`` (mean, stddev) for a Gaussian.
        config: ``top_fraction`` and the constraint sizes.

    Returns:
        (loss, stats): one scalar whose gradients train the policy, the value and all duals; stats
        are detached tensors (Acme-style KL / epsilon ratios and duals), read back only when logged.
    """
    advantages = (returns - values).detach()
    # data-parallel: the top half of every rank's advantages together, as one process with all the
    # envs would select (in one process: its own)
    everyone = dp.all_gather_cat(advantages)
    k = max(1, int(config.top_fraction * everyone.shape[0]))
    top, index = torch.topk(everyone, k)
    # E-step: psi = softmax(A / eta) over the top half; temperature from its dual.
    temperature = log_temperature.exp()
    weights = torch.softmax(top / temperature.detach(), dim=0)
    log_mean_exp = torch.logsumexp(top / temperature, dim=0) - math.log(k)
    temperature_loss = temperature * config.epsilon_eta + temperature * log_mean_exp
    # M-step: weighted maximum likelihood on the top half, KL(pi_old || pi) over all states.
    log_lik, kls, names = _m_step_terms(online, target, actions)
    if dp.world_size() == 1:
        policy_loss = -(weights * log_lik[index]).sum()
    else:  # this rank's states among the top get their weights (scattered: no host read); the
        # ranks' gradients are averaged, so x K makes the average the one-process sum
        b = advantages.shape[0]
        mine = torch.zeros_like(everyone).scatter(0, index, weights)[dp.rank() * b : (dp.rank() + 1) * b]
        policy_loss = -(mine * log_lik).sum() * dp.world_size()
    epsilons = (config.epsilon_alpha,) if len(names) == 1 else (config.epsilon_mean, config.epsilon_stddev)
    alpha = log_alpha.exp()
    kl_penalty = (alpha.detach() * kls).sum()
    alpha_loss = sum(alpha[i] * (eps - kls[i].detach()) for i, eps in enumerate(epsilons))
    value_loss = 0.5 * (returns - values).square().mean()
    kl_q = (weights * (torch.log(weights.clamp_min(1e-30)) + math.log(k))).sum()  # KL(psi || uniform on K)
    stats = {
        "value_loss": value_loss.detach(),
        "policy_loss": policy_loss.detach(),
        "temperature": temperature.detach(),
        "kl_q_rel": kl_q / config.epsilon_eta,
    }
    for i, name in enumerate(names):
        stats[f"{name}_rel"] = kls[i].detach() / epsilons[i]
        stats["alpha" + name.removeprefix("kl")] = alpha[i].detach()
    return value_loss + policy_loss + kl_penalty + alpha_loss + temperature_loss, stats


class Rollouts:
    """On-policy unrolls of ``num_envs`` envs (SAME_STEP autoreset; the torch port where there is
    one, else Gymnasium's own env), kept on the device.

    ``unroll(policy, T)`` steps every env T times with actions sampled from ``policy`` and returns
    the ``[T, N, ...]`` observations, actions, rewards, true next observations
    (``info["final_obs"]``: s_{t+1} even where an episode ended), terminations and truncations.
    Episode returns are tracked on the device and read back only by :meth:`pop_mean_return`.
    ``state_dict`` / ``load_state_dict`` let a run stop and continue bit for bit.
    ``exploring_starts`` is the share of resets drawn anywhere in the env's state box.
    ``normalize_obs`` keeps a running normalizer of the observations (``obs_normalizer``, updated
    before the policy sees them); Box actions reach the env clamped into the box and are returned
    as drawn (as in :class:`~rl_as_inference.algos.collect.Collector`). ``env_kwargs`` go to the
    env's constructor.
    """

    def __init__(
        self,
        env_id: str,
        *,
        num_envs: int,
        device: torch.device,
        seed: int,
        exploring_starts: float = 0.0,
        backend: str = "auto",
        vectorization: str = "sync",
        normalize_obs: bool = False,
        obs_clip: float = DEFAULT_OBS_CLIP,
        env_kwargs: dict | None = None,
    ):
        self.venv = make_collection_env(
            env_id,
            num_envs,
            device=device,
            backend=backend,
            exploring_starts=exploring_starts,
            vectorization=vectorization,
            env_kwargs=env_kwargs,
        )
        self.observation_space = self.venv.single_observation_space
        self.action_space = self.venv.single_action_space
        self.device, self.num_envs, self.seed = device, num_envs, int(seed)
        self.obs_normalizer = make_obs_normalizer(
            self.observation_space, normalize_obs, obs_clip, env_id, device
        )
        self.env_actions = EnvActions(self.action_space, device)
        self.obs, _ = self.venv.reset(seed=seed)
        update_obs_normalizer(self.obs_normalizer, self.obs)
        self.returns = EpisodeReturns(num_envs, device)
        self.env_steps = 0

    @torch.no_grad()
    def unroll(self, policy: nn.Module, length: int) -> dict[str, torch.Tensor]:
        """``length`` steps of every env under ``policy`` (sampled actions); a dict of ``[T, N, ...]``."""
        steps: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")
        }
        for _ in range(length):
            action = policy(self.obs).sample()
            obs, reward, terminated, truncated, info = self.venv.step(self.env_actions(action))
            update_obs_normalizer(self.obs_normalizer, obs)
            final = true_next_obs(obs, terminated | truncated, info)
            for key, value in zip(
                steps, (self.obs, action, reward, final, terminated, truncated), strict=True
            ):
                steps[key].append(value)
            self.returns.add(reward, terminated | truncated)
            self.obs = obs
        self.env_steps += self.num_envs * length * dp.world_size()  # over all ranks
        return {key: torch.stack(values) for key, values in steps.items()}

    def pop_mean_return(self) -> float:
        """Mean return of the episodes that ended since the last call (NaN if none); one host read."""
        return self.returns.pop_mean()

    def state_dict(self) -> dict:
        """The vector env (None for Gymnasium's own, whose state cannot be saved), current
        observations, episode returns and step count."""
        return episode_state(self.venv, self.obs, self.returns, self.env_steps)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into rollouts built with the same settings; without a saved
        env state the episodes restart (as in :meth:`Collector.load_state_dict`)."""
        self.obs, self.env_steps = restore_episodes(
            self.venv, state, self.returns, seed=self.seed, device=self.device
        )

    def close(self) -> None:
        """Close the vector env."""
        self.venv.close()


def _make_policy(config: VMPOConfig, observation_space: gym.Space, action_space: gym.Space) -> nn.Module:
    shape = {
        "hidden": config.hidden,
        "activation": activation_class(config.activation),
        "rescale_obs": config.rescale_obs,
    }
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalMLP(observation_space, action_space, **shape)
    if isinstance(action_space, gym.spaces.Box):
        return GaussianMLP(
            observation_space,
            action_space,
            state_dependent_std=True,
            rescale_actions=config.rescale_actions,
            **shape,
        )
    raise ValueError(f"vmpo needs a Discrete or a 1-D Box action space, got {action_space}")


def train(
    config: VMPOConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train V-MPO on the functional port of ``config.env``; ``callback(row)`` sees each metric row,
    ``checkpointer`` saves (and on resume restores) the whole training state."""
    config = rank_share(config)  # in a data-parallel run, this rank's share
    device = envs.base.resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = Rollouts(
        config.env,
        num_envs=config.num_envs,
        device=device,
        seed=config.seed,
        exploring_starts=config.exploring_starts,
        backend=config.backend,
        vectorization=config.vectorization,
        normalize_obs=config.normalize_obs,
        obs_clip=config.obs_clip,
        env_kwargs=config.env_kwargs,
    )
    policy = _make_policy(config, data.observation_space, data.action_space).to(device)
    target_policy = copy.deepcopy(policy).requires_grad_(False)
    value = StateValue(
        data.observation_space, config.hidden, activation_class(config.activation), config.rescale_obs
    ).to(device)
    attach_obs_normalizer(data.obs_normalizer, policy, target_policy, value)
    num_kls = 1 if isinstance(data.action_space, gym.spaces.Discrete) else 2
    duals = [
        torch.tensor(math.log(config.init_temperature), device=device, requires_grad=True),
        torch.full((num_kls,), math.log(config.init_alpha), device=device, requires_grad=True),
    ]
    # One optimizer for networks and duals: one fused step per learner step (the groups' updates
    # are independent, so this equals two optimizers' steps).
    optimizer = adam(
        [
            {"params": list(policy.parameters()), "lr": config.policy_lr},
            {"params": list(value.parameters()), "lr": config.value_lr},
            {"params": duals, "lr": config.dual_lr},
        ],
        lr=config.policy_lr,
    )
    networks = [p for group in optimizer.param_groups[:2] for p in group["params"]]

    result = TrainResult(policy=policy)
    loop = {"learner_steps": 0, "next_log": config.log_every, "wall_time": 0.0}
    interval = IntervalMeans()  # statistics averaged over every learner step of a metric row
    ckpt = checkpointer or Checkpointer(None)
    ckpt.attach(
        "vmpo",
        {
            "data": data,
            "policy": policy,
            "target_policy": target_policy,
            "value": value,
            "duals": duals,
            "optimizer": optimizer,
            "stats": interval,
        },
        loop,
    )
    start = time.perf_counter() - loop["wall_time"]
    while data.env_steps < config.total_env_steps:
        ckpt.maybe_save(data.env_steps, time.perf_counter() - start)
        if config.anneal_lr:
            lrs = (config.policy_lr, config.value_lr)
            decay_learning_rates(
                zip(optimizer.param_groups[:2], lrs, strict=True), data.env_steps, config.total_env_steps
            )
        # ---- an on-policy batch: T steps of N envs, and its n-step targets under the current V
        batch = data.unroll(policy, config.unroll_length)
        with torch.no_grad():
            next_values = value(batch["next_obs"]).to(batch["reward"].dtype)
            returns = nstep_returns(
                batch["reward"] * config.reward_scale,
                next_values,
                batch["terminated"],
                batch["truncated"],
                config.gamma,
            ).flatten()
        states, actions = batch["obs"].flatten(0, 1), batch["action"].flatten(0, 1)
        # ---- learner steps: E-step weights, M-step fit against pi_old, value regression, duals
        target = None  # pi_old(.|s) of the batch: constant until pi_old is refreshed
        for _ in range(config.updates_per_batch):
            if target is None:
                with torch.no_grad():
                    target = target_policy(states)
            loss, stats = vmpo_losses(returns, value(states), actions, policy(states), target, *duals, config)
            optimizer.zero_grad()
            loss.backward()
            if config.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(networks, config.max_grad_norm)
            optimizer.step()
            with torch.no_grad():  # projection: eta, alpha >= exp(LOG_DUAL_MIN)
                for dual in duals:
                    dual.clamp_(min=LOG_DUAL_MIN)
            interval.add({"loss": loss} | stats)
            loop["learner_steps"] += 1
            if loop["learner_steps"] % config.target_update_every == 0:
                target_policy.load_state_dict(policy.state_dict())
                target = None
        if row_due(loop, data.env_steps, config):
            emit_row(result, callback, data, start, interval.pop())
    return finish(result, data, ckpt, start)


def _temperature(config, metrics) -> float | None:
    """eta weighs advantages of rewards scaled by ``reward_scale``: in reward units alpha = eta / scale."""
    eta = last_logged(metrics, "temperature")
    scale = float(config.get("reward_scale", VMPOConfig.reward_scale))
    return None if eta is None or not scale > 0 else eta / scale


ALGORITHM = Algorithm(
    action_spaces=("Box", "Discrete"),
    unbounded_box=True,
    name="vmpo",
    config=VMPOConfig,
    train=train,
    temperature=_temperature,
    temperature_note=(
        "V-MPO's E-step temperature eta over the scaled advantages (psi proportional to exp(A / eta)), "
        "divided by reward_scale: the last logged 'temperature' (the logged 'alpha' columns are the "
        "M-step KL multipliers, not a temperature)"
    ),
)
