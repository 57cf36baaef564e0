"""The KL-regularized action value and its Bellman operator T^{pi,q} (DESIGN.md s.1; seed's Q^q).

In reward units (the ELBO times alpha):

    Q^q(s, a) = r(s, a) + gamma * E_{s'} E_{a' ~ q}[ Q^q(s', a') - alpha * (log q(a'|s') - log pi(a'|s')) ]

The seed writes a ratio of logs inside the expectation; the correct term is the difference above.
With pi uniform the KL term is a negative entropy plus a constant and Q^q is SAC's soft Q. The
E-step of seed eq. (7) has the closed form q(a|s) proportional to pi(a|s) exp(Q(s, a) / alpha)
(:func:`greedy_in_kl`), whose soft value is alpha * log sum_a pi(a|s) exp(Q(s, a) / alpha).

The batch functions here (:func:`soft_value_of_sample`, :func:`soft_value_of_distribution`,
:func:`bellman_target`, :func:`n_step_target`) build critic targets on any device; the tabular
ones (:func:`bellman_operator`, :func:`policy_evaluation`) apply T^{pi,q} with exact expectations on
a finite MDP, as ground truth for the tests.
"""

from __future__ import annotations

import math

import torch

from rl_as_inference.envs import TabularMDP

__all__ = [
    "bellman_operator",
    "bellman_target",
    "greedy_in_kl",
    "lambda_returns",
    "n_step_target",
    "policy_evaluation",
    "soft_value_of_distribution",
    "soft_value_of_sample",
]


def soft_value_of_sample(
    q_value: torch.Tensor, log_q: torch.Tensor, log_pi: torch.Tensor | float, alpha: float
) -> torch.Tensor:
    """One-sample estimate of E_{a~q}[Q(s, a) - alpha (log q(a|s) - log pi(a|s))] at a sampled a."""
    return q_value - alpha * (log_q - log_pi)


