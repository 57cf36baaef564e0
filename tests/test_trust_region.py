"""The trust-region update: ELBO (2) against the previous iterate, with the realized KL within the bound."""

from __future__ import annotations

import copy

import pyro
import pytest
import torch

import rl_as_inference as rlai
from rl_as_inference import envs, guides, models
from rl_as_inference.trust_region import TrustRegion


def test_realized_kl_respects_the_bound_and_the_return_improves():
    mdp = envs.gridworld(3, 3, slip=0.1)
    horizon, alpha, bound = 8, 0.5, 0.05
    torch.manual_seed(0)
    policy = guides.CategoricalMLP(mdp.observation_space, mdp.action_space, hidden=(16,))
    guide = guides.PolicyGuide(mdp, policy, horizon=horizon)
    region = TrustRegion(list(policy.parameters()), kl_bound=bound, step_size=1.0)
    loss = rlai.TrajectoryELBO(baseline="mean")
    pyro.set_rng_seed(0)

    def mean_return(n=4096):
        with torch.no_grad():
            return guide(n).returns.mean().item()

    start = mean_return()
    for _ in range(30):
        old = copy.deepcopy(policy).requires_grad_(False)  # q_k, the prior of this iteration's ELBO (2)
        prior = models.PolicyPrior(lambda s, old=old: old(mdp.observe(s)))
        model = models.TrajectoryModel(mdp, prior, horizon=horizon, alpha=alpha)
        with torch.no_grad():
            states = guide(512).states[:-1].reshape(-1)  # states the current policy visits

        def mean_kl(states=states, old=old):
            q, p = policy(states), old(states)
            return torch.distributions.kl_divergence(q, p).mean()

        info = region.step(lambda model=model: loss.differentiable_loss(model, guide, 256), mean_kl)
        # The bound holds by construction: every accepted step realizes KL <= delta on those states.
        assert info["kl"] <= bound
    end = mean_return()
    # 4096 episodes: the standard error of a mean return is about 0.05 here; the seeded run goes from
    # -7.7 (near-uniform play) to -4.4 (the goal is 4 moves away).
    assert end > start + 1.0, (start, end)


def test_a_step_that_cannot_meet_the_bound_is_abandoned():
    w = torch.zeros(3, requires_grad=True)
    region = TrustRegion([w], kl_bound=1e-9, step_size=1.0, max_backtracks=3)
    info = region.step(lambda: (w - 1.0).square().sum(), lambda: torch.tensor(1.0))
    assert not info["accepted"] and torch.equal(w.detach(), torch.zeros(3))
    with pytest.raises(ValueError, match="kl_bound must be positive"):
        TrustRegion([w], kl_bound=0.0)
