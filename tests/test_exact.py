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


def brute_log_evidence(mdp, T, alpha, gamma, prior) -> float:
    P, R = mdp.transition.cpu().numpy(), mdp.reward.double().cpu().numpy()
    p0 = mdp.initial.cpu().numpy()
    with np.errstate(divide="ignore"):
        terms = []
        for states, actions in trajectories(mdp, T):
            lp = math.log(p0[states[0]]) if p0[states[0]] > 0 else -math.inf
            for t, a in enumerate(actions):
                s, s2 = states[t], states[t + 1]
                lp += np.log(prior[s, a]) + math.log(P[s, a, s2]) + gamma**t / alpha * R[s, a]
            terms.append(lp)
    return float(np.logaddexp.reduce(np.array(terms)))


def brute_elbo(mdp, q, T, alpha, gamma, prior) -> float:
    """E_q[log p(tau, O) - log q(tau)] summed over every trajectory (the dynamics cancel)."""
    P, R = mdp.transition.cpu().numpy(), mdp.reward.double().cpu().numpy()
    p0 = mdp.initial.cpu().numpy()
    total = 0.0
    for states, actions in trajectories(mdp, T):
        steps = list(zip(range(len(actions)), states, actions, states[1:], strict=False))
        prob = p0[states[0]] * math.prod(q[t, s, a] * P[s, a, s2] for t, s, a, s2 in steps)
        if prob > 0:  # q(tau) = 0 contributes nothing, whatever log pi0 is there
            inner = sum(
                gamma**t / alpha * R[s, a] - math.log(q[t, s, a] / prior[s, a]) for t, s, a, _ in steps
            )
            total += prob * inner
    return total


def random_policy(rng, T, prior) -> np.ndarray:
    """A random policy on the support of the prior."""
    q = rng.dirichlet(np.ones(prior.shape[1]), size=(T, prior.shape[0])) * (prior > 0)
    return q / q.sum(-1, keepdims=True)


CASES = list(
    itertools.product([False, True], [False, True], [None, "zeros"], [1.0, 0.8])
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
    for T, alpha in [(1, 1.0), (3, 0.7), (3, 1e-4)]:
        want = brute_log_evidence(mdp, T, alpha, gamma, table)
        sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
        assert sol.log_evidence == pytest.approx(want, rel=1e-13, abs=1e-12)
        assert exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior) == sol.log_evidence


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_elbo_of_equals_enumeration(case):
    mdp, prior, table, gamma = setup_case(case)
    rng = np.random.default_rng(1)
    T, alpha = 3, 0.7
    for _ in range(3):
        q = random_policy(rng, T, table)
        want = brute_elbo(mdp, q, T, alpha, gamma, table)
        assert exact.elbo_of(mdp, q, horizon=T, alpha=alpha, gamma=gamma, prior=prior) == pytest.approx(
            want, abs=1e-12
        )
    sol = exact.solve(mdp, horizon=T, alpha=alpha, gamma=gamma, prior=prior)
    assert brute_elbo(mdp, sol.policy.numpy(), T, alpha, gamma, table) == pytest.approx(sol.elbo, abs=1e-12)


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
    # Q_t = w_t R + E[V_{t+1}(s')] with V_{t+1} = 0 on the terminal state.
    P, R = mdp.transition, mdp.reward.double()
    for t in range(T):
        cont = sol.values[t + 1].masked_fill(mdp.terminal, 0.0)
        torch.testing.assert_close(sol.q_values[t], 0.9**t / 0.5 * R + P @ cont)
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
    kw = dict(horizon=15, alpha=float(rng.uniform(0.2, 2)), gamma=float(rng.uniform(0.8, 1)))
    det = envs.random_mdp(20, 4, seed=seed, deterministic=True)
    for mdp in (one_hot_initial(det, seed), with_terminal(one_hot_initial(det, seed), [3, 7])):
        sol = exact.solve(mdp, **kw)
        assert sol.log_evidence == pytest.approx(sol.elbo, abs=1e-9)
    # Luck in the initial state or in the transitions opens a gap: the exact posterior is optimistic.
    stoch = envs.random_mdp(20, 4, seed=seed, branching=3)
    for mdp in (det, one_hot_initial(stoch, seed), with_terminal(stoch, [3, 7])):
        sol = exact.solve(mdp, **kw)
        assert sol.log_evidence > sol.elbo + 1e-3


