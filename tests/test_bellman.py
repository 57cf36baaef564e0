"""T^{pi,q} on finite MDPs: fixed point, the finite-horizon link to exact.solve, batch targets."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from rl_as_inference import bellman, critics, envs, exact

F64 = torch.float64


def random_policy(mdp, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(mdp.num_states, mdp.num_actions, generator=gen, dtype=F64), -1)


@pytest.mark.parametrize(
    "make", [lambda: envs.random_mdp(6, 3, seed=0), lambda: envs.gridworld(3, 3, slip=0.2)]
)
@pytest.mark.parametrize("use_prior", [False, True])
def test_iterating_the_operator_converges_to_the_closed_form_fixed_point(make, use_prior):
    mdp = make()
    q = random_policy(mdp, 1)
    prior = random_policy(mdp, 2) if use_prior else None
    gamma, alpha = 0.9, 0.5
    fixed = bellman.policy_evaluation(q, mdp, gamma=gamma, alpha=alpha, prior=prior)
    Q = torch.zeros(mdp.num_states, mdp.num_actions, dtype=F64)
    for _ in range(400):  # a gamma-contraction: error <= 0.9^400 * |Q*| ~ 1e-18 |Q*|
        Q = bellman.bellman_operator(Q, q, mdp, gamma=gamma, alpha=alpha, prior=prior)
    torch.testing.assert_close(Q, fixed, rtol=1e-10, atol=1e-10)
    # And the fixed point really is one.
    again = bellman.bellman_operator(fixed, q, mdp, gamma=gamma, alpha=alpha, prior=prior)
    torch.testing.assert_close(again, fixed, rtol=1e-10, atol=1e-10)


def test_soft_value_at_the_fixed_point_is_alpha_times_the_trajectory_elbo():
    # V^q(s_0) = E_q[sum_t gamma^t (r_t - alpha KL_t)] discounts the KL terms like the rewards; with
    # gamma = 1 on episodes that end it is alpha times the trajectory ELBO (whose KL is undiscounted).
    mdp = envs.gridworld(2, 3, goal=(1, 2), slip=0.0)
    q = random_policy(mdp, 3)
    alpha = 0.7
    Q = bellman.policy_evaluation(q, mdp, gamma=1.0, alpha=alpha)
    log_pi = torch.full_like(q, -math.log(mdp.num_actions))
    V = bellman.soft_value_of_distribution(Q, q, log_pi, alpha)
    horizon = 3000  # long enough that the mass of unfinished episodes is negligible (at 200 it was not)
    elbo = exact.elbo_of(mdp, q.expand(horizon, -1, -1), horizon=horizon, alpha=alpha, gamma=1.0)
    assert (mdp.initial * V).sum().item() == pytest.approx(alpha * elbo, rel=1e-6)


@pytest.mark.parametrize("use_prior", [False, True])
def test_greedy_in_kl_backward_recursion_equals_exact_solve(use_prior):
    mdp = envs.random_mdp(5, 3, seed=4)
    prior = random_policy(mdp, 5) if use_prior else None
    log_pi = bellman._log_prior(mdp, prior)
    horizon, alpha = 6, 0.4
    # Undiscounted finite horizon: Q_t = T^{pi,q_{t+1}} Q_{t+1} with q_t greedy in KL at every step.
    V = torch.zeros(mdp.num_states, dtype=F64)
    policies = []
    for _ in range(horizon):
        Q = mdp.reward.double() + torch.einsum("sat,t->sa", mdp.transition, V)
        q = bellman.greedy_in_kl(Q, log_pi, alpha)
        V = bellman.soft_value_of_distribution(Q, q, log_pi, alpha)
        policies.append(q)
    policies = torch.stack(policies[::-1])
    solution = exact.solve(mdp, horizon=horizon, alpha=alpha, gamma=1.0, prior=prior)
    torch.testing.assert_close(policies, solution.policy, rtol=1e-9, atol=1e-12)
    # The soft value of the greedy policy is alpha log sum_a pi exp(Q / alpha): exact.solve's V in nats.
    assert (mdp.initial * V).sum().item() == pytest.approx(alpha * solution.elbo, rel=1e-9)


def test_batch_targets():
    r = torch.tensor([1.0, 2.0])
    done = torch.tensor([False, True])
    v = torch.tensor([10.0, 10.0])
    assert bellman.bellman_target(r, done, v, 0.9).tolist() == pytest.approx([10.0, 2.0])
    q_values, log_q, log_pi = torch.tensor([3.0]), torch.tensor([-1.0]), torch.tensor([-2.0])
    assert bellman.soft_value_of_sample(q_values, log_q, log_pi, 0.5).item() == pytest.approx(2.5)
    # n-step: r0 + g (r1 - pen1) + g^2 V, stopping at termination.
    rewards = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    term = torch.tensor([[False, True], [False, False]])
    pen = torch.tensor([[9.0, 9.0], [0.5, 0.5]])
    out = bellman.n_step_target(rewards, term, pen, torch.tensor([4.0, 4.0]), 0.5)
    assert out.tolist() == pytest.approx([1.0 + 0.5 * (2.0 - 0.5 + 0.5 * 4.0), 1.0])
    # The exact soft value over a distribution matches the mean of one-sample estimates.
    probs = torch.tensor([0.2, 0.8], dtype=F64)
    Q = torch.tensor([1.0, -1.0], dtype=F64)
    lp = torch.log(torch.tensor([0.5, 0.5], dtype=F64))
    exact_v = bellman.soft_value_of_distribution(Q, probs, lp, 0.3)
    manual = sum(
        p * (qv - 0.3 * (math.log(p) - math.log(0.5))) for p, qv in zip([0.2, 0.8], [1.0, -1.0], strict=True)
    )
    assert exact_v.item() == pytest.approx(manual)


def test_prior_shape_is_checked():
    mdp = envs.chain(3)
    with pytest.raises(ValueError, match=r"prior must have shape \[S, A\] = \[3, 2\]"):
        bellman.bellman_operator(
            torch.zeros(3, 2), torch.full((3, 2), 0.5), mdp, gamma=0.9, alpha=1.0, prior=torch.ones(2, 2)
        )


# ---------------------------------------------------------------------- n-step targets, exactly
def _mdp_with_a_terminal_state():
    base = envs.random_mdp(3, 2, seed=5)
    return envs.TabularMDP(base.transition, base.reward, base.initial, terminal=[False, False, True])


def _paths(mdp, behaviour, n):
    """Every n-step path from every (s_0, a_0), a_k ~ behaviour for k >= 1, with its probability.

    Returns obs, action, next state ``[n, P]`` and weights ``[P]``, the paths of each (s_0, a_0)
    contiguous (in the order s_0 * A + a_0), so that weights times targets summed per block are
    exact expectations.
    """
    S, A = mdp.num_states, mdp.num_actions
    obs, act, nxt = [torch.arange(S).repeat_interleave(A)], [torch.arange(A).repeat(S)], []
    weight = torch.ones(S * A, dtype=F64)
    for k in range(n):
        s_next = torch.arange(S).repeat(len(weight))
        weight = (
            weight.repeat_interleave(S)
            * mdp.transition[obs[-1].repeat_interleave(S), act[-1].repeat_interleave(S), s_next]
        )
        obs = [x.repeat_interleave(S) for x in obs]
        act = [x.repeat_interleave(S) for x in act]
        nxt = [*[x.repeat_interleave(S) for x in nxt], s_next]
        if k < n - 1:
            a_next = torch.arange(A).repeat(len(weight))
            weight = weight.repeat_interleave(A) * behaviour[s_next.repeat_interleave(A), a_next]
            obs = [*[x.repeat_interleave(A) for x in obs], s_next.repeat_interleave(A)]
            act = [*[x.repeat_interleave(A) for x in act], a_next]
            nxt = [x.repeat_interleave(A) for x in nxt]
    return torch.stack(obs), torch.stack(act), torch.stack(nxt), weight


def _expected_target(Q, mdp, paths, q, log_prior, log_mu, *, gamma, alpha, correction, lam=1.0, tables=False):
    """E[y | s_0, a_0] of critics.n_step_soft_target (``tables``: critics.n_step_discrete_soft_target)
    over the enumerated paths: one application of the n-step operator with exact expectations."""
    obs, act, nxt, weight = paths
    V = bellman.soft_value_of_distribution(Q, q, log_prior, alpha)
    terminated = mdp.terminal[nxt]
    alive = torch.cat((torch.ones_like(terminated[:1]), ~terminated[:-1])).cumprod(0).bool()
    path = {
        "obs": obs,
        "action": act,
        "reward": mdp.reward.double()[obs, act],
        "next_obs": nxt,
        "terminated": terminated,
        "truncated": torch.zeros_like(terminated),
        "behaviour_log_prob": log_mu[obs, act],
    }
    batch = {"path": path, "last": alive.sum(0) - 1}
    log_pi = lambda o, a: log_prior[o] if a is None else log_prior[o, a]  # noqa: E731
    if tables:
        y = critics.n_step_discrete_soft_target(
            batch,
            gamma=gamma,
            alpha=alpha,
            tables=lambda o: (Q[o], q[o].log()),
            log_pi=log_pi,
            correction=correction,
            trace_lambda=lam,
        )
    else:
        y = critics.n_step_soft_target(
            batch,
            gamma=gamma,
            alpha=alpha,
            policy=lambda o: Categorical(probs=q[o]),
            log_pi=log_pi,
            soft_value=lambda o: V[o],
            action_value=lambda o, a: Q[o, a],
            correction=correction,
            trace_lambda=lam,
        )
    return (weight * y).reshape(mdp.num_states * mdp.num_actions, -1).sum(-1).reshape(Q.shape)


def _iterate(mdp, n, *, behaviour=None, correction="none", lam=1.0, kl_terms=True, tables=False):
    """Q <- E[y] from Q = 0 until it stops moving; returns (Q, the closed-form Q^q)."""
    gamma, alpha = 0.9, 0.5
    q, prior = random_policy(mdp, 1), random_policy(mdp, 2)
    mu = q if behaviour is None else behaviour
    paths = _paths(mdp, mu, n)
    Q = torch.zeros(mdp.num_states, mdp.num_actions, dtype=F64)
    for _ in range(1000):
        # kl_terms=False is the former rewards-only target: the same paths with alpha = 0 inside,
        # the KL of q only in the bootstrap V
        new = _expected_target(
            Q,
            mdp,
            paths,
            q,
            prior.log(),
            mu.log(),
            gamma=gamma,
            alpha=alpha,
            correction=correction,
            lam=lam,
            tables=tables,
        )
        if not kl_terms:
            V = bellman.soft_value_of_distribution(Q, q, prior.log(), alpha)
            obs, act, nxt, weight = paths
            term = mdp.terminal[nxt]
            y = bellman.n_step_target(
                mdp.reward.double()[obs, act], term, torch.zeros_like(term, dtype=F64), V[nxt[-1]], gamma
            )
            new = (weight * y).reshape(-1, len(weight) // Q.numel()).sum(-1).reshape(Q.shape)
        done = (new - Q).abs().max() < 1e-10  # a gamma-contraction: then |Q - Q*| < 1e-9
        Q = new
        if done:
            break
    return Q, bellman.policy_evaluation(q, mdp, gamma=gamma, alpha=alpha, prior=prior)


MDPS = {"random": lambda: envs.random_mdp(3, 2, seed=0), "terminal": _mdp_with_a_terminal_state}


ROUTES = {"callables": False, "action tables": True}  # n_step_soft_target, n_step_discrete_soft_target


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("mdp_name", list(MDPS))
@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_step_target_on_policy_paths_has_the_fixed_point_q_of_q(mdp_name, n, route):
    # the regression target of every replay critic: with a_1..a_{n-1} ~ q its expectation is
    # (T^{pi,q})^n, so iterating it reaches Q^q (prior pi not uniform: the KL terms matter)
    Q, fixed = _iterate(MDPS[mdp_name](), n, tables=ROUTES[route])
    torch.testing.assert_close(Q, fixed, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [3, 5])
def test_rewards_only_n_step_target_misses_q_of_q(n):
    # the former target (rewards summed, no KL terms along the path) has another fixed point
    Q, fixed = _iterate(MDPS["random"](), n, kl_terms=False)
    assert (Q - fixed).abs().max() > 0.1 * fixed.abs().max()


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("mdp_name", list(MDPS))
@pytest.mark.parametrize("n, lam", [(1, 1.0), (3, 1.0), (5, 1.0), (3, 0.5)])
def test_retrace_from_another_policy_has_the_fixed_point_q_of_q(mdp_name, n, lam, route):
    mdp = MDPS[mdp_name]()
    behaviour = torch.softmax(2 * random_policy(mdp, 7).log(), -1)  # far from q
    Q, fixed = _iterate(mdp, n, behaviour=behaviour, correction="retrace", lam=lam, tables=ROUTES[route])
    torch.testing.assert_close(Q, fixed, atol=1e-6, rtol=0)
    if n > 1:  # the uncorrected target on the same paths does not get there
        Q, _ = _iterate(mdp, n, behaviour=behaviour, tables=ROUTES[route])
        assert (Q - fixed).abs().max() > 0.1 * fixed.abs().max()


# ---------------------------------------------------------------------- truncation flags
def _walk(rewards, terminated, truncated, next_values, gamma, b, step_term):
    """Path b's return by brute force: ``step_term(k, discount)`` adds what step k > 0 contributes
    besides its reward; stops at a termination (no bootstrap), bootstraps at a truncation or the
    last step."""
    total, discount = 0.0, 1.0
    for k in range(rewards.shape[0]):
        if k > 0:
            total += step_term(k, discount)
        total += discount * float(rewards[k, b])
        if terminated[k, b]:
            return total
        if truncated[k, b] or k == rewards.shape[0] - 1:
            return total + discount * gamma * float(next_values[k, b])
        discount *= gamma
    raise AssertionError("unreachable")


def _random_path(seed, n=7, b=9):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, b, generator=g, dtype=F64)
    terminated = torch.rand(n, b, generator=g) < 0.15
    truncated = torch.rand(n, b, generator=g) < 0.15
    terminated[2, 0] = truncated[2, 0] = True  # both at once: termination wins
    return rewards, terminated, truncated, g


def test_n_step_target_with_truncations_matches_a_brute_force_walk():
    rewards, terminated, truncated, g = _random_path(0)
    n, b = rewards.shape
    penalties = torch.randn(n, b, generator=g, dtype=F64)
    next_values = torch.randn(n, b, generator=g, dtype=F64)
    got = bellman.n_step_target(rewards, terminated, penalties, next_values, 0.9, truncated=truncated)
    want = []
    for i in range(b):
        pen = penalties[:, i]
        want.append(
            _walk(rewards, terminated, truncated, next_values, 0.9, i, lambda k, d, p=pen: -d * float(p[k]))
        )
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-12)
    # a [B] bootstrap is the value after the path's last step; past the end nothing is used, even NaN
    ended = terminated | truncated
    last = torch.cat((torch.ones_like(ended[:1]), ~ended[:-1])).cumprod(0).sum(0) - 1
    garbage = penalties.clone()
    garbage[torch.arange(n)[:, None] > last] = math.nan
    one = bellman.n_step_target(
        rewards, terminated, garbage, next_values[last, torch.arange(b)], 0.9, truncated=truncated
    )
    torch.testing.assert_close(one, got, rtol=1e-12, atol=1e-12)


def test_retrace_target_with_truncations_matches_its_unrolled_sum():
    # y = Q(s_0, a_0) + sum_k gamma^k (prod_{j=1..k} c_j) delta_k over the path's steps, delta_k =
    # r_k + gamma (1 - terminated_k) V(s'_k) - Q(s_k, a_k)
    rewards, terminated, truncated, g = _random_path(1)
    n, b = rewards.shape
    q_values = torch.randn(n, b, generator=g, dtype=F64)
    next_values = torch.randn(n, b, generator=g, dtype=F64)
    traces = torch.rand(n, b, generator=g, dtype=F64)
    got = bellman.retrace_target(rewards, terminated, q_values, next_values, traces, 0.9, truncated=truncated)
    for i in range(b):
        total, weight = float(q_values[0, i]), 1.0
        for k in range(n):
            if k > 0:
                weight *= 0.9 * float(traces[k, i])
            cont = 0.0 if terminated[k, i] else 1.0
            total += weight * (
                float(rewards[k, i]) + 0.9 * cont * float(next_values[k, i]) - float(q_values[k, i])
            )
            if terminated[k, i] or truncated[k, i]:
                break
        assert float(got[i]) == pytest.approx(total, rel=1e-10, abs=1e-10)
    # zero traces: the one-step target
    one = bellman.retrace_target(rewards, terminated, q_values, next_values, 0 * traces, 0.9)
    torch.testing.assert_close(one, bellman.bellman_target(rewards[0], terminated[0], next_values[0], 0.9))


@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_lambda_returns_with_truncations_bootstrap_there(lam):
    rewards, terminated, truncated, g = _random_path(2)
    n, b = rewards.shape
    values = torch.randn(n + 1, b, generator=g, dtype=F64)
    got = bellman.lambda_returns(rewards, terminated, values, 0.9, lam, truncated=truncated)
    # the lambda-return of each step from its n-step returns, each cut at the first episode end
    for i in range(b):
        for t in range(n):
            ended = next((k for k in range(t, n) if terminated[k, i] or truncated[k, i]), n - 1)
            horizon = ended - t + 1

            def g_n(m, t=t, i=i):  # the m-step return, bootstrapped from V(s'_{t+m-1})
                total, discount = 0.0, 1.0
                for k in range(t, t + m):
                    total += discount * float(rewards[k, i])
                    discount *= 0.9
                if terminated[t + m - 1, i]:
                    return total
                return total + discount * float(values[t + m, i])

            want = sum((1 - lam) * lam ** (m - 1) * g_n(m) for m in range(1, horizon))
            want += lam ** (horizon - 1) * g_n(horizon)
            assert float(got[t, i]) == pytest.approx(want, rel=1e-10, abs=1e-10)
