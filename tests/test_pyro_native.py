"""Pyro's own inference machinery on the library's models and guides."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from rl_as_inference import envs, guides, models
from rl_as_inference.elbo import TrajectoryELBO


def _pendulum(horizon: int = 5):
    env = envs.make("Pendulum-v1")
    torch.manual_seed(0)
    policy = guides.GaussianMLP(env.observation_space, env.action_space, hidden=(16,))
    model = models.TrajectoryModel(env, models.GaussianPrior(1.0), horizon=horizon)
    return model, guides.PolicyGuide(env, policy, horizon=horizon)


def test_trace_mean_field_elbo_agrees_with_the_trajectory_elbo():
    # TraceMeanField_ELBO asks every guide site for rsample: the initial-state site has no
    # parameters, so it is (trivially) reparameterized, and a Gaussian policy is
    model, guide = _pendulum()
    N = 4_000
    pyro.set_rng_seed(1)
    per_episode = TrajectoryELBO().terms(model, guide, N).costs.sum(0).detach().double()
    ours, se = -float(per_episode.mean()), float(per_episode.std()) / math.sqrt(N)
    pyro.set_rng_seed(2)
    theirs = TraceMeanField_ELBO().loss(model, guide, N) / N  # Pyro sums over the episodes plate
    stock = Trace_ELBO().loss(model, guide, N) / N
    # independent draws of the same estimand: 5 standard errors of the difference
    assert abs(theirs - ours) < 5 * math.sqrt(2) * se, (theirs, ours, se)
    assert abs(stock - ours) < 5 * math.sqrt(2) * se, (stock, ours, se)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=TraceMeanField_ELBO())
    assert all(math.isfinite(svi.step(64)) for _ in range(3))


def test_trace_mean_field_elbo_refuses_discrete_guides_as_pyro_documents():
    mdp = envs.gridworld(3, 3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=4)
    guide = guides.TabularGuide(mdp, horizon=4)
    with pytest.raises(NotImplementedError, match="fully reparameterized"):
        TraceMeanField_ELBO().loss(model, guide, 8)


@pytest.mark.parametrize("env_kind", ["pendulum", "gridworld"])
def test_vectorized_particles_run_through_the_built_in_models_and_guides(env_kind):
    # Pyro adds a leading particle dim [P, N]: the initial-state site keeps it (it used to collapse
    # [P, N] into [P * N]) and the rollout broadcasts over it
    if env_kind == "pendulum":
        model, guide = _pendulum(horizon=3)
    else:
        mdp = envs.gridworld(3, 3, slip=0.1)
        model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=4)
        guide = guides.TabularGuide(mdp, horizon=4, init_scale=1.0)
    N, P = 500, 8
    pyro.set_rng_seed(3)
    per_episode = TrajectoryELBO().terms(model, guide, 8 * N).costs.sum(0).detach().double()
    ours, se = -float(per_episode.mean()), float(per_episode.std()) / math.sqrt(8 * N)
    pyro.set_rng_seed(4)
    vectorized = Trace_ELBO(num_particles=P, vectorize_particles=True, max_plate_nesting=1)
    theirs = vectorized.loss(model, guide, N) / N  # P * N episodes: the same standard error
    assert abs(theirs - ours) < 5 * math.sqrt(2) * se, (theirs, ours, se)
    samples = pyro.infer.Predictive(model, guide=guide, num_samples=3, parallel=True, return_sites=["a_0"])(5)
    assert samples["a_0"].shape[:2] == (3, 5)


def test_predictive_of_return_says_what_to_ask_for_instead():
    mdp = envs.gridworld(3, 3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=4)
    guide = guides.TabularGuide(mdp, horizon=4)
    predictive = pyro.infer.Predictive(model, guide=guide, num_samples=2, return_sites=["_RETURN"])
    with pytest.raises(
        TypeError, match=r"got a Trajectory.*Predictive cannot stack it. Ask for the sample sites"
    ):
        predictive(5)
    samples = pyro.infer.Predictive(model, guide=guide, num_samples=2, return_sites=["a_0", "a_3"])(5)
    assert samples["a_0"].shape == samples["a_3"].shape == (2, 5)
    trajectory = pyro.poutine.trace(model).get_trace(5).nodes["_RETURN"]["value"]
    assert trajectory.actions.shape == (4, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("guide_kind", ["tabular", "open_loop"])
def test_every_site_has_the_mdps_dtype(guide_kind, dtype):
    # one dtype per model, the env's: TraceEnum_ELBO contracts all sites' log-probs in one einsum
    # (a float32 MDP used to keep float64 state sites from its float64 tables)
    mdp = envs.random_mdp(4, 2, seed=0, dtype=dtype)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3)
    guide = (
        guides.TabularGuide(mdp, horizon=3)
        if guide_kind == "tabular"
        else guides.OpenLoopGuide(mdp, horizon=3)
    )
    guide_trace = pyro.poutine.trace(guide).get_trace(5)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(5)
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and name != "episodes":
                assert site["fn"].log_prob(site["value"]).dtype == dtype, name