def soft_value_of_distribution(
    q_values: torch.Tensor, probs: torch.Tensor, log_pi: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Exact E_{a~q}[Q(s, a) - alpha (log q - log pi)] over a discrete action axis (the last one).

    Actions with q(a|s) = 0 contribute nothing (0 log 0 = 0).
    """
    log_q = torch.where(probs > 0, probs.log(), torch.zeros_like(probs))
    terms = torch.where(probs > 0, probs * (q_values - alpha * (log_q - log_pi)), torch.zeros_like(probs))
    return terms.sum(-1)


def bellman_target(
    reward: torch.Tensor, terminated: torch.Tensor, next_soft_value: torch.Tensor, gamma: float | torch.Tensor
) -> torch.Tensor:
    """y = r + gamma (1 - terminated) V(s'): one application of T^{pi,q} at a sampled transition.

    ``gamma`` may be a per-transition tensor (gamma^m of an m-step transition).

    Truncation by a time limit is not termination: bootstrap through it (pass ``terminated``).
    """
    return reward + gamma * (~terminated).to(reward.dtype) * next_soft_value


def n_step_target(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    kl_penalties: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """n-step target sum_k gamma^k (r_k - [k > 0] penalty_k) + gamma^n V(s_n), cut at termination.

    Args:
        rewards: ``[n, B]`` rewards r_0..r_{n-1} along the sampled path.
        terminated: ``[n, B]`` bool, True where step k ended the episode.
        kl_penalties: ``[n, B]`` alpha (log q(a_k|s_k) - log pi(a_k|s_k)) of the path's actions; the
            first is ignored (Q conditions on a_0), the others are the KL terms inside T^{pi,q}.
        bootstrap: ``[B]`` soft value V(s_n) of the state after the last step.
        gamma: discount.
    """
    n = rewards.shape[0]
    target = bootstrap
    for k in reversed(range(n)):
        cont = (~terminated[k]).to(rewards.dtype)
        target = rewards[k] + gamma * cont * target
        if k > 0:
            target = target - kl_penalties[k]
    return target


def lambda_returns(
    rewards: torch.Tensor, terminated: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """TD(lambda) targets of a state value along on-policy paths, cut at termination.

    G_t = r_t + gamma (1 - terminated_t) ((1 - lambda) V(s_{t+1}) + lambda G_{t+1}), G_T = V(s_T):
    lambda = 0 is the one-step target r_t + gamma V(s_{t+1}) (:func:`bellman_target`), lambda = 1
    the whole path's discounted return plus gamma^(T-t) V(s_T). For the soft value of T^{pi,q},
    pass soft rewards r_t - alpha (log q(a_t|s_t) - log pi(a_t|s_t)).

    Args:
        rewards: ``[T, B]`` (soft) rewards of steps 0..T-1.
        terminated: ``[T, B]`` bool, True where step t ended the episode (no bootstrap past it).
        values: ``[T+1, B]`` V(s_0)..V(s_T) (only s_1..s_T are used).
        gamma: discount; lam: lambda in [0, 1].

    Returns:
        ``[T, B]`` targets G_0..G_{T-1}.
    """
    horizon = rewards.shape[0]
    if values.shape[0] != horizon + 1:
        raise ValueError(
            f"values must have T + 1 = {horizon + 1} rows for T = {horizon} rewards, got {values.shape[0]}"
        )
    target = values[horizon]
    out = []
    for t in reversed(range(horizon)):
        cont = (~terminated[t]).to(rewards.dtype)
        target = rewards[t] + gamma * cont * ((1.0 - lam) * values[t + 1] + lam * target)
        out.append(target)
    return torch.stack(out[::-1])


def greedy_in_kl(q_values: torch.Tensor, log_prior: torch.Tensor, alpha: float) -> torch.Tensor:
    """The E-step of seed eq. (7): q(a|s) proportional to pi(a|s) exp(Q(s, a) / alpha), as probabilities."""
    return torch.softmax(log_prior + q_values / alpha, dim=-1)


def _log_prior(mdp: TabularMDP, prior: torch.Tensor | None) -> torch.Tensor:
    if prior is None:
        shape = (mdp.num_states, mdp.num_actions)
        return torch.full(shape, -math.log(mdp.num_actions), dtype=torch.float64, device=mdp.device)
    prior = torch.as_tensor(prior, dtype=torch.float64, device=mdp.device)
    if prior.shape != (mdp.num_states, mdp.num_actions):
        raise ValueError(
            f"prior must have shape [S, A] = [{mdp.num_states}, {mdp.num_actions}], got {tuple(prior.shape)}"
        )
    return torch.where(prior > 0, prior.log(), torch.full_like(prior, -torch.inf))


def bellman_operator(
    q_values: torch.Tensor,
    policy: torch.Tensor,
    mdp: TabularMDP,
    *,
    gamma: float,
    alpha: float,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """(T^{pi,q} Q)(s, a) with exact expectations over s' ~ P(.|s, a) and a' ~ q(.|s').

    Args:
        q_values: ``[S, A]`` action values Q in reward units.
        policy: ``[S, A]`` probabilities q(a|s).
        mdp: the finite MDP (entering a terminal state ends the episode: continuation 0).
        gamma: discount in (0, 1].
        alpha: temperature > 0.
        prior: ``[S, A]`` prior pi(a|s) (uniform if None).
    """
    log_pi = _log_prior(mdp, prior)
    value = soft_value_of_distribution(q_values.double(), policy.double(), log_pi, alpha)
    value = torch.where(mdp.terminal, torch.zeros_like(value), value)
    return mdp.reward.double() + gamma * torch.einsum("sat,t->sa", mdp.transition, value)


def policy_evaluation(
    policy: torch.Tensor, mdp: TabularMDP, *, gamma: float, alpha: float, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """The fixed point Q^q = T^{pi,q} Q^q in closed form (gamma < 1 or episodes that surely end).

    Q = R + gamma P (Pi_q Q - alpha k), with (Pi_q Q)(s) = sum_a q(a|s) Q(s, a) and k(s) =
    KL(q(.|s) || pi(.|s)), is linear in Q: solve (I - gamma P Pi_q) Q = R - gamma alpha P k.
    """
    S, A = mdp.num_states, mdp.num_actions
    q = policy.double()
    log_pi = _log_prior(mdp, prior)
    kl = soft_value_of_distribution(torch.zeros_like(q), q, log_pi, alpha) / -alpha  # KL(q || pi) per state
    alive = (~mdp.terminal).double()
    P = mdp.transition * alive  # continuation only into non-terminal states
    # (P Pi_q)[(s,a), (s',a')] = P(s'|s,a) q(a'|s')
    P_pi = torch.einsum("sat,tb->satb", P, q).reshape(S * A, S * A)
    rhs = mdp.reward.double().reshape(-1) - gamma * alpha * torch.einsum("sat,t->sa", P, kl).reshape(-1)
    system = torch.eye(S * A, dtype=torch.float64, device=mdp.device) - gamma * P_pi
    return torch.linalg.solve(system, rhs).reshape(S, A)
