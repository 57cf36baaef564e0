"""MPO: coordinate ascent variant B of the source (eqs. 7, 8): non-parametric E-step, parametric M-step.

E-step (eq. 7 in closed form): for each replayed state s, sample actions a_j ~ pi_k(.|s) and weight
them by q(a_j|s) proportional to exp(Q(s, a_j) / eta); the temperature eta solves the dual of the
constraint E_s[KL(q(.|s) || pi_k(.|s))] <= epsilon,

    g(eta) = eta * epsilon + eta * E_s[ log mean_j exp(Q(s, a_j) / eta) ],

minimized on the device by gradient steps on log eta (as Acme does).
M-step (eq. 8): pi_{k+1} = argmax sum_j q_j log pi(a_j|s) (weighted maximum likelihood) subject to
KL(pi_k || pi) bounds, decoupled for the mean (epsilon_mean) and the covariance (epsilon_stddev)
with learned Lagrange multipliers. Q is learned with T^{pi,q} at alpha = 0 against the target policy,
and for Box actions it values every action at its clip into the box (the action the env is handed),
so the Gaussian's out-of-box samples get the value of what they do rather than an extrapolation.
Logged like Acme: the KL / epsilon ratios and the duals.

Gaussian policies for Box actions; categorical policies for Discrete ones, where the E-step is exact
over all actions (q(a|s) proportional to pi_k(a|s) exp(Q(s, a) / eta), no sampling) and the M-step has
one KL bound ``epsilon_policy`` (Acme's discrete MPO). ``n_step`` > 1 learns Q from n-step paths
of the replay (:func:`rl_as_inference.critics.n_step_soft_target` at alpha = 0: the discounted
rewards plus gamma^m E_{pi_k}[Q'(s_m, .)]), exact for paths of pi_k and, for the replayed actions of
older policies, uncorrected (``n_step_correction = "none"``, as Acme's n-step adder) or corrected by
Retrace (``"retrace"``, Munos et al. 2016, the MPO paper's policy evaluation: traces
c_k = trace_lambda min(1, pi_k(a_k|s_k) / mu(a_k|s_k))). ``distributional_critic = true`` learns
the law of the return on fixed atoms instead (Acme's distributional MPO,
:mod:`rl_as_inference.distributional`), whose means the E-step reads.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import Independent, Normal, kl_divergence

from rl_as_inference import envs
from rl_as_inference.algos.collect import Collector, clamp_into
from rl_as_inference.algos.registry import Algorithm, last_logged
from rl_as_inference.algos.sac import TrainResult
from rl_as_inference.algos.schedules import decay_learning_rates
from rl_as_inference.algos.settings import RunSettings, rank_share
from rl_as_inference.algos.stats import IntervalMeans, emit_row, finish, row_due
from rl_as_inference.critics import TwinQ, soft_q_loss
from rl_as_inference.distributional import CategoricalQ, check_correction, distributional_q_loss
from rl_as_inference.guides.normalization import attach_obs_normalizer
from rl_as_inference.guides.policies import CategoricalMLP, GaussianMLP, validate_on
from rl_as_inference.optim import adam
from rl_as_inference.resume import Checkpointer

__all__ = ["MPOConfig", "categorical_mpo_losses", "mpo_losses", "realized_kl", "train"]


@dataclass
class MPOConfig(RunSettings):
    """Hyperparameters of MPO (constraint sizes and sample count: Acme's defaults)."""

    learning_starts: int = 1_000  # env steps of random actions before the first update
    batch_size: int = 256  # transitions per learner update
    num_samples: int = 20  # actions sampled per state in the E-step
    buffer_size: int = 100_000  # transitions the replay buffer keeps
    gamma: float = 0.99  # probability of continuing after each step (the discount)
    tau: float = 0.005  # Polyak rate of the critic targets
    target_policy_update_every: int = 100  # learner steps between copies of pi into pi_k
    epsilon: float = 0.1  # E-step KL bound
    epsilon_mean: float = 2.5e-3  # M-step KL bound on the mean
    epsilon_stddev: float = 1e-6  # M-step KL bound on the standard deviation
    epsilon_policy: float = 1e-3  # M-step KL bound of a categorical policy (Acme's discrete MPO)
    n_step: int = 1  # critic targets from n-step replayed paths (1: one-step T^{pi,q})
    # "none": the replayed actions taken as pi_k's (exact on-policy); "retrace": traces trace_lambda *
    # min(1, pi_k / mu), mu stored at collection (fixed point Q^{pi_k} for any behaviour)
    n_step_correction: str = "none"
    trace_lambda: float = 1.0  # lambda of the Retrace traces
    anneal_lr: bool = False  # decay the policy and critic learning rates linearly to 0 over the budget
    policy_lr: float = 1e-3  # Adam learning rate of the policy
    critic_lr: float = 1e-3  # Adam learning rate of the critics
    dual_lr: float = 1e-2  # Adam learning rate of the dual variables (temperatures, KL multipliers)
    init_log_temperature: float = 0.0  # starting log of the E-step temperatures
    init_log_alpha: float = 0.0  # log of the Gaussian KL multipliers; the categorical one is softplus of it
    hidden: tuple[int, ...] = (256, 256)  # hidden layer widths of every network
    rescale_actions: bool = False  # Box actions: the Gaussian acts in the unit box, mapped onto the env's
    # two Q networks and their min (clipped double-Q); False: one, as the MPO paper and Acme (every
    # critic evaluation, the E-step's M x B included, then costs half)
    twin_critic: bool = True
    # Box actions, Acme's refinements: one KL bound (epsilon_mean, epsilon_stddev) and multiplier per
    # action dimension instead of one on their sum, so no dimension's mean or scale moves by more
    # than its bound while another stands still
    per_dim_constraints: bool = False
    # a second E-step on the cost -||a - clip(a)|| of the sampled actions outside the box (in units of
    # the box's half widths), with its own temperature and KL bound epsilon_penalty, whose weights
    # are added to the Q weights: keeps the Gaussian's mean inside the box the env clips to
    action_penalization: bool = False
    epsilon_penalty: float = 1e-3
    # Acme's distributional MPO: the critic learns the return's law on num_atoms atoms evenly spaced
    # on [v_min, v_max] (in scaled-reward units; returns outside are clipped onto the ends), and
    # MPO reads its means (rl_as_inference.distributional); one network, so twin_critic = false
    distributional_critic: bool = False
    num_atoms: int = 51
    v_min: float = -150.0
    v_max: float = 150.0


def realized_kl(weights: torch.Tensor) -> torch.Tensor:
    """Mean over states of KL(q(.|s) || pi_k(.|s)) for E-step weights ``[M, B]`` over M samples of pi_k."""
    m = weights.shape[0]
    return (weights * (torch.log(weights.clamp_min(1e-30)) + math.log(m))).sum(0).mean()


def categorical_mpo_losses(
    q_values: torch.Tensor,
    online_logits: torch.Tensor,
    target_logits: torch.Tensor,
    log_temperature: torch.Tensor,
    alpha_param: torch.Tensor,
    config: MPOConfig,
) -> tuple[torch.Tensor, dict]:
    """The MPO loss of a categorical policy, with the E-step exact over all actions.

    E-step (the source's eq. 7): q(a|s) = pi_k(a|s) exp(Q(s, a) / eta) / Z(s), with eta minimizing the dual
    g(eta) = eta epsilon + eta E_s[log sum_a pi_k(a|s) exp(Q(s, a) / eta)].
    M-step (eq. 8): maximize E_s[sum_a q(a|s) log pi(a|s)] subject to E_s[KL(pi_k || pi)] <=
    epsilon_policy, with the Lagrange multiplier alpha = softplus(alpha_param) learned by its own
    dual. Softplus, as Acme's categorical MPO, and not exp: Adam moves a parameter by about its
    learning rate per step whatever the gradient's size, so while the bound stays violated exp
    would grow alpha geometrically. That happened here (LunarLander-v3): the optimizer's own step
    noise kept KL(pi_k || pi) above a 1e-3 bound, alpha passed 1e7 within ~1000 learner steps and
    the policy stopped following Q. Softplus grows it at most linearly.

    Args:
        q_values: ``[B, A]`` Q(s_i, a) for every action.
        online_logits, target_logits: ``[B, A]`` logits of the policy being fitted and of pi_k.
        log_temperature, alpha_param: the dual variables (scalars, trainable): eta =
            exp(log_temperature), alpha = softplus(alpha_param).
        config: constraint sizes (``epsilon``, ``epsilon_policy``).

    Returns:
        (loss, stats) as :func:`mpo_losses`.
    """
    target_log_probs = torch.log_softmax(target_logits.detach(), dim=-1)
    weights, temperature_loss, temperature = _temperature_dual(
        q_values, log_temperature, config.epsilon, log_prior=target_log_probs, dim=-1
    )
    online_log_probs = torch.log_softmax(online_logits, dim=-1)
    policy_loss = -(weights * online_log_probs).sum(-1).mean()
    # KL(pi_k || pi) from log-probabilities: a near-deterministic policy has probabilities that
    # underflow to 0 (logits ~ 100 in float32), where torch's Categorical KL returns inf.
    kl = (target_log_probs.exp() * (target_log_probs - online_log_probs)).sum(-1).mean()
    alpha = torch.nn.functional.softplus(alpha_param)
    alpha_loss = alpha * (config.epsilon_policy - kl.detach())
    log_weights = torch.log(weights.clamp_min(1e-30))
    kl_q = (weights * (log_weights - target_log_probs)).sum(-1).mean()
    stats = {
        "temperature": temperature.detach(),
        "kl_q_rel": kl_q / config.epsilon,
        "kl_policy_rel": kl.detach() / config.epsilon_policy,
        "alpha_policy": alpha.detach(),
    }
    return policy_loss + alpha.detach() * kl + alpha_loss + temperature_loss, stats


def _gaussian(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    check = validate_on(loc)
    return Independent(Normal(loc, scale, validate_args=check), 1, validate_args=check)


def _temperature_dual(
    values: torch.Tensor,
    log_temperature: torch.Tensor,
    epsilon: float,
    log_prior: torch.Tensor | None = None,
    dim: int = 0,
):
    """E-step weights q_j proportional to pi_k(j) exp(values_j / eta) along ``dim``, and the dual

        g(eta) = eta epsilon + eta E_s[log sum_j pi_k(j) exp(values_j / eta)]

    whose minimizer puts KL(q || pi_k) on epsilon. ``log_prior`` is log pi_k over ``dim`` (the
    categorical E-step's exact sum over actions); None: the M sampled actions of pi_k, each with
    weight 1/M (a log mean exp). Returns (weights, g, eta)."""
    temperature = log_temperature.exp()
    if log_prior is None:
        log_prior = torch.full_like(values, -math.log(values.shape[dim]))
    log_prior, values = log_prior.detach(), values.detach()
    weights = torch.softmax(log_prior + values / temperature.detach(), dim=dim)
    log_z = torch.logsumexp(log_prior + values / temperature, dim=dim)
    return weights, temperature * epsilon + temperature * log_z.mean(), temperature


def out_of_box_cost(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """-||(a - clip(a, low, high)) / half width||_2 per sampled action ``[M, B]``: 0 inside the box,
    the distance to it (in units of the half widths, Acme's unit box) outside."""
    half = (high - low) / 2
    return -torch.linalg.vector_norm((actions - clamp_into(actions, low, high)) / half, dim=-1)


def mpo_losses(
    q_values: torch.Tensor,
    actions: torch.Tensor,
    online: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    log_temperature: torch.Tensor,
    log_alpha_mean: torch.Tensor,
    log_alpha_stddev: torch.Tensor,
    config: MPOConfig,
    *,
    penalty_log_temperature: torch.Tensor | None = None,
    action_box: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict]:
    """The MPO loss as one pure function (Acme's decomposition): E-step weights and temperature dual,
    decoupled weighted maximum likelihood, and the KL multipliers' duals.

    Args:
        q_values: ``[M, B]`` Q(s_i, a_ij) of M sampled actions per state.
        actions: ``[M, B, d]`` the sampled actions a_ij ~ pi_k(.|s_i).
        online: (loc, scale) ``[B, d]`` of the policy being fitted.
        target: (loc, scale) ``[B, d]`` of pi_k.
        log_temperature, log_alpha_mean, log_alpha_stddev: the dual variables (trainable scalars;
            with ``config.per_dim_constraints`` the two multipliers are ``[d]``, one per dimension).
        config: constraint sizes and the refinements in use.
        penalty_log_temperature: with ``config.action_penalization``, the temperature of the
            out-of-box cost's E-step (a trainable scalar).
        action_box: the (low, high) ``[d]`` of the env's box: needed by ``config.action_penalization``;
            where given, the stats also report ``out_of_box``, the fraction of sampled actions
            with a coordinate outside it.

    Returns:
        (loss, stats): one scalar whose gradients train the policy and all duals; Acme-style stats.
    """
    # E-step: q(a_ij|s_i) proportional to exp(Q / eta), normalized over the M samples of each state.
    weights, temperature_loss, temperature = _temperature_dual(q_values, log_temperature, config.epsilon)
    fit_weights = weights
    stats = {}
    if config.action_penalization:
        if penalty_log_temperature is None or action_box is None:
            raise ValueError("action_penalization=true needs penalty_log_temperature and action_box")
        cost = out_of_box_cost(actions, *action_box)
        penalty_weights, penalty_loss, penalty_temperature = _temperature_dual(
            cost, penalty_log_temperature, config.epsilon_penalty
        )
        fit_weights = weights + penalty_weights  # Acme adds the two sets of weights
        temperature_loss = temperature_loss + penalty_loss
        stats["temperature_penalty"] = penalty_temperature.detach()
        stats["kl_penalty_rel"] = realized_kl(penalty_weights) / config.epsilon_penalty
    if action_box is not None:
        low, high = action_box
        stats["out_of_box"] = ((actions < low) | (actions > high)).any(-1).float().mean()
    # M-step, decoupled: fit the mean with pi_k's scale, the scale with pi_k's mean.
    loc, scale = online
    t_loc, t_scale = (t.detach() for t in target)
    fit_mean = _gaussian(loc, t_scale)
    fit_scale = _gaussian(t_loc, scale)
    log_lik = fit_weights * (fit_mean.log_prob(actions) + fit_scale.log_prob(actions))
    policy_loss = -log_lik.sum(0).mean()
    if config.per_dim_constraints:
        # KL(pi_k || pi) of each coordinate, averaged over states: [d], one bound and multiplier each
        reference = Normal(t_loc, t_scale, validate_args=validate_on(t_loc))
        kl_mean = kl_divergence(reference, fit_mean.base_dist).mean(0)
        kl_stddev = kl_divergence(reference, fit_scale.base_dist).mean(0)
    else:
        reference = _gaussian(t_loc, t_scale)
        kl_mean = kl_divergence(reference, fit_mean).mean()
        kl_stddev = kl_divergence(reference, fit_scale).mean()
    alpha_mean, alpha_stddev = log_alpha_mean.exp(), log_alpha_stddev.exp()
    kl_penalty = (alpha_mean.detach() * kl_mean).sum() + (alpha_stddev.detach() * kl_stddev).sum()
    alpha_loss = (alpha_mean * (config.epsilon_mean - kl_mean.detach())).sum() + (
        alpha_stddev * (config.epsilon_stddev - kl_stddev.detach())
    ).sum()
    # Realized KL of the non-parametric q from pi_k (for logging against epsilon).
    kl_q = realized_kl(weights)
    stats = {  # detached tensors: read back only when a metric row is written
        "temperature": temperature.detach(),
        "kl_q_rel": kl_q / config.epsilon,
        # per dimension: the largest ratio (the binding constraint) and the mean multiplier
        "kl_mean_rel": kl_mean.detach().max() / config.epsilon_mean,
        "kl_stddev_rel": kl_stddev.detach().max() / config.epsilon_stddev,
        "alpha_mean": alpha_mean.detach().mean(),
        "alpha_stddev": alpha_stddev.detach().mean(),
    } | stats
    return policy_loss + kl_penalty + alpha_loss + temperature_loss, stats


def train(
    config: MPOConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train MPO on ``config.env`` (callback and checkpointer as in :func:`rl_as_inference.algos.sac.train`)."""
    config = rank_share(config)  # in a data-parallel run, this rank's share
    device = envs.base.resolve_device(config.device)
    torch.manual_seed(config.seed)
    if config.distributional_critic:  # refused before any env step is collected
        if config.twin_critic:
            raise ValueError(
                "distributional_critic = true is one network (Acme's distributional MPO): set twin_critic = false"
            )
        check_correction(config.n_step_correction)
    data = Collector.for_config(config, device, "mpo", discrete=True, reward_scale=config.reward_scale)
    space = data.action_space
    if data.discrete and (config.per_dim_constraints or config.action_penalization):
        raise ValueError(
            f"per_dim_constraints=true and action_penalization=true are for Box actions; {config.env} has "
            f"{space} (a categorical policy has one KL bound, epsilon_policy, and no box to leave)"
        )
    net = {"hidden": config.hidden, "activation": torch.nn.ELU, "rescale_obs": config.rescale_obs}
    if data.discrete:
        policy = CategoricalMLP(data.observation_space, space, **net)
    else:
        policy = GaussianMLP(
            data.observation_space,
            space,
            state_dependent_std=True,
            rescale_actions=config.rescale_actions,
            **net,
        )
    policy.to(device)
    target_policy = copy.deepcopy(policy).requires_grad_(False)
    if config.distributional_critic:
        critic = CategoricalQ(
            data.observation_space,
            space,
            hidden=config.hidden,
            num_atoms=config.num_atoms,
            v_min=config.v_min,
            v_max=config.v_max,
            rescale_obs=config.rescale_obs,
            clip_actions=True,
        ).to(device)
    else:
        critic = TwinQ(
            data.observation_space,
            space,
            hidden=config.hidden,
            rescale_obs=config.rescale_obs,
            twin=config.twin_critic,
            clip_actions=True,
        ).to(device)
    attach_obs_normalizer(data.obs_normalizer, policy, target_policy, critic)
    # [log eta, log alpha_mean, log alpha_stddev (, log eta_penalty)]; per-dimension multipliers
    # have one entry per action coordinate
    per_dim = () if data.discrete or not config.per_dim_constraints else (int(space.shape[0]),)
    duals = [torch.tensor(config.init_log_temperature, device=device)]
    duals += [torch.full(per_dim, config.init_log_alpha, device=device) for _ in range(2)]
    action_box = None if data.discrete else (data.low, data.high)  # the box the collector clamps into
    if config.action_penalization and not data.discrete:
        duals.append(torch.tensor(config.init_log_temperature, device=device))
    for dual in duals:
        dual.requires_grad_(True)
    policy_opt = adam(policy.parameters(), lr=config.policy_lr)
    dual_opt = adam(duals, lr=config.dual_lr)
    critic_opt = adam(critic.online_parameters(), lr=config.critic_lr)

    result = TrainResult(policy=policy)
    loop = {"learner_steps": 0, "next_log": config.log_every, "wall_time": 0.0}
    interval = IntervalMeans()  # statistics averaged over every learner step of a metric row
    ckpt = checkpointer or Checkpointer(None)
    ckpt.attach(
        "mpo",
        {
            "data": data,
            "policy": policy,
            "target_policy": target_policy,
            "critic": critic,
            "duals": duals,
            "policy_opt": policy_opt,
            "dual_opt": dual_opt,
            "critic_opt": critic_opt,
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
        if config.anneal_lr:
            groups = [(g, config.policy_lr) for g in policy_opt.param_groups]
            groups += [(g, config.critic_lr) for g in critic_opt.param_groups]
            decay_learning_rates(groups, data.env_steps, config.total_env_steps)
        batch = data.sample(config.batch_size, n_step=config.n_step)
        # ---- critic: T^{pi,q} at alpha = 0 against the target policy (plain expected Q backup),
        # or its distributional form
        if config.distributional_critic:
            critic_loss = distributional_q_loss(
                critic, target_policy, batch, gamma=config.gamma, correction=config.n_step_correction
            )
        else:
            critic_loss = soft_q_loss(
                critic,
                target_policy,
                batch,
                alpha=0.0,
                log_pi=0.0,
                gamma=config.gamma,
                correction=config.n_step_correction,
                trace_lambda=config.trace_lambda,
            )
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()
        # ---- E-step weights over actions of pi_k and their Q values; M-step on the policy; duals
        if data.discrete:
            with torch.no_grad():
                q_values = critic.min(batch["obs"])  # [B, A]: every action, no sampling
                target_logits = target_policy(batch["obs"]).logits
            loss, stats = categorical_mpo_losses(
                q_values, policy(batch["obs"]).logits, target_logits, duals[0], duals[1], config
            )
        else:
            with torch.no_grad():
                t_loc, t_scale = target_policy.params(batch["obs"])
                actions = _gaussian(t_loc, t_scale).sample((config.num_samples,))  # [M, B, d]
                obs = batch["obs"].expand(config.num_samples, *batch["obs"].shape)
                q_values = critic.min(obs.reshape(-1, obs.shape[-1]), actions.reshape(-1, actions.shape[-1]))
                q_values = q_values.reshape(config.num_samples, -1)
            loss, stats = mpo_losses(
                q_values,
                actions,
                policy.params(batch["obs"]),
                (t_loc, t_scale),
                *duals[:3],
                config,
                penalty_log_temperature=duals[3] if config.action_penalization else None,
                action_box=action_box,
            )
        policy_opt.zero_grad()
        dual_opt.zero_grad()
        loss.backward()
        policy_opt.step()
        dual_opt.step()
        with torch.no_grad():  # keep the duals in a sane range (Acme clips them the same way)
            for dual in duals:
                dual.clamp_(min=-18.0)
        critic.update_target(config.tau)
        interval.add({"critic_loss": critic_loss, "loss": loss} | stats)
        loop["learner_steps"] += 1
        if loop["learner_steps"] % config.target_policy_update_every == 0:
            target_policy.load_state_dict(policy.state_dict())
        if row_due(loop, data.env_steps, config):
            emit_row(result, callback, data, start, interval.pop())
    return finish(result, data, ckpt, start)


ALGORITHM = Algorithm(
    action_spaces=("Box", "Discrete"),
    name="mpo",
    config=MPOConfig,
    train=train,
    temperature=lambda config, metrics: last_logged(metrics, "temperature"),
    temperature_note=(
        "MPO's E-step temperature eta (q proportional to pi exp(Q / eta), the dual of its KL bound): "
        "the last logged 'temperature'"
    ),
)
