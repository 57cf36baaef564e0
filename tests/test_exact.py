"""Exact inference on finite MDPs against brute-force enumeration, Pyro's TraceEnum_ELBO and dense references."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.ops.indexing import Vindex

from rl_as_inference import envs, exact

# ---------------------------------------------------------------------- tiny MDPs and brute force
ZERO_PRIOR = np.array([[0.7, 0.3], [1.0, 0.0], [0.2, 0.8]])  # pi0(a=1 | s=1) = 0


def tiny_mdp(*, deterministic: bool, terminal: bool, seed: int = 0) -> envs.TabularMDP:
    """S=3, A=2. With ``terminal``, state 2 is terminal but NOT absorbing and p0(2) > 0, so the tests
    see that s_0 is alive even when terminal and that entering state 2 later ends the episode."""
    base = envs.random_mdp(3, 2, seed=seed, deterministic=deterministic)
    p0 = np.array([0.5, 0.2, 0.3])
    term = np.array([False, False, True]) if terminal else None
    return envs.TabularMDP(base.transition, base.reward, p0, terminal=term)


def trajectories(mdp: envs.TabularMDP, T: int):
    """Every (states, actions) whose episode is alive at each of its steps; it stops at T or on entering
    a terminal state (the state is then frozen and nothing more is counted)."""
    S, A = mdp.num_states, mdp.num_actions
    P = mdp.transition.cpu().numpy()
    term = mdp.terminal.cpu().numpy()

    def extend(states, actions):
        t = len(actions)
        if t == T or (t >= 1 and term[states[-1]]):
            yield states, actions
            return
        for a in range(A):
            for s2 in range(S):
                if P[states[-1], a, s2] > 0:
                    yield from extend(states + [s2], actions + [a])

    for s0 in range(S):
        yield from extend([s0], [])


def death_times(T: int, gamma: float):
    """(d, p(D = d)) of the absorbing construction: step 0 is always taken, and after each step the
    episode goes on with probability gamma, so D = d steps are taken with probability
    gamma^(d-1) (1 - gamma) for d < T and gamma^(T-1) for d = T."""
    out = [(d, gamma ** (d - 1) * (1 - gamma)) for d in range(1, T)] + [(T, gamma ** (T - 1))]
    assert math.isclose(sum(p for _, p in out), 1.0, rel_tol=1e-14)
    return [(d, p) for d, p in out if p > 0]


def brute_log_evidence(mdp, T, alpha, gamma, prior) -> float:
    """log sum over D and every trajectory of D steps of p(D) p0 prod pi0 P exp(sum R / alpha)."""
    P, R = mdp.transition.cpu().numpy(), mdp.reward.double().cpu().numpy()
    p0 = mdp.initial.cpu().numpy()
    with np.errstate(divide="ignore"):
        terms = []
        for d, p_d in death_times(T, gamma):
            for states, actions in trajectories(mdp, d):
                lp = math.log(p_d) + (math.log(p0[states[0]]) if p0[states[0]] > 0 else -math.inf)
                for t, a in enumerate(actions):
                    s, s2 = states[t], states[t + 1]
                    lp += np.log(prior[s, a]) + math.log(P[s, a, s2]) + R[s, a] / alpha
                terms.append(lp)
    return float(np.logaddexp.reduce(np.array(terms)))


def brute_elbo(mdp, q, T, alpha, gamma, prior) -> float:
    """E_{q, D}[log p(tau, D, O) - log q(tau, D)] over D and every trajectory of D steps: the
    dynamics and p(D) cancel, leaving sum_{t < D} (R / alpha + log pi0 - log q)."""
    P, R = mdp.transition.cpu().numpy(), mdp.reward.double().cpu().numpy()
    p0 = mdp.initial.cpu().numpy()
    total = 0.0
    for d, p_d in death_times(T, gamma):
        for states, actions in trajectories(mdp, d):
            steps = list(zip(range(len(actions)), states, actions, states[1:], strict=False))
            prob = p_d * p0[states[0]] * math.prod(q[t, s, a] * P[s, a, s2] for t, s, a, s2 in steps)
            if prob > 0:  # q(tau) = 0 contributes nothing, whatever log pi0 is there
                inner = sum(R[s, a] / alpha - math.log(q[t, s, a] / prior[s, a]) for t, s, a, _ in steps)
                total += prob * inner
    return total


def brute_log_evidence_undiscounted(mdp, T, alpha, prior) -> float:
    """The model without a death time at all: log sum_tau p0 prod pi0 P exp(sum R / alpha)."""
    P, R = mdp.transition.cpu().numpy(), mdp.reward.double().cpu().numpy()
    p0 = mdp.initial.cpu().numpy()
    total = 0.0
    for states, actions in trajectories(mdp, T):
        steps = list(zip(states, actions, states[1:], strict=False))
        total += p0[states[0]] * math.prod(
            prior[s, a] * P[s, a, s2] * math.exp(R[s, a] / alpha) for s, a, s2 in steps
        )
    return math.log(total)


def random_policy(rng, T, prior) -> np.ndarray:
    """A random policy on the support of the prior."""
    q = rng.dirichlet(np.ones(prior.shape[1]), size=(T, prior.shape[0])) * (prior > 0)
    return q / q.sum(-1, keepdims=True)


CASES = list(
    itertools.product([False, True], [False, True], [None, "zeros"], [1.0, 0.9, 0.7])
)  # deterministic, terminal, prior, gamma
CASE_IDS = [
    f"{'det' if d else 'stoch'}-{'term' if t else 'noterm'}-{p or 'uniform'}-g{g}" for d, t, p, g in CASES
]


def setup_case(case):
    deterministic, terminal, prior, gamma = case
    mdp = tiny_mdp(deterministic=deterministic, terminal=terminal, seed=3)
    table = np.full((3, 2), 0.5) if prior is None else ZERO_PRIOR
    return mdp, prior if prior is None else ZERO_PRIOR, table, gamma


# ---------------------------------------------------------------------- brute force
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_log_evidence_equals_enumeration(case):
    mdp, prior, table, gamma = setup_case(case)
    # alpha = 1e-4: messages span ~1e4 nats, so the shifted row sums underflow and take the exact path.
    for T, alpha in [(1, 1.0), (3, 0.7), (4, 0.7), (3, 1e-4)]:
        want = brute_log_evidence(mdp, T, alpha, gamma, table)
        sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
        assert sol.log_evidence == pytest.approx(want, rel=1e-13, abs=1e-12)
        assert exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior) == sol.log_evidence


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_elbo_of_equals_enumeration(case):
    mdp, prior, table, gamma = setup_case(case)
    rng = np.random.default_rng(1)
    alpha = 0.7
    for T in (3, 4):
        for _ in range(3):
            q = random_policy(rng, T, table)  # time-dependent
            want = brute_elbo(mdp, q, T, alpha, gamma, table)
            got = exact.elbo_of(mdp, q, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
            assert got == pytest.approx(want, abs=1e-12)
        sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
        assert brute_elbo(mdp, sol.policy.numpy(), T, alpha, gamma, table) == pytest.approx(
            sol.elbo, abs=1e-12
        )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_optimal_policy_attains_the_best_elbo_and_no_perturbation_beats_it(case):
    mdp, prior, table, gamma = setup_case(case)
    T, alpha = 3, 0.7
    sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
    assert exact.elbo_of(mdp, sol.policy, horizon=T, alpha=alpha, gamma=gamma, prior=prior) == pytest.approx(
        sol.elbo, abs=1e-12
    )
    assert sol.log_evidence >= sol.elbo - 1e-12
    rng = np.random.default_rng(2)
    best = sol.policy.numpy()
    for eps in [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0]:
        for _ in range(8):
            q = (1 - eps) * best + eps * random_policy(rng, T, table)
            assert exact.elbo_of(mdp, q, horizon=T, alpha=alpha, gamma=gamma, prior=prior) <= sol.elbo + 1e-12
    # Mass on an action the prior forbids at a reachable state costs an infinite KL.
    if prior is not None:
        q = best.copy()
        q[0, 1] = [0.5, 0.5]  # p0(1) > 0, pi0(1 | 1) = 0
        assert exact.elbo_of(mdp, q, horizon=T, alpha=alpha, gamma=gamma, prior=prior) == -math.inf


def test_forbidden_action_at_an_unreachable_state_costs_nothing():
    P = np.zeros((3, 2, 3))
    P[:, :, 0] = 1.0  # everything goes to state 0
    R = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mdp = envs.TabularMDP(P, R, [1.0, 0.0, 0.0])
    q = np.tile(ZERO_PRIOR, (2, 1, 1))
    q[:, 1] = [0.0, 1.0]  # forbidden by the prior, but state 1 is never reached
    got = exact.elbo_of(mdp, q, horizon=2, alpha=1.0, prior=ZERO_PRIOR)
    assert math.isfinite(got)
    assert got == pytest.approx(brute_elbo(mdp, q, 2, 1.0, 1.0, ZERO_PRIOR), abs=1e-12)


# ---------------------------------------------------------------------- the discount as a death time
def test_gamma_one_is_the_undiscounted_model():
    """gamma = 1 (the default) never dies early: the values are those of the model without a death time."""
    rng = np.random.default_rng(4)
    for deterministic, terminal in itertools.product([False, True], [False, True]):
        mdp = tiny_mdp(deterministic=deterministic, terminal=terminal, seed=3)
        for T, alpha in [(1, 1.0), (3, 0.7), (4, 0.3)]:
            want = brute_log_evidence_undiscounted(mdp, T, alpha, np.full((3, 2), 0.5))
            assert exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=1.0) == pytest.approx(
                want, rel=1e-13, abs=1e-12
            )
            sol, default = (
                exact.solve(mdp, horizon=T, alpha=alpha, gamma=1.0),
                exact.solve(mdp, horizon=T, alpha=alpha),
            )
            assert (sol.log_evidence, sol.elbo) == (default.log_evidence, default.elbo)
            q = random_policy(rng, T, np.full((3, 2), 0.5))
            assert exact.elbo_of(mdp, q, horizon=T, alpha=alpha) == pytest.approx(
                brute_elbo(mdp, q, T, alpha, 1.0, np.full((3, 2), 0.5)), abs=1e-12
            )
    # Values of the implementation before the discount became a death time (it weighted the rewards
    # by gamma^t, which is the same at gamma = 1).
    sol = exact.solve(tiny_mdp(deterministic=False, terminal=True, seed=3), horizon=4, alpha=0.7)
    assert (sol.log_evidence, sol.elbo) == pytest.approx((2.136696644928587, 0.28546743934720503), rel=1e-12)
    sol = exact.solve(envs.gridworld(3, 3, slip=0.2), horizon=6, alpha=0.7)
    assert (sol.log_evidence, sol.elbo) == pytest.approx((-8.185211626452817, -8.334120317762496), rel=1e-12)


def test_one_state_optimal_policy_is_time_homogeneous():
    """One state, two actions, a self loop: every q*_t is the stationary soft-optimal policy.

    V = log sum_a pi0(a) exp(R(a)/alpha + gamma V) has the fixed point V* = c / (1 - gamma) with
    c = log sum_a pi0(a) exp(R(a)/alpha), so q*(a) = pi0(a) exp(R(a)/alpha + gamma V* - V*) =
    pi0(a) exp(R(a)/alpha - c), and V_t = c (1 - gamma^(T-t)) / (1 - gamma). (Weighting the reward by
    gamma^t instead gave q*_0(0) = 0.881 but q*_199(0) = 0.567.)
    """
    mdp = envs.TabularMDP(np.ones((1, 2, 1)), [[1.0, 0.0]], [1.0], dtype=torch.float64)
    T, alpha, gamma = 200, 0.5, 0.99
    sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma)
    c = math.log((math.exp(1.0 / alpha) + 1.0) / 2)
    v_star = c / (1 - gamma)
    q_star = 0.5 * math.exp(1.0 / alpha + gamma * v_star - v_star)
    assert q_star == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-14)  # 0.8808
    assert sol.policy[0, 0, 0].item() == pytest.approx(q_star, abs=1e-8)
    torch.testing.assert_close(
        sol.policy[:, 0, 0], torch.full((T,), q_star, dtype=torch.float64), rtol=0, atol=1e-8
    )
    want = torch.tensor([c * (1 - gamma ** (T - t)) / (1 - gamma) for t in range(T + 1)], dtype=torch.float64)
    torch.testing.assert_close(sol.values[:, 0], want, rtol=1e-12, atol=1e-12)
    assert sol.elbo == pytest.approx(want[0].item(), rel=1e-12)
    assert exact.elbo_of(mdp, sol.policy, horizon=T, alpha=alpha, gamma=gamma) == pytest.approx(
        sol.elbo, rel=1e-12
    )


def bellman_cases():
    stoch = envs.random_mdp(6, 3, seed=5, branching=3)
    yield "stochastic", stoch
    yield "stochastic-terminal", with_terminal(stoch, [1, 4])  # p0 > 0 on them: s_0 may be terminal
    yield "gridworld-slip-goal", envs.gridworld(3, 3, slip=0.2, walls=[(1, 1)], goal_reward=5.0)


@pytest.mark.parametrize("name", ["stochastic", "stochastic-terminal", "gridworld-slip-goal"])
def test_long_horizon_q_values_are_the_soft_bellman_fixed_point(name):
    """alpha Q_0 of a long discounted horizon is the soft-optimal action value of bellman.py: the
    fixed point of T^{pi,q} under q = q*_0, which is itself soft-greedy in it."""
    from rl_as_inference import bellman

    mdp = dict(bellman_cases())[name]
    S, A = mdp.num_states, mdp.num_actions
    prior = torch.as_tensor(np.random.default_rng(7).dirichlet(np.ones(A), size=S))
    T, alpha, gamma = 2000, 0.5, 0.9
    sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
    Q, q = alpha * sol.q_values[0], sol.policy[0]
    assert Q.abs().max() > 1.0  # not trivially small
    again = bellman.bellman_operator(Q, q, mdp, gamma=gamma, alpha=alpha, prior=prior)
    torch.testing.assert_close(again, Q, rtol=0, atol=1e-8)
    torch.testing.assert_close(
        bellman.policy_evaluation(q, mdp, gamma=gamma, alpha=alpha, prior=prior), Q, rtol=0, atol=1e-8
    )
    torch.testing.assert_close(bellman.greedy_in_kl(Q, prior.log(), alpha), q, rtol=0, atol=1e-12)
    # Far from the end the policy no longer depends on t.
    torch.testing.assert_close(sol.policy[T // 2], q, rtol=0, atol=1e-12)


def test_underflow_check_covers_every_step_that_can_underflow():
    """Where _steps_to_check says a step needs no check, the messages it reads span <= _SAFE_RANGE nats,
    and for gamma < 1 the messages stay above min R / alpha + log(1 - gamma)."""
    for seed, gamma, alpha, term in itertools.product(
        range(2), [1.0, 0.9, 0.3], [1.0, 0.03, 1e-3], [False, True]
    ):
        mdp = envs.random_mdp(12, 3, seed=seed, branching=2, reward_scale=10.0)
        if term:
            mdp = with_terminal(mdp, [2, 5])
        T = 25
        R = mdp.reward.double()
        check, has_terminal = exact._steps_to_check(R, mdp.terminal, alpha, gamma, T)
        assert has_terminal == term
        sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma)
        B = sol.log_messages
        for t in range(T):
            b = B[t + 1].masked_fill(mdp.terminal, 0.0)
            if not check[t]:
                assert (b.max() - b.min()).item() <= exact._SAFE_RANGE
        if gamma < 1:
            assert (B[:T] >= R.min() / alpha + math.log1p(-gamma) - 1e-9 * abs(R.min() / alpha)).all()
        assert torch.isfinite(B).all()


# ---------------------------------------------------------------------- structure of the solution
def test_solution_fields_and_identities():
    mdp = tiny_mdp(deterministic=False, terminal=True)
    T = 4
    sol = exact.solve(mdp, horizon=T, alpha=0.5, gamma=0.9, prior=ZERO_PRIOR)
    assert (sol.horizon, sol.alpha, sol.gamma) == (4, 0.5, 0.9)
    assert sol.policy.shape == sol.q_values.shape == (T, 3, 2)
    assert sol.values.shape == sol.log_messages.shape == (T + 1, 3)
    for x in (sol.policy, sol.q_values, sol.values, sol.log_messages, sol.prior):
        assert x.dtype == torch.float64
    assert torch.all(sol.values[T] == 0) and torch.all(sol.log_messages[T] == 0)
    torch.testing.assert_close(sol.policy.sum(-1), torch.ones(T, 3, dtype=torch.float64), rtol=0, atol=1e-14)
    assert torch.all(sol.policy[:, 1, 1] == 0)  # the prior forbids it
    pi0 = torch.as_tensor(ZERO_PRIOR)
    torch.testing.assert_close(sol.policy, pi0 * torch.exp(sol.q_values - sol.values[:T, :, None]))
    # Q_t = R / alpha + gamma E[V_{t+1}(s')] and
    # B_t = log sum_a pi0 exp(R / alpha) ((1 - gamma) + gamma E[exp(B_{t+1}(s'))]), both 0 on the terminal state.
    P, R = mdp.transition, mdp.reward.double()
    for t in range(T):
        cont = sol.values[t + 1].masked_fill(mdp.terminal, 0.0)
        torch.testing.assert_close(sol.q_values[t], R / 0.5 + 0.9 * (P @ cont))
        b = sol.log_messages[t + 1].masked_fill(mdp.terminal, 0.0)
        inner = pi0 * torch.exp(R / 0.5) * (0.1 + 0.9 * (P @ torch.exp(b)))
        torch.testing.assert_close(sol.log_messages[t], inner.sum(-1).log())
    assert sol.gap == pytest.approx(sol.log_evidence - sol.elbo) and sol.gap > 0


def test_prior_accepts_numpy_torch_and_lists_and_uniform_equals_none():
    mdp = tiny_mdp(deterministic=False, terminal=False)
    kw = dict(horizon=3, alpha=0.5)
    ref = exact.solve(mdp, prior=ZERO_PRIOR, **kw)
    for prior in (torch.tensor(ZERO_PRIOR), ZERO_PRIOR.tolist()):
        assert exact.solve(mdp, prior=prior, **kw).elbo == ref.elbo
    assert exact.solve(mdp, prior=np.full((3, 2), 0.5), **kw).elbo == pytest.approx(
        exact.solve(mdp, **kw).elbo, abs=1e-14
    )


def test_elbo_of_broadcasts_a_stationary_policy():
    mdp = tiny_mdp(deterministic=False, terminal=True)
    q = np.random.default_rng(0).dirichlet(np.ones(2), size=3)
    kw = dict(horizon=4, alpha=0.3, gamma=0.95)
    assert exact.elbo_of(mdp, q, **kw) == pytest.approx(
        exact.elbo_of(mdp, np.tile(q, (4, 1, 1)), **kw), abs=1e-14
    )
    assert exact.elbo_of(mdp, torch.as_tensor(q), **kw) == exact.elbo_of(mdp, q, **kw)


# ---------------------------------------------------------------------- evidence >= ELBO
def one_hot_initial(mdp: envs.TabularMDP, s0: int = 0) -> envs.TabularMDP:
    p0 = np.zeros(mdp.num_states)
    p0[s0] = 1.0
    return envs.TabularMDP(mdp.transition, mdp.reward, p0, terminal=mdp.terminal)


def with_terminal(mdp: envs.TabularMDP, states) -> envs.TabularMDP:
    term = np.zeros(mdp.num_states, dtype=bool)
    term[list(states)] = True
    return envs.TabularMDP(mdp.transition, mdp.reward, mdp.initial, terminal=term)


@pytest.mark.parametrize("seed", range(4))
def test_evidence_bounds_elbo_with_equality_for_deterministic_problems(seed):
    rng = np.random.default_rng(seed)
    kw = dict(horizon=15, alpha=float(rng.uniform(0.2, 2)), gamma=1.0)
    det = envs.random_mdp(20, 4, seed=seed, deterministic=True)
    for mdp in (one_hot_initial(det, seed), with_terminal(one_hot_initial(det, seed), [3, 7])):
        sol = exact.solve(mdp, **kw)
        assert sol.log_evidence == pytest.approx(sol.elbo, abs=1e-9)
    # Luck in the initial state or in the transitions opens a gap: the exact posterior is optimistic.
    stoch = envs.random_mdp(20, 4, seed=seed, branching=3)
    for mdp in (det, one_hot_initial(stoch, seed), with_terminal(stoch, [3, 7])):
        sol = exact.solve(mdp, **kw)
        assert sol.log_evidence > sol.elbo + 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_discount_opens_a_gap_even_for_deterministic_problems(seed):
    """With gamma < 1 the exact posterior also tilts the death time, which q shares with the model, so
    log p(O) > max ELBO although p0 and the dynamics are deterministic; at gamma = 1 the gap closes."""
    rng = np.random.default_rng(seed)
    alpha = float(rng.uniform(0.2, 2))
    det = one_hot_initial(envs.random_mdp(20, 4, seed=seed, deterministic=True), seed)
    gaps = []
    for gamma in (0.5, 0.9, 0.99, 1.0):
        sol = exact.solve(det, horizon=15, alpha=alpha, gamma=gamma)
        gaps.append(sol.gap)
        if gamma < 1:
            assert sol.gap > 1e-3
    assert gaps[-1] == pytest.approx(0.0, abs=1e-9)
    # All rewards 0: every message is 0 and nothing tilts the death time, so the gap is 0 again.
    flat = envs.TabularMDP(det.transition, torch.zeros(20, 4), det.initial)
    sol = exact.solve(flat, horizon=15, alpha=alpha, gamma=0.7)
    assert sol.log_evidence == pytest.approx(0.0, abs=1e-12) and sol.gap == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------- Pyro's TraceEnum_ELBO
def enumerated_log_evidence(mdp: envs.TabularMDP, T: int, alpha: float, gamma: float, prior) -> float:
    """log p(O) of the enumerated Pyro trajectory model, -TraceEnum_ELBO with an empty guide.

    Termination under enumeration: whether the episode is alive at step t depends on the whole
    history, so the states get one extra value, ``ended`` (index S), that entering a terminal state
    leads to and that never leaves. The discount is the same absorbing state: after every step the
    episode moves there with probability 1 - gamma. The factor is masked there. The action sites must NOT be masked:
    a masked log-prob is 0 for every enumerated value, so summing over the A actions would count each
    ended step A times; unmasked, pi0 sums to 1 over the actions and the transition from ``ended``
    is certain, so the ended steps contribute log 1 = 0 as they should.
    """
    S, A = mdp.num_states, mdp.num_actions
    P = mdp.transition.cpu()
    term = mdp.terminal.cpu()
    P_aug = torch.zeros(S + 1, A, S + 1, dtype=torch.float64)
    P_aug[:S, :, :S] = gamma * P.masked_fill(term, 0.0)
    P_aug[:S, :, S] = gamma * (P * term).sum(-1) + (1 - gamma)
    P_aug[S, :, S] = 1.0
    R = torch.cat([mdp.reward.double().cpu(), torch.zeros(1, A, dtype=torch.float64)])
    pi0 = torch.full((S + 1, A), 1.0 / A, dtype=torch.float64)
    if prior is not None:
        pi0[:S] = torch.as_tensor(prior, dtype=torch.float64)
    alive = torch.arange(S + 1) < S
    p0 = torch.cat([mdp.initial.cpu(), torch.zeros(1, dtype=torch.float64)])
    enum = {"enumerate": "parallel"}

    def model():
        s = pyro.sample("s_0", dist.Categorical(probs=p0), infer=enum)
        for t in pyro.markov(range(T)):
            a = pyro.sample(f"a_{t}", dist.Categorical(probs=Vindex(pi0)[s]), infer=enum)
            with poutine.mask(mask=Vindex(alive)[s]):
                pyro.factor(f"O_{t}", Vindex(R)[s, a] / alpha)
            s = pyro.sample(f"s_{t + 1}", dist.Categorical(probs=Vindex(P_aug)[s, a]), infer=enum)

    def guide():
        pass

    return -TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)


def enumerated_log_evidence_absorbing(mdp: envs.TabularMDP, T: int, alpha: float) -> float:
    """The same at gamma = 1 with the original state space: valid when every terminal state is
    absorbing (as the gridworld's goal), since then alive at t >= 1 is just ``not terminal[s_t]``."""
    P, R, p0 = mdp.transition.cpu(), mdp.reward.double().cpu(), mdp.initial.cpu()
    S, A = mdp.num_states, mdp.num_actions
    assert all(P[g, :, g].eq(1).all() for g in torch.nonzero(mdp.terminal.cpu()).flatten().tolist())
    alive = ~mdp.terminal.cpu()
    pi0 = torch.full((S, A), 1.0 / A, dtype=torch.float64)

    @pyro.infer.config_enumerate
    def model():
        s = pyro.sample("s_0", dist.Categorical(probs=p0))
        for t in pyro.markov(range(T)):
            a = pyro.sample(f"a_{t}", dist.Categorical(probs=Vindex(pi0)[s]))
            with poutine.mask(mask=Vindex(alive)[s] if t > 0 else torch.tensor(True)):
                pyro.factor(f"O_{t}", Vindex(R)[s, a] / alpha)
            s = pyro.sample(f"s_{t + 1}", dist.Categorical(probs=Vindex(P)[s, a]))

    def guide():
        pass

    return -TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)


