"""Finite MDPs: validation, functional step, sampling frequencies, generators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl_as_inference import envs


def tiny(stochastic: bool = True):
    P = np.zeros((3, 2, 3))
    P[0, 0] = [0.2, 0.8, 0.0] if stochastic else [0, 1, 0]
    P[0, 1] = [0.0, 0.0, 1.0]
    P[1, 0] = [1.0, 0.0, 0.0]
    P[1, 1] = [0.0, 0.5, 0.5] if stochastic else [0, 0, 1]
    P[2, :, 2] = 1.0
    R = np.array([[0.0, 1.0], [-1.0, 2.0], [0.0, 0.0]])
    p0 = np.array([0.6, 0.4, 0.0])
    return P, R, p0


def test_deterministic_step_reward_and_terminal():
    P, R, p0 = tiny(stochastic=False)
    mdp = envs.TabularMDP(P, R, p0, terminal=np.array([False, False, True]))
    assert not mdp.stochastic
    s = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([0, 1, 0, 1])
    out = mdp.step(s, a)
    assert out.state.tolist() == [1, 2, 0, 2]
    assert out.reward.tolist() == [0.0, 1.0, -1.0, 2.0]
    assert out.terminated.tolist() == [False, True, False, True]
    assert mdp.observe(s) is s
    assert mdp.observation_space.n == 3 and mdp.action_space.n == 2


def test_inputs_accept_torch_and_numpy_alike():
    P, R, p0 = tiny()
    a = envs.TabularMDP(P, R, p0)
    b = envs.TabularMDP(
        torch.tensor(P), torch.tensor(R, dtype=torch.float32), torch.tensor(p0), dtype=torch.float64
    )
    assert torch.equal(a.transition, b.transition)
    assert b.reward.dtype == torch.float64 and a.reward.dtype == torch.float32


def test_stochastic_transition_frequencies_match_probabilities():
    P, R, p0 = tiny()
    mdp = envs.TabularMDP(P, R, p0)
    assert mdp.stochastic
    n = 40_000
    s = torch.zeros(n, dtype=torch.long)
    a = torch.zeros(n, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    nxt = mdp.step(s, a, generator=gen).state
    freq = torch.bincount(nxt, minlength=3).double() / n
    expected = torch.tensor(P[0, 0])
    # Binomial standard error sqrt(p (1 - p) / n); 5 SE -> false alarm below 1e-6.
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * se + 1e-12).all()
    dist = mdp.transition_dist(s[:5], a[:5])
    assert isinstance(dist, torch.distributions.Categorical)
    # The site distribution takes the env's dtype (one dtype per model, as TraceEnum_ELBO needs).
    assert dist.probs.dtype == mdp.dtype
    torch.testing.assert_close(dist.probs, torch.tensor(P[0, 0], dtype=mdp.dtype).expand(5, 3))


def test_step_accepts_a_sampled_next_state_and_is_seeded():
    P, R, p0 = tiny()
    mdp = envs.TabularMDP(P, R, p0, terminal=np.array([False, False, True]))
    s, a = torch.tensor([1, 1]), torch.tensor([1, 1])
    out = mdp.step(s, a, next_state=torch.tensor([2, 1]))
    assert out.state.tolist() == [2, 1] and out.terminated.tolist() == [True, False]
    assert out.reward.tolist() == [2.0, 2.0]
    s = torch.ones(100, dtype=torch.long)
    a = torch.ones(100, dtype=torch.long)
    x = mdp.step(s, a, generator=torch.Generator().manual_seed(3)).state
    y = mdp.step(s, a, generator=torch.Generator().manual_seed(3)).state
    assert torch.equal(x, y)
    with pytest.raises(
        ValueError, match=r"next_state has shape \(3,\), which does not broadcast with the batch \(100,\)"
    ):
        mdp.step(s, a, next_state=torch.tensor([0, 1, 2]))


def test_reset_frequencies_follow_initial_distribution():
    P, R, p0 = tiny()
    mdp = envs.TabularMDP(P, R, p0)
    n = 30_000
    s = mdp.reset(n, seed=0)
    assert s.dtype == torch.long and torch.equal(s, mdp.reset(n, seed=0))
    freq = torch.bincount(s, minlength=3).double() / n
    se = math.sqrt(0.6 * 0.4 / n)
    assert abs(freq[0].item() - 0.6) < 5 * se and freq[2] == 0
    g = mdp.reset(5, seed=2, seeding="gymnasium")
    assert torch.equal(g, mdp.reset(5, seed=2, seeding="gymnasium")) and (g < 2).all()


def test_batched_shapes():
    mdp = envs.random_mdp(5, 3, seed=1)
    s = mdp.reset(12, seed=0).reshape(3, 4)
    a = torch.randint(0, 3, (3, 4), generator=torch.Generator().manual_seed(0))
    out = mdp.step(s, a)
    assert out.state.shape == (3, 4) and out.reward.shape == (3, 4)
    assert mdp.transition_dist(s, a).batch_shape == (3, 4)


# ---------------------------------------------------------------------- validation
def _with_row(P, row):
    P = P.copy()
    P[0, 0] = row
    return P


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda P, R, p0: (P[:, :, :2], R, p0), ValueError, r"shape \[S, A, S\]"),
        (lambda P, R, p0: (P[0], R, p0), ValueError, "transition must have 3 dimensions"),
        (lambda P, R, p0: (P * 0.9, R, p0), ValueError, r"transition\[0, 0, :\] sums to 0.9"),
        (lambda P, R, p0: (np.where(P == 0.8, np.nan, P), R, p0), ValueError, "transition must be finite"),
        (
            lambda P, R, p0: (_with_row(P, [-0.2, 1.2, 0.0]), R, p0),
            ValueError,
            r"transition must be non-negative",
        ),
        (lambda P, R, p0: (P, R[:, :1], p0), ValueError, r"reward must have shape \[S, A\] = \[3, 2\]"),
        (lambda P, R, p0: (P, np.full_like(R, np.inf), p0), ValueError, "reward must be finite"),
        (lambda P, R, p0: (P, R, p0[:2]), ValueError, r"initial must have shape \[S\] = \[3\]"),
        (lambda P, R, p0: (P, R, p0 * 2), ValueError, "initial.*sums to 2"),
        (lambda P, R, p0: (P, R, np.array([1.5, -0.5, 0.0])), ValueError, "initial must be non-negative"),
        (lambda P, R, p0: ("abc", R, p0), TypeError, "transition must be a numpy array"),
    ],
)
def test_invalid_tables_are_rejected(mutate, error, match):
    with pytest.raises(error, match=match):
        envs.TabularMDP(*mutate(*tiny()))


def test_invalid_terminal_and_actions():
    P, R, p0 = tiny()
    with pytest.raises(ValueError, match=r"terminal must be a bool array of shape \[3\]"):
        envs.TabularMDP(P, R, p0, terminal=[1, 0, 0])
    mdp = envs.TabularMDP(P, R, p0)
    with pytest.raises(TypeError, match="state dtype is torch.float32.*integer"):
        mdp.step(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"action has shape \(3,\)"):
        mdp.step(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------- generators
def test_random_mdp_is_seeded_and_respects_determinism():
    a, b = envs.random_mdp(6, 3, seed=4), envs.random_mdp(6, 3, seed=4)
    assert torch.equal(a.transition, b.transition) and torch.equal(a.reward, b.reward)
    assert not torch.equal(a.transition, envs.random_mdp(6, 3, seed=5).transition)
    det = envs.random_mdp(6, 3, seed=4, deterministic=True)
    assert not det.stochastic and ((det.transition == 1).sum(-1) == 1).all()
    sparse = envs.random_mdp(8, 2, seed=0, branching=2)
    assert ((sparse.transition > 0).sum(-1) <= 2).all() and sparse.stochastic


def test_gridworld_walls_goal_and_slip():
    g = envs.gridworld(3, 3, walls=[(1, 1)], goal=(2, 2))
    assert not g.stochastic and g.num_states == 9 and g.num_actions == 4
    up, right, down, left = range(4)
    nxt = g.step(torch.tensor([0, 0, 1, 5, 0]), torch.tensor([up, right, down, down, left])).state
    # (0,0) up -> wall of the grid; right -> (0,1); (0,1) down -> the wall at (1,1) blocks; (1,2) down -> goal.
    assert nxt.tolist() == [0, 1, 1, 8, 0]
    assert g.terminal.tolist() == [False] * 8 + [True]
    assert g.reset(3, seed=0).tolist() == [0, 0, 0]
    slippery = envs.gridworld(3, 3, slip=0.2, goal_reward=10.0)
    assert slippery.stochastic
    torch.testing.assert_close(slippery.transition.sum(-1), torch.ones(9, 4, dtype=torch.float64))
    # From (1,2), moving down enters the goal with probability 0.8 + 0.2/4.
    assert slippery.reward[5, down].item() == pytest.approx(-1.0 + 10.0 * 0.85)
    with pytest.raises(ValueError, match="outside the 3x3 grid"):
        envs.gridworld(3, 3, walls=[(5, 5)])
    with pytest.raises(ValueError, match=r"slip=1.5 is not allowed; use a probability in \[0, 1\]"):
        envs.gridworld(slip=1.5)


def test_chain():
    c = envs.chain(4)
    assert c.step(torch.tensor([0, 3, 1]), torch.tensor([0, 1, 1])).state.tolist() == [0, 3, 2]
    assert c.reward[0, 0] == pytest.approx(0.1) and c.reward[3, 1] == 1.0
    assert envs.chain(4, slip=0.1).stochastic
