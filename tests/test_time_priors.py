"""Time-dependent priors pi0_t(a|s): exact inference against brute-force enumeration, the trajectory
model's Monte-Carlo ELBO against exact inference, and ELBO (2) iterated (the seed's EM) on a finite
MDP with a guide's policy as the next round's prior."""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch

import rl_as_inference as rlai
from rl_as_inference import envs, exact, guides, models
from rl_as_inference.elbo import TrajectoryELBO

F64 = torch.float64


def _mdp() -> envs.TabularMDP:
    """S=3, A=2, stochastic, no terminal states: every path of length T is enumerable."""
    g = torch.Generator().manual_seed(4)
    P = torch.softmax(torch.randn(3, 2, 3, generator=g, dtype=F64), -1)
    R = torch.randn(3, 2, generator=g, dtype=F64)
    p0 = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    return envs.TabularMDP(transition=P, reward=R, initial=p0)


def _table(T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(T, 3, 2, generator=g, dtype=F64), -1)


def _brute_log_evidence(mdp, prior, T, alpha) -> float:
    """log sum over (s_0, a_0, ..., s_{T-1}, a_{T-1}) of p(tau) exp(sum_t R(s_t, a_t) / alpha)."""
    P, R, p0 = mdp.transition, mdp.reward, mdp.initial
    total = 0.0
    for states in itertools.product(range(3), repeat=T):
        for actions in itertools.product(range(2), repeat=T):
            w = float(p0[states[0]])
            for t in range(T):
                s, a = states[t], actions[t]
                w *= float(prior[t, s, a]) * math.exp(float(R[s, a]) / alpha)
                if t + 1 < T:
                    w *= float(P[s, a, states[t + 1]])
            total += w
    return math.log(total)


def test_exact_inference_with_a_time_dependent_prior_matches_enumeration():
    mdp, T, alpha = _mdp(), 3, 0.7
    prior = _table(T, seed=1)
    brute = _brute_log_evidence(mdp, prior, T, alpha)
    assert exact.log_evidence(mdp, horizon=T, alpha=alpha, prior=prior) == pytest.approx(brute, rel=1e-12)
    solution = exact.solve(mdp, horizon=T, alpha=alpha, prior=prior)
    assert solution.log_evidence == pytest.approx(brute, rel=1e-12)
    assert solution.prior.shape == (T, 3, 2)
    # the optimal q*_t is proportional to pi0_t exp(Q_t), and its ELBO is the one solve reports
    assert exact.elbo_of(mdp, solution.policy, horizon=T, alpha=alpha, prior=prior) == pytest.approx(
        solution.elbo, rel=1e-12
    )
    # a slice-constant table is the same problem as the [S, A] prior
    flat = exact.solve(mdp, horizon=T, alpha=alpha, prior=prior[0])
    same = exact.solve(mdp, horizon=T, alpha=alpha, prior=prior[0].expand(T, 3, 2))
    assert same.elbo == pytest.approx(flat.elbo, rel=1e-12) and flat.prior.shape == (3, 2)
    torch.testing.assert_close(same.policy, flat.policy)


def test_the_models_elbo_with_a_table_prior_matches_exact_inference():
    mdp, T, alpha, N = _mdp(), 4, 0.5, 20_000
    prior = _table(T, seed=2)
    model = models.TrajectoryModel(mdp, models.TablePrior(prior), horizon=T, alpha=alpha)
    guide = guides.TabularGuide(mdp, horizon=T, init_scale=1.0)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        per_episode = TrajectoryELBO().terms(model, guide, N).costs.sum(0).double()
    expected = exact.elbo_of(mdp, guide.policy(), horizon=T, alpha=alpha, prior=prior)
    se = float(per_episode.std()) / math.sqrt(N)
    assert abs(float(per_episode.mean()) - expected) < 4 * se, (float(per_episode.mean()), expected, se)
    # the [S, A] table is the time-independent case of the same prior
    flat = models.TablePrior(prior[0])
    assert torch.equal(flat.dist_at(2, torch.tensor([1]), mdp).probs, prior[0][[1]])


def test_elbo_2_iterated_with_the_guides_policy_as_prior_is_em():
    # EM over the prior: with pi_{k+1} := q_k, the best ELBO under pi_{k+1} is at least
    # ELBO(q_k; pi_{k+1}) = E_{q_k}[sum_t r_t / alpha] (the KL vanishes) >= ELBO(q_k; pi_k): the
    # rounds can only go up, whatever the approximation error of each round's SVI
    mdp, T, alpha = _mdp(), 3, 0.5
    prior, achieved = None, -math.inf  # round 0: the uniform prior, eq. (10)
    for k in range(3):
        pi = models.UniformPrior(mdp.action_space) if prior is None else models.TablePrior(prior)
        model = models.TrajectoryModel(mdp, pi, horizon=T, alpha=alpha)
        guide = guides.TabularGuide(mdp, horizon=T, name=f"q_{k}")
        rlai.fit(model, guide, num_steps=400, num_episodes=256, lr=0.1, seed=k, progress=False)
        best = exact.solve(mdp, horizon=T, alpha=alpha, prior=prior)
        assert best.elbo >= achieved - 1e-9, (k, best.elbo, achieved)  # the EM inequality
        achieved = exact.elbo_of(mdp, guide.policy(), horizon=T, alpha=alpha, prior=prior)
        assert best.elbo - 0.05 <= achieved <= best.elbo + 1e-9, (k, achieved, best.elbo)
        prior = guide.policy()  # the M-step: pi_{k+1} := q_k, a [T, S, A] table


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: models.TablePrior(torch.ones(3, 2)), ValueError, r"TablePrior's probs\[0, :\] sums to 2"),
        (lambda: models.TablePrior(torch.ones(3)), ValueError, r"\[S, A\] or \[T, S, A\] table"),
        (
            lambda: models.TablePrior(-torch.ones(3, 2) / 2),
            ValueError,
            r"must be non-negative; TablePrior's probs\[0, 0\] is -0.5",
        ),
        (
            lambda: models.TrajectoryModel(_mdp(), models.TablePrior(torch.ones(4, 2) / 2), horizon=2),
            ValueError,
            r"TablePrior's table has shape \(4, 2\); .* needs \[S, A\] = \[3, 2\]",
        ),
        (
            lambda: models.TrajectoryModel(
                envs.make("Pendulum-v1"), models.TablePrior(torch.ones(3, 2) / 2), horizon=2
            ),
            ValueError,
            r"TablePrior needs a tabular MDP",
        ),
        (
            lambda: models.TrajectoryModel(_mdp(), models.TablePrior(_table(2, 0)), horizon=3)(4),
            ValueError,
            r"TablePrior has 2 steps; step 2 was asked for",
        ),
    ],
)
def test_bad_table_priors_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_time_indexed_policy_prior_receives_the_step():
    mdp, seen = _mdp(), []
    table = _table(3, seed=3)

    def fn(state, t):
        seen.append(t)
        return torch.distributions.Categorical(probs=table[t][state])

    model = models.TrajectoryModel(mdp, models.PolicyPrior(fn, time_indexed=True), horizon=3)
    pyro.poutine.trace(model).get_trace(5)
    assert seen == [0, 1, 2]