def test_trace_enum_reproduces_log_evidence_without_terminal_states():
    mdp = envs.random_mdp(6, 3, seed=5, branching=3)
    prior = np.random.default_rng(0).dirichlet(np.ones(3), size=6)
    T, alpha, gamma = 10, 0.5, 0.9
    want = exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
    assert enumerated_log_evidence(mdp, T, alpha, gamma, prior) == pytest.approx(want, abs=1e-6)


def test_trace_enum_reproduces_log_evidence_on_a_slippery_gridworld():
    mdp = envs.gridworld(3, 3, slip=0.2, walls=[(1, 1)], goal_reward=5.0)
    T, alpha, gamma = 10, 0.7, 0.95
    want = exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=gamma)
    assert enumerated_log_evidence(mdp, T, alpha, gamma, None) == pytest.approx(want, abs=1e-6)
    undiscounted = exact.log_evidence(mdp, horizon=T, alpha=alpha)
    assert enumerated_log_evidence_absorbing(mdp, T, alpha) == pytest.approx(undiscounted, abs=1e-6)
    assert enumerated_log_evidence(mdp, T, alpha, 1.0, None) == pytest.approx(undiscounted, abs=1e-6)
    # Without termination the answer differs: the mask matters.
    free = envs.TabularMDP(mdp.transition, mdp.reward, mdp.initial)
    assert abs(exact.log_evidence(free, horizon=T, alpha=alpha, gamma=gamma) - want) > 1e-3


