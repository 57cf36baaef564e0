"""Pyro's own inference machinery on the library's models and guides."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

import rl_as_inference as rlai
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
    for kwargs in ({"num_samples": 1}, {"num_samples": 2, "return_sites": ["_RETURN", "a_0"]}):
        with pytest.raises(TypeError, match="Ask for the sample sites"):
            pyro.infer.Predictive(model, guide=guide, **{"return_sites": ["_RETURN"], **kwargs})(5)
    # parallel=True stacks nothing: the vectorized model's Trajectory comes back as it is
    parallel = pyro.infer.Predictive(
        model, guide=guide, num_samples=2, parallel=True, return_sites=["_RETURN"]
    )
    assert parallel(5)["_RETURN"].actions.shape == (4, 2, 5)
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


def _gaussian_under_uniform(beyond_box: str, horizon: int = 3):
    env = envs.make("Pendulum-v1")
    torch.manual_seed(0)
    policy = guides.GaussianMLP(env.observation_space, env.action_space, hidden=(16,))
    prior = models.UniformPrior(env.action_space, beyond_box=beyond_box)
    model = models.TrajectoryModel(env, prior, horizon=horizon)
    return model, guides.PolicyGuide(env, policy, horizon=horizon), env


def test_analytic_kl_to_the_flat_box_prior_is_minus_entropy_plus_log_volume():
    # KL(q || flat) = E_q[log q] - log(1 / vol) = -H(q) + log vol, for any q; torch's own
    # (Normal, Uniform) rule said +inf, ignoring the flat extension.
    env = envs.make("Pendulum-v1")
    state = env.reset(6, generator=torch.Generator().manual_seed(0))
    flat = models.UniformPrior(env.action_space, beyond_box="flat").dist(state, env)
    proper = models.UniformPrior(env.action_space).dist(state, env)
    q = pyro.distributions.Normal(torch.linspace(-3, 3, 6)[:, None], torch.full((6, 1), 0.7)).to_event(1)
    volume = float(env.action_space.high[0] - env.action_space.low[0])  # one action dimension
    expected = -q.entropy() + math.log(volume)
    torch.testing.assert_close(torch.distributions.kl_divergence(q, flat), expected)
    assert torch.isinf(torch.distributions.kl_divergence(q, proper)).all()  # q has mass beyond the box
    inside = pyro.distributions.Uniform(torch.full((6, 1), -1.0), torch.full((6, 1), 1.5)).to_event(1)
    torch.testing.assert_close(
        torch.distributions.kl_divergence(inside, proper), torch.full((6,), math.log(volume / 2.5))
    )


def test_mean_field_and_trajectory_elbos_are_finite_for_a_gaussian_under_the_flat_prior():
    model, guide, _ = _gaussian_under_uniform("flat")
    N, H = 512, 3
    pyro.set_rng_seed(5)
    analytic = TraceMeanField_ELBO().loss(model, guide, N)
    pyro.set_rng_seed(5)
    sampled = Trace_ELBO().loss(model, guide, N)  # the same actions: only the KL estimate differs
    # Per site, analytic KL minus the sampled log q(a) - log pi = -(z^2 - 1) / 2 for the Gaussian's
    # standard score z (one action dim): mean 0, variance 1/2, so the sum over N*H sites has
    # standard deviation sqrt(N H / 2); 5 of them.
    assert math.isfinite(analytic) and math.isfinite(sampled)
    assert abs(analytic - sampled) < 5 * math.sqrt(N * H / 2), (analytic, sampled)
    pyro.set_rng_seed(5)
    ours = TrajectoryELBO().loss(model, guide, N)  # analytic KL by default, mean over episodes
    assert abs(ours * N - analytic) < 1e-3 * abs(analytic), (ours * N, analytic)


@pytest.mark.parametrize("fused", ["auto", False])
def test_a_gaussian_guide_under_the_proper_box_uniform_is_refused_with_what_to_use(fused):
    # Its KL is +inf for every parameter value: the loss said inf, and SVI could do nothing about it.
    model, guide, _ = _gaussian_under_uniform("impossible")
    message = r"site 'a_0': the guide's Normal has support on the whole real line.*beyond_box='flat'"
    with pytest.raises(ValueError, match=message):
        TrajectoryELBO(fused=fused).loss(model, guide, 8)
    with pytest.raises(ValueError, match=message):
        rlai.fit(model, guide, num_steps=1, num_episodes=8, progress=False)
    squashed = guides.PolicyGuide(
        model.env,
        guides.TanhGaussianMLP(model.env.observation_space, model.env.action_space, hidden=(8,)),
        horizon=3,
        name="squashed",
    )
    assert math.isfinite(TrajectoryELBO(fused=fused).loss(model, squashed, 8))
