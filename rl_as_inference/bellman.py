"""The KL-regularized action value and its Bellman operator T^{pi,q} (the seed's Q^q).

In reward units (the ELBO times alpha):

    Q^q(s, a) = r(s, a) + gamma * E_{s'} E_{a' ~ q}[ Q^q(s', a') - alpha * (log q(a'|s') - log pi(a'|s')) ]

The seed writes a ratio of logs inside the expectation; the correct term is the difference above.
With pi uniform the KL term is a negative entropy plus a constant and Q^q is SAC's soft Q. The
E-step of the source's eq. (7) has the closed form q(a|s) proportional to pi(a|s) exp(Q(s, a) / alpha)
(:func:`greedy_in_kl`), whose soft value is alpha * log sum_a pi(a|s) exp(Q(s, a) / alpha).

The batch functions here (:func:`soft_value_of_sample`, :func:`soft_value_of_distribution`,
:func:`bellman_target`, :func:`n_step_target`, :func:`retrace_target`, :func:`lambda_returns`)
build critic targets on any device; the tabular ones (:func:`bellman_operator`,
:func:`policy_evaluation`) apply T^{pi,q} with exact expectations on a finite MDP, as ground truth
for the tests. The three multi-step targets are one backward recursion over a path (cut where an
episode terminated, bootstrapped where it was truncated), so replay critics, V-MPO's unrolls and
segment SVI's TD(lambda) share one return calculator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rl_as_inference.envs import TabularMDP

__all__ = [
    "bellman_operator",
    "bellman_target",
    "greedy_in_kl",
    "lambda_returns",
    "n_step_target",
    "policy_evaluation",
    "retrace_target",
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


def _backward_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_values: torch.Tensor,
    gamma: float,
    continuation: Callable[[int, torch.Tensor], torch.Tensor],
    truncated: torch.Tensor | None,
) -> torch.Tensor:
    """The one backward recursion behind every multi-step target here.

    G_t = r_t + gamma (1 - terminated_t) B_t with B_t = V(s'_t) where step t was truncated, else
    ``continuation(t, G_{t+1})``; G_T := V(s'_{T-1}) = ``next_values[-1]`` (the value after the
    path's last step). ``continuation`` says how the return after step t goes on: G_{t+1} itself
    (n-step), mixed with V(s'_t) (TD(lambda)), or a trace-weighted correction (Retrace).
    A termination wins over a truncation (no bootstrap past the end of an episode).
    """
    returns = []
    following = next_values[-1]
    for t in reversed(range(rewards.shape[0])):
        bootstrap = continuation(t, following)
        if truncated is not None:
            bootstrap = torch.where(truncated[t], next_values[t], bootstrap)
        following = rewards[t] + gamma * (~terminated[t]).to(rewards.dtype) * bootstrap
        returns.append(following)
    return torch.stack(returns[::-1])


def _alive(terminated: torch.Tensor, truncated: torch.Tensor | None) -> torch.Tensor:
    """``[n, B]`` bool: step k belongs to the path's first episode (no step before k ended it)."""
    ended = terminated if truncated is None else terminated | truncated
    return torch.cat((torch.ones_like(ended[:1]), ~ended[:-1]), 0).cumprod(0).bool()


def _per_step(values: torch.Tensor, rewards: torch.Tensor, name: str) -> torch.Tensor:
    """``values`` as ``[n, B]`` next-state values: a ``[B]`` value after the path is broadcast."""
    if values.dim() == rewards.dim() - 1:
        return values.expand_as(rewards)
    if values.shape != rewards.shape:
        raise ValueError(
            f"{name} must have shape [B] or [n, B] = {list(rewards.shape)}, got {list(values.shape)}"
        )
    return values


def n_step_target(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    kl_penalties: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    *,
    truncated: torch.Tensor | None = None,
) -> torch.Tensor:
    """The n-step target of Q^q: a sampled path's return under T^{pi,q}, n times.

        y = sum_{k<m} gamma^k (r_k - [k > 0] alpha (log q(a_k|s_k) - log pi(a_k|s_k))) + gamma^m V(s_m)

    with m <= n the steps up to and including the first one that ended the episode: a termination
    cuts the return (no gamma^m V term), a truncation bootstraps from V of its true next state.
    Q conditions on a_0, so the first KL term is left out; the later ones are the KL inside
    T^{pi,q}, discounted like the rewards. With a_1..a_{n-1} drawn from q (on-policy paths) the
    expectation of y is (T^{pi,q})^n applied to V's Q, so the regression's fixed point is Q^q; with
    actions of an older policy it is not (see :func:`retrace_target`).

    Args:
        rewards: ``[n, B]`` rewards r_0..r_{n-1} along the sampled path.
        terminated: ``[n, B]`` bool, True where step k ended the episode (s'_k terminal).
        kl_penalties: ``[n, B]`` alpha (log q(a_k|s_k) - log pi(a_k|s_k)) of the path's actions under
            the current q; the first is ignored. Entries after the path's end are never used (and
            may be anything, non-finite included).
        bootstrap: soft value V(s'_k) = E_{a~q}[Q(s'_k, a) - alpha (log q - log pi)] of the state after
            a step: ``[B]``, the value after the path's last step (the first that ended the
            episode, else step n-1), or ``[n, B]``, one per step (only the last step's and the
            truncated steps' are used).
        gamma: discount.
        truncated: optional ``[n, B]`` bool, True where step k hit a time limit (bootstrap there);
            None: no truncations.

    Returns:
        ``[B]`` targets y.
    """
    n = rewards.shape[0]
    next_values = _per_step(bootstrap, rewards, "bootstrap")
    alive = _alive(terminated, truncated)
    penalties = torch.where(alive, kl_penalties, torch.zeros_like(kl_penalties))

    def continuation(t: int, following: torch.Tensor) -> torch.Tensor:
        return following - penalties[t + 1] if t + 1 < n else following

    return _backward_returns(rewards, terminated, next_values, gamma, continuation, truncated)[0]


def retrace_target(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    action_values: torch.Tensor,
    next_values: torch.Tensor,
    traces: torch.Tensor,
    gamma: float,
    *,
    truncated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Retrace (Munos et al. 2016) target of Q^q from a path of another policy mu, soft values.

        y = G_0,  G_k = r_k + gamma (1 - terminated_k) [ V(s'_k) + c_{k+1} (G_{k+1} - Q(s_{k+1}, a_{k+1})) ],

    G at the path's last step (and at a truncation) = r_k + gamma (1 - terminated_k) V(s'_k), with
    V(s) = E_{a~q}[Q(s, a) - alpha (log q(a|s) - log pi(a|s))] the soft value of T^{pi,q} and traces
    c_k = lambda min(1, q(a_k|s_k) / mu(a_k|s_k)). Unrolled, y = Q(s_0, a_0) + sum_k gamma^k
    (prod_{j=1..k} c_j) delta_k with delta_k = r_k + gamma V(s'_k) - Q(s_k, a_k). Whatever mu is, the
    expectation of every delta_k vanishes at Q = Q^q (the KL enters through V exactly), so Q^q is
    the fixed point; the truncated ratios keep the operator a gamma-contraction. c = 0 is the
    one-step target; c = 1 with a_k ~ q the n-step target with V's control variate.

    Args:
        rewards, terminated: ``[n, B]`` as in :func:`n_step_target`.
        action_values: ``[n, B]`` Q(s_k, a_k) of the path's actions (the first is not used).
        next_values: ``[n, B]`` V(s'_k) of each step's true next state (for k < n - 1 within the
            episode, s'_k = s_{k+1}).
        traces: ``[n, B]`` c_k (the first is not used).
        gamma: discount.
        truncated: optional ``[n, B]`` bool time-limit flags (bootstrap from V(s'_k) there).

    Returns:
        ``[B]`` targets y.
    """
    n = rewards.shape[0]
    alive = _alive(terminated, truncated)
    zeros = torch.zeros_like(rewards)
    traces = torch.where(alive, traces, zeros)  # entries past the path's end are never used
    action_values = torch.where(alive, action_values, zeros)

    def continuation(t: int, following: torch.Tensor) -> torch.Tensor:
        if t + 1 == n:
            return following  # G_n := V(s'_{n-1})
        return next_values[t] + traces[t + 1] * (following - action_values[t + 1])

    return _backward_returns(rewards, terminated, next_values, gamma, continuation, truncated)[0]


def lambda_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    values: torch.Tensor,
    gamma: float,
    lam: float,
    *,
    truncated: torch.Tensor | None = None,
) -> torch.Tensor:
    """TD(lambda) targets of a state value along on-policy paths, cut at termination.

    G_t = r_t + gamma (1 - terminated_t) ((1 - lambda) V(s_{t+1}) + lambda G_{t+1}), G_T = V(s_T):
    lambda = 0 is the one-step target r_t + gamma V(s_{t+1}) (:func:`bellman_target`), lambda = 1
    the whole path's discounted return plus gamma^(T-t) V(s_T) (the n-step returns of an unroll).
    Where step t was truncated (a time limit), G_t = r_t + gamma V(s_{t+1}): the return does not
    run into the next episode. For the soft value of T^{pi,q}, pass soft rewards
    r_t - alpha (log q(a_t|s_t) - log pi(a_t|s_t)).

    Args:
        rewards: ``[T, B]`` (soft) rewards of steps 0..T-1.
        terminated: ``[T, B]`` bool, True where step t ended the episode (no bootstrap past it).
        values: ``[T+1, B]`` V(s_0)..V(s_T), s_{t+1} the true next state of step t (at a truncation
            the episode's last state, not the reset); only s_1..s_T are used.
        gamma: discount; lam: lambda in [0, 1].
        truncated: optional ``[T, B]`` bool, True where step t hit a time limit (a termination at
            the same step wins); None: no truncations.

    Returns:
        ``[T, B]`` targets G_0..G_{T-1}.
    """
    horizon = rewards.shape[0]
    if values.shape[0] != horizon + 1:
        raise ValueError(
            f"values must have T + 1 = {horizon + 1} rows for T = {horizon} rewards, got {values.shape[0]}"
        )
    next_values = values[1:]

    def continuation(t: int, following: torch.Tensor) -> torch.Tensor:
        if lam == 1.0:
            return following
        return (1.0 - lam) * next_values[t] + lam * following

    return _backward_returns(rewards, terminated, next_values, gamma, continuation, truncated)


def greedy_in_kl(q_values: torch.Tensor, log_prior: torch.Tensor, alpha: float) -> torch.Tensor:
    """The E-step of the source's eq. (7): q(a|s) proportional to pi(a|s) exp(Q(s, a) / alpha), as probabilities."""
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