def test_trace_enum_reproduces_log_evidence_with_non_absorbing_terminal_states():
    mdp = with_terminal(envs.random_mdp(5, 2, seed=8, branching=3), [1])  # p0(1) > 0: s_0 may be terminal
    assert mdp.initial[1] > 0
    T, alpha = 8, 0.8
    for gamma in (1.0, 0.8):
        want = exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=gamma)
        assert enumerated_log_evidence(mdp, T, alpha, gamma, None) == pytest.approx(want, abs=1e-6)


# ---------------------------------------------------------------------- stability and limits
def dense_reference(mdp, T, alpha, gamma, prior=None):
    """Both recursions with a dense [S, A, S] logsumexp: slow, but no shift and no underflow rule."""
    S, A = mdp.num_states, mdp.num_actions
    logP, R = torch.log(mdp.transition), mdp.reward.double()
    log_pi0 = torch.full((S, A), -math.log(A), dtype=torch.float64) if prior is None else torch.log(prior)
    B, V = torch.zeros(T + 1, S, dtype=torch.float64), torch.zeros(T + 1, S, dtype=torch.float64)
    log_die = torch.tensor(math.log1p(-gamma) if gamma < 1 else -math.inf, dtype=torch.float64)
    for t in reversed(range(T)):
        b, v = B[t + 1].masked_fill(mdp.terminal, 0.0), V[t + 1].masked_fill(mdp.terminal, 0.0)
        cont = torch.logaddexp(math.log(gamma) + torch.logsumexp(logP + b, -1), log_die)
        B[t] = torch.logsumexp(log_pi0 + R / alpha + cont, -1)
        V[t] = torch.logsumexp(log_pi0 + R / alpha + gamma * (mdp.transition @ v), -1)
    return B, V