# ---------------------------------------------------------------------- Pyro's TraceEnum_ELBO
def enumerated_log_evidence(mdp: envs.TabularMDP, T: int, alpha: float, gamma: float, prior) -> float:
    """log p(O) of the enumerated Pyro trajectory model, -TraceEnum_ELBO with an empty guide.

    Termination under enumeration: whether the episode is alive at step t depends on the whole
    history, so the states get one extra value, ``ended`` (index S), that entering a terminal state
    leads to and that never leaves. The factor is masked there. The action sites must NOT be masked:
    a masked log-prob is 0 for every enumerated value, so summing over the A actions would count each
    ended step A times; unmasked, pi0 sums to 1 over the actions and the transition from ``ended``
    is certain, so the ended steps contribute log 1 = 0 as they should.
    """
    S, A = mdp.num_states, mdp.num_actions
    P = mdp.transition.cpu()
    term = mdp.terminal.cpu()
    P_aug = torch.zeros(S + 1, A, S + 1, dtype=torch.float64)
    P_aug[:S, :, :S] = P.masked_fill(term, 0.0)
    P_aug[:S, :, S] = (P * term).sum(-1)
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
                pyro.factor(f"O_{t}", gamma**t / alpha * Vindex(R)[s, a])
            s = pyro.sample(f"s_{t + 1}", dist.Categorical(probs=Vindex(P_aug)[s, a]), infer=enum)

    def guide():
        pass

    return -TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)


def enumerated_log_evidence_absorbing(mdp: envs.TabularMDP, T: int, alpha: float, gamma: float) -> float:
    """The same with the original state space: valid when every terminal state is absorbing (as the
    gridworld's goal), since then alive at t >= 1 is just ``not terminal[s_t]``."""
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
                pyro.factor(f"O_{t}", gamma**t / alpha * Vindex(R)[s, a])
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
    assert enumerated_log_evidence_absorbing(mdp, T, alpha, gamma) == pytest.approx(want, abs=1e-6)
    assert enumerated_log_evidence(mdp, T, alpha, gamma, None) == pytest.approx(want, abs=1e-6)
    # Without termination the answer differs: the mask matters.
    free = envs.TabularMDP(mdp.transition, mdp.reward, mdp.initial)
    assert abs(exact.log_evidence(free, horizon=T, alpha=alpha, gamma=gamma) - want) > 1e-3


def test_trace_enum_reproduces_log_evidence_with_non_absorbing_terminal_states():
    mdp = with_terminal(envs.random_mdp(5, 2, seed=8, branching=3), [1])  # p0(1) > 0: s_0 may be terminal
    assert mdp.initial[1] > 0
    T, alpha = 8, 0.8
    want = exact.log_evidence(mdp, horizon=T, alpha=alpha, gamma=1.0)
    assert enumerated_log_evidence(mdp, T, alpha, 1.0, None) == pytest.approx(want, abs=1e-6)


# ---------------------------------------------------------------------- stability and limits
def dense_reference(mdp, T, alpha, gamma, prior=None):
    """Both recursions with a dense [S, A, S] logsumexp: slow, but no shift and no underflow rule."""
    S, A = mdp.num_states, mdp.num_actions
    logP, R = torch.log(mdp.transition), mdp.reward.double()
    log_pi0 = torch.full((S, A), -math.log(A), dtype=torch.float64) if prior is None else torch.log(prior)
    B, V = torch.zeros(T + 1, S, dtype=torch.float64), torch.zeros(T + 1, S, dtype=torch.float64)
    for t in reversed(range(T)):
        w = gamma**t / alpha
        b, v = B[t + 1].masked_fill(mdp.terminal, 0.0), V[t + 1].masked_fill(mdp.terminal, 0.0)
        B[t] = torch.logsumexp(log_pi0 + w * R + torch.logsumexp(logP + b, -1), -1)
        V[t] = torch.logsumexp(log_pi0 + w * R + mdp.transition @ v, -1)
    return B, V


@pytest.mark.parametrize("alpha", [1.0, 1e-3])
@pytest.mark.parametrize("branching", [2, None])
def test_matches_dense_logsumexp_reference(alpha, branching, monkeypatch):
    # reward_scale 10 and alpha 1e-3: w R ~ 1e4 nats per step, messages spanning ~1e5 nats, so many
    # shifted row sums underflow and take the exact path; alpha 1 takes the fast path only.
    mdp = with_terminal(envs.random_mdp(30, 4, seed=11, branching=branching, reward_scale=10.0), [4])
    T, gamma = 12, 0.97
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


def test_huge_rewards_over_temperature_stay_finite_and_ordered():
    kw = dict(horizon=20, alpha=1e-3, gamma=1.0)
    det = one_hot_initial(envs.random_mdp(15, 3, seed=4, deterministic=True, reward_scale=10.0))
    sol = exact.solve(det, **kw)
    assert np.isfinite([sol.log_evidence, sol.elbo]).all() and abs(sol.elbo) > 1e4
    assert sol.log_evidence == pytest.approx(sol.elbo, rel=1e-12)
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
        Qh[t] = gamma**t * R + P @ Vh
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
            r"prior must have shape \[S, A\] = \[3, 2\], got \(3, 3\)",
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
    assert a.elbo == pytest.approx(exact.solve(tiny, horizon=3, alpha=0.5, gamma=0.9).elbo, rel=1e-6)


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