@pytest.mark.parametrize("gamma", [0.97, 0.5])
@pytest.mark.parametrize("alpha", [1.0, 1e-3])
@pytest.mark.parametrize("branching", [2, None])
def test_matches_dense_logsumexp_reference(alpha, branching, gamma, monkeypatch):
    # reward_scale 10 and alpha 1e-3: w R ~ 1e4 nats per step, messages spanning ~1e5 nats, so many
    # shifted row sums underflow and take the exact path; alpha 1 takes the fast path only.
    mdp = with_terminal(envs.random_mdp(30, 4, seed=11, branching=branching, reward_scale=10.0), [4])
    T = 12
    recomputed = []

    def spy(P, rows, b):
        recomputed.append(rows.numel())
        return exact_path(P, rows, b)

    exact_path = exact._log_expectation_exact
    monkeypatch.setattr(exact, "_log_expectation_exact", spy)
    sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma)
    if alpha == 1.0 or branching is None:
        # Dense rows always include the maximizing next state, so they never underflow.
        assert recomputed == []
    else:  # some rows, not all: both paths meet in one step
        assert 0 < sum(recomputed) < T * 30 * 4
    B, V = dense_reference(mdp, T, alpha, gamma)
    torch.testing.assert_close(sol.log_messages, B, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(sol.values, V, rtol=1e-12, atol=1e-9)
    for x in (sol.log_messages, sol.values, sol.q_values, sol.policy):
        assert torch.isfinite(x).all()
    assert math.isfinite(sol.log_evidence) and math.isfinite(sol.elbo)
    assert sol.log_evidence >= sol.elbo - 1e-12 * abs(sol.elbo)
    assert exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=gamma) == sol.log_evidence


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_huge_rewards_over_temperature_stay_finite_and_ordered(gamma):
    kw = dict(horizon=20, alpha=1e-3, gamma=gamma)
    det = one_hot_initial(envs.random_mdp(15, 3, seed=4, deterministic=True, reward_scale=10.0))
    sol = exact.solve(det, **kw)
    assert np.isfinite([sol.log_evidence, sol.elbo]).all() and abs(sol.elbo) > 1e4
    if gamma == 1.0:
        assert sol.log_evidence == pytest.approx(sol.elbo, rel=1e-12)
    else:
        # p(O) >= p(D = T) p(O | D = T): the posterior may bet on surviving all T steps, which the
        # ELBO's q cannot (it shares the death time), so here the gap is of the size of the values.
        undiscounted = exact.log_evidence(det, horizon=20, alpha=1e-3)
        assert sol.log_evidence >= undiscounted + 19 * math.log(gamma) - 1e-12 * abs(undiscounted)
        assert sol.log_evidence > sol.elbo + 1e4
    # ~1e4 nats per step: q* carries a relative rounding error ~1e-11 into the reward term.
    assert exact.elbo_of(det, sol.policy, **kw) == pytest.approx(sol.elbo, rel=1e-10)
    stoch = envs.random_mdp(15, 3, seed=4, reward_scale=10.0)
    sol = exact.solve(stoch, **kw)
    assert np.isfinite([sol.log_evidence, sol.elbo]).all()
    assert sol.log_evidence > sol.elbo
    assert torch.isfinite(sol.policy).all()
    torch.testing.assert_close(sol.policy.sum(-1), torch.ones(20, 15, dtype=torch.float64))
    assert exact.elbo_of(stoch, sol.policy, **kw) == pytest.approx(sol.elbo, rel=1e-12)


def test_small_temperature_gives_the_greedy_policy_and_the_hard_value():
    mdp = envs.random_mdp(10, 3, seed=6)
    T, gamma, alpha = 8, 0.9, 1e-4
    sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma)
    # Finite-horizon hard dynamic programming on the discounted rewards.
    P, R = mdp.transition, mdp.reward.double()
    Vh = torch.zeros(mdp.num_states, dtype=torch.float64)
    Qh = torch.empty(T, 10, 3, dtype=torch.float64)
    for t in reversed(range(T)):
        Qh[t] = R + gamma * (P @ Vh)
        Vh = Qh[t].max(-1).values
    top2 = Qh.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-2
    assert clear.float().mean() > 0.8
    greedy = Qh.argmax(-1)
    assert torch.equal(sol.policy.argmax(-1)[clear], greedy[clear])
    assert (sol.policy.max(-1).values[clear] > 0.99).all()
    # alpha * soft value -> hard value, within alpha * T * log A.
    assert abs(alpha * sol.elbo - float(mdp.initial @ Vh)) <= alpha * T * math.log(3)


def test_speed_s1000_a10_t100():
    # The speed target (< 0.5 s on 2 quiet cores) is measured outside the tests; here it must run.
    mdp = envs.random_mdp(1000, 10, seed=0)
    start = time.perf_counter()
    sol = exact.solve(mdp, horizon=100, alpha=1.0)
    print(f"solve S=1000 A=10 T=100: {time.perf_counter() - start:.3f} s")
    assert math.isfinite(sol.log_evidence) and math.isfinite(sol.elbo)
    assert sol.log_evidence > sol.elbo


@pytest.mark.gpu
def test_cuda_matches_cpu():
    cpu = with_terminal(envs.random_mdp(40, 5, seed=2, branching=4, reward_scale=5.0), [3])
    gpu = envs.TabularMDP(cpu.transition, cpu.reward, cpu.initial, terminal=cpu.terminal, device="cuda")
    for alpha in (1.0, 1e-3):
        a = exact.solve(cpu, horizon=30, alpha=alpha, gamma=0.95)
        b = exact.solve(gpu, horizon=30, alpha=alpha, gamma=0.95)
        assert b.policy.device.type == "cuda"
        assert b.log_evidence == pytest.approx(a.log_evidence, rel=1e-12)
        assert b.elbo == pytest.approx(a.elbo, rel=1e-12)
        torch.testing.assert_close(b.policy.cpu(), a.policy)
        assert exact.elbo_of(gpu, b.policy, horizon=30, alpha=alpha, gamma=0.95) == pytest.approx(
            b.elbo, rel=1e-12
        )


# ---------------------------------------------------------------------- bad input
GOOD = dict(horizon=3, alpha=1.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(horizon=0), ValueError, r"horizon must be an int >= 1, got 0"),
        (dict(horizon=-2), ValueError, r"horizon must be an int >= 1"),
        (dict(horizon=2.5), TypeError, r"horizon must be an int >= 1, got 2.5 of type float"),
        (dict(horizon=True), TypeError, r"horizon must be an int >= 1, got True of type bool"),
        (dict(horizon="3"), TypeError, r"horizon must be an int"),
        (dict(alpha=0.0), ValueError, r"alpha must be a finite number > 0 \(the temperature\), got 0.0"),
        (dict(alpha=-1), ValueError, r"alpha must be a finite number > 0"),
        (dict(alpha=math.inf), ValueError, r"alpha must be a finite number > 0 \(the temperature\), got inf"),
        (dict(alpha=math.nan), ValueError, r"alpha must be a finite number > 0"),
        (dict(alpha=1e-320), ValueError, r"alpha = 1e-320 is too small"),
        (dict(alpha="1"), TypeError, r"alpha must be a number > 0"),
        (dict(gamma=0.0), ValueError, r"gamma must be in \(0, 1\], got 0.0"),
        (dict(gamma=1.5), ValueError, r"gamma must be in \(0, 1\], got 1.5"),
        (dict(gamma=math.nan), ValueError, r"gamma must be in \(0, 1\]"),
        (
            dict(prior=np.full((3, 3), 1 / 3)),
            ValueError,
            r"prior must have shape \[S, A\] = \[3, 2\] or \[T, S, A\] = \[\d+, 3, 2\], got \(3, 3\)",
        ),
        (dict(prior=np.full(2, 0.5)), ValueError, r"prior must have shape \[S, A\]"),
        (dict(prior=[[1.5, -0.5]] * 3), ValueError, r"prior must be non-negative; prior\[0, 1\] is -0.5"),
        (
            dict(prior=[[0.5, 0.6]] * 3),
            ValueError,
            r"prior\[0, :\] sums to 1.1; each row over actions must sum to 1",
        ),
        (dict(prior=[[math.nan, 1.0]] * 3), ValueError, r"prior must be finite; prior\[0, 0\] is nan"),
        (dict(prior="uniform"), TypeError, r"prior must be a numpy array or torch tensor"),
    ],
)
@pytest.mark.parametrize("fn", ["solve", "log_evidence", "elbo_of"])
def test_bad_arguments(fn, kwargs, error, match):
    mdp = tiny_mdp(deterministic=False, terminal=False)
    call = getattr(exact, fn)
    args = (mdp, np.full((3, 2), 0.5)) if fn == "elbo_of" else (mdp,)
    with pytest.raises(error, match=match):
        call(*args, **{**GOOD, **kwargs})


def test_overflowing_rewards_and_integer_likes():
    mdp = envs.TabularMDP(np.ones((2, 1, 2)) / 2, [[1e300], [-1e300]], [1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"overflow float64; increase alpha"):
        exact.solve(mdp, horizon=2, alpha=1e-10)
    tiny = tiny_mdp(deterministic=False, terminal=False)
    a = exact.solve(tiny, horizon=np.int64(3), alpha=np.float32(0.5), gamma=torch.tensor(0.9))
    assert (a.horizon, a.alpha, a.gamma) == (3, 0.5, pytest.approx(0.9)) and type(a.horizon) is int
    assert a.elbo == exact.solve(tiny, horizon=3, alpha=0.5, gamma=float(torch.tensor(0.9))).elbo


@pytest.mark.parametrize("fn", ["solve", "log_evidence", "elbo_of"])
def test_mdp_must_be_tabular(fn):
    args = (envs.make("CartPole-v1"),) + ((np.full((3, 2), 0.5),) if fn == "elbo_of" else ())
    with pytest.raises(TypeError, match=r"mdp must be an envs.TabularMDP .* got CartPole"):
        getattr(exact, fn)(*args, **GOOD)


@pytest.mark.parametrize(
    "policy, error, match",
    [
        (
            np.full((4, 3, 2), 0.5),
            ValueError,
            r"policy must have shape \[T, S, A\] = \[3, 3, 2\] or \[S, A\] = \[3, 2\], got \(4, 3, 2\)",
        ),
        (np.full((3, 2, 2), 0.5), ValueError, r"policy must have shape"),
        (np.full(2, 0.5), ValueError, r"policy must have shape"),
        (np.array([[1.2, -0.2]] * 3), ValueError, r"policy must be non-negative; policy\[0, 1\] is -0.2"),
        (np.array([[0.5, 0.4]] * 3), ValueError, r"policy\[0, :\] sums to 0.9"),
        (np.array([[0.5, math.inf]] * 3), ValueError, r"policy must be finite; policy\[0, 1\] is inf"),
        ("greedy", ValueError, r"policy must have shape"),
    ],
)
def test_bad_policies(policy, error, match):
    mdp = tiny_mdp(deterministic=False, terminal=False)
    with pytest.raises(error, match=match):
        exact.elbo_of(mdp, policy, **GOOD)
