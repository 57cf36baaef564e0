"""Trajectory models, priors and guides: structure, densities, custom models, learning, bad input."""

from __future__ import annotations

import math

import gymnasium as gym
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import rl_as_inference as rlai
from rl_as_inference import envs, guides, models
from rl_as_inference.envs.pendulum import angle_normalize

F64 = torch.float64


# ---------------------------------------------------------------------- structure
def test_model_sites_follow_the_convention_and_mask_after_termination():
    mdp = envs.gridworld(1, 3, goal=(0, 2))  # start (0,0); two steps right reach the terminal goal
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=4, alpha=0.5, gamma=0.9
    )
    right = torch.ones(2, dtype=torch.long)
    actions = {f"a_{t}": right for t in range(4)}
    trace = poutine.trace(poutine.condition(model, data=actions)).get_trace(2)
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "episodes"]
    assert names[:5] == ["s_0", "a_0", "O_0", "a_1", "O_1"]  # deterministic dynamics: no s_t sites
    assert models.parse_site("a_3") == ("action", 3) and models.parse_site("mass") == ("global", None)
    trace.compute_log_prob()
    # O_t = r / alpha under scale gamma^t while alive; steps after the goal (t >= 2) are masked out.
    assert trace.nodes["O_0"]["log_prob"].tolist() == pytest.approx([-2.0, -2.0])
    assert trace.nodes["O_1"]["log_prob"].tolist() == pytest.approx([-1.8, -1.8])
    assert trace.nodes["O_2"]["log_prob"].tolist() == [0.0, 0.0]
    assert trace.nodes["a_3"]["log_prob"].tolist() == [0.0, 0.0]
    traj = trace.nodes["_RETURN"]["value"]
    assert traj.alive.tolist() == [[True, True], [True, True], [False, False], [False, False]]
    assert traj.returns.tolist() == [-2.0, -2.0]
    assert traj.states[-1].tolist() == [2, 2]  # frozen at the terminal goal


def test_terminal_value_factor_is_discounted_like_a_reward():
    env = envs.make("Pendulum-v1", dtype=F64)
    model = models.TrajectoryModel(
        env,
        models.UniformPrior(env.action_space),
        horizon=2,
        alpha=2.0,
        gamma=0.5,
        terminal_value=lambda s: s[:, 1],
    )
    trace = poutine.trace(model).get_trace(3)
    trace.compute_log_prob()
    s2 = trace.nodes["_RETURN"]["value"].states[-1]
    torch.testing.assert_close(trace.nodes["O_2"]["log_prob"], 0.25 * s2[:, 1] / 2.0)


def test_init_state_is_shared_and_checked():
    env = envs.make("CartPole-v1")
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=2)
    init = env.reset(4, seed=0)
    traj = model(4, init)
    assert torch.equal(traj.states[0], init)
    with pytest.raises(ValueError, match=r"init_state has shape \(3, 4\); expected \[4, 4\]"):
        model(4, init[:3])


# ---------------------------------------------------------------------- priors
def test_uniform_prior_densities():
    pend = envs.make("Pendulum-v1")
    d = models.UniformPrior(pend.action_space).dist(pend.reset(5, seed=0), pend)
    assert d.batch_shape == (5,) and d.event_shape == (1,)
    assert d.log_prob(torch.full((5, 1), 2.0)).tolist() == pytest.approx([-math.log(4)] * 5)  # closed box
    assert d.log_prob(torch.full((5, 1), 2.5))[0] == -math.inf
    cart = envs.make("CartPole-v1")
    c = models.UniformPrior(cart.action_space).dist(cart.reset(3, seed=0), cart)
    assert c.log_prob(torch.tensor([0, 1, 1])).tolist() == pytest.approx([-math.log(2)] * 3)


def test_gaussian_and_policy_priors():
    pend = envs.make("Pendulum-v1")
    g = models.GaussianPrior(0.5).dist(pend.reset(2, seed=0), pend)
    assert g.log_prob(torch.zeros(2, 1)).tolist() == pytest.approx(
        [-math.log(0.5 * math.sqrt(2 * math.pi))] * 2
    )
    mdp = envs.chain(3)
    table = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    p = models.PolicyPrior(lambda s: torch.distributions.Categorical(probs=table[s]))
    d = p.dist(torch.tensor([0, 2]), mdp)
    assert isinstance(d, dist.Categorical)
    assert d.log_prob(torch.tensor([0, 1])).exp().tolist() == pytest.approx([0.9, 0.8])


# ---------------------------------------------------------------------- guides
def test_tanh_gaussian_density_has_the_right_log_determinant():
    env = envs.make("Pendulum-v1")
    torch.manual_seed(0)
    policy = guides.TanhGaussianMLP(env.observation_space, env.action_space, hidden=(8,))
    obs = env.observe(env.reset(4, seed=1))
    d = policy(obs)
    a = d.rsample()
    assert ((a >= -2) & (a <= 2)).all()
    # Change of variables by hand: a = 2 tanh(u), log q(a) = log N(u) - log|2 (1 - tanh(u)^2)|.
    base = torch.distributions.Independent(torch.distributions.Normal(d.loc, d.scale), 1)
    u = torch.atanh(a / 2)
    manual = base.log_prob(u) - torch.log(2 * (1 - torch.tanh(u) ** 2)).sum(-1)
    torch.testing.assert_close(d.log_prob(a), manual, rtol=1e-4, atol=1e-4)
    # The density integrates to one over the box (1-D numeric integral, one observation).
    grid = torch.linspace(-2 + 1e-4, 2 - 1e-4, 20001)[:, None]
    single = policy(obs[:1].expand(len(grid), 3))
    mass = torch.trapezoid(single.log_prob(grid).exp(), grid[:, 0])
    assert mass.item() == pytest.approx(1.0, abs=2e-3)
    assert policy.act(obs).shape == (4, 1)


def test_tabular_and_open_loop_guides():
    mdp = envs.random_mdp(4, 3, seed=0)
    g = guides.TabularGuide(mdp, horizon=5)
    g(2)
    assert g.policy().shape == (5, 4, 3) and torch.allclose(g.policy(), torch.full((5, 4, 3), 1 / 3))
    pend = envs.make("Pendulum-v1")
    o = guides.OpenLoopGuide(pend, horizon=3)
    trace = poutine.trace(o).get_trace(6)
    assert trace.nodes["a_2"]["value"].shape == (6, 1) and o.plan().shape == (3, 1)
    cart = guides.OpenLoopGuide(envs.make("CartPole-v1"), horizon=3)
    assert poutine.trace(cart).get_trace(6).nodes["a_0"]["value"].dtype == torch.long


def test_policy_guide_registers_its_network():
    env = envs.make("CartPole-v1")
    policy = guides.CategoricalMLP(env.observation_space, env.action_space, hidden=(16,))
    guide = guides.PolicyGuide(env, policy, horizon=3)
    guide(4)
    names = set(pyro.get_param_store().keys())
    assert {"policy$$$net.0.weight", "policy$$$net.2.bias"} <= names


# ---------------------------------------------------------------------- a user's own model
def pendulum_with_unknown_mass(horizon: int, alpha: float):
    """A custom trajectory model: Pendulum-v1 physics with a global latent mass m ~ LogNormal(0, 0.3),
    every episode starting at theta = 1 rad, at rest."""

    def step(state, u, mass):
        th, thdot = state.unbind(-1)
        u = u[..., 0].clamp(-2, 2)
        reward = -(angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2)
        thdot = (thdot + (15.0 * torch.sin(th) + 3.0 / mass * u) * 0.05).clamp(-8, 8)
        return torch.stack((th + thdot * 0.05, thdot), -1), reward

    def model(n):
        mass = pyro.sample("mass", dist.LogNormal(torch.tensor(0.0, dtype=F64), 0.3))
        with pyro.plate("episodes", n):
            state = torch.tensor([1.0, 0.0], dtype=F64).expand(n, 2)
            for t in range(horizon):
                action = pyro.sample(f"a_{t}", dist.Normal(torch.zeros(n, 1, dtype=F64), 2.0).to_event(1))
                state, reward = step(state, action, mass)
                pyro.factor(f"O_{t}", reward / alpha)

    def guide(n):
        loc = pyro.param("mass_loc", torch.tensor(0.0, dtype=F64))
        pyro.sample("mass", dist.LogNormal(loc, 0.3))
        plan = pyro.param("plan", torch.zeros(horizon, 1, dtype=F64))
        with pyro.plate("episodes", n):
            for t in range(horizon):
                pyro.sample(f"a_{t}", dist.Normal(plan[t].expand(n, 1), 0.3).to_event(1))

    return model, guide


def test_custom_model_with_a_global_latent_trains_with_fit():
    model, guide = pendulum_with_unknown_mass(horizon=10, alpha=1.0)
    loss = rlai.TrajectoryELBO()
    result = rlai.fit(
        model, guide, num_steps=150, num_episodes=64, lr=0.05, seed=0, progress=False, loss=loss
    )
    assert loss.last.global_cost.dim() == 0 and loss.last.costs.shape == (11, 64)  # rows 0..H
    assert math.isnan(result.returns[0])  # a plain function returns no Trajectory
    # It learns: the ELBO of the last 20 steps beats the first 5 by far more than its step-to-step noise.
    early, late = torch.tensor(result.elbo[:5]), torch.tensor(result.elbo[-20:])
    assert late.mean() - early.mean() > 5 * late.std()
    # The plan pushes the pole back up (negative torque from theta = 1), and the posterior over the
    # mass is "optimistic" (it bends the dynamics toward luck): a lighter pole gives the torque more authority.
    store = pyro.get_param_store()
    assert store["plan"][:3].mean() < -0.5
    assert store["mass_loc"] < 0
    with pytest.raises(ValueError, match="site 'mass' is a latent outside the episodes plate"):
        loss.log_weights(model, guide, 8)


# ---------------------------------------------------------------------- learning on the ports
def test_pendulum_pathwise_svi_improves_the_return_steadily():
    env = envs.make("Pendulum-v1")
    horizon = 30
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=horizon, alpha=1.0)
    torch.manual_seed(0)
    policy = guides.TanhGaussianMLP(env.observation_space, env.action_space, hidden=(32, 32))
    guide = guides.PolicyGuide(env, policy, horizon=horizon)
    result = rlai.fit(model, guide, num_steps=150, num_episodes=256, lr=3e-3, seed=0, progress=False)
    returns = torch.tensor(result.returns)
    blocks = returns.reshape(5, 30).mean(1)  # mean return of five consecutive blocks of 30 steps
    # Steady improvement: each block better than the first, the last far better. The return of
    # a 256-episode batch has a standard error of ~std/16 ~ 5 here; the gain is ~40.
    assert (blocks[1:] > blocks[0]).all(), blocks
    assert blocks[-1] - blocks[0] > 20, blocks


def test_cartpole_score_function_svi_improves_the_return():
    env = envs.make("CartPole-v1")
    horizon = 100
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=horizon, alpha=1.0)
    torch.manual_seed(0)
    policy = guides.CategoricalMLP(env.observation_space, env.action_space, hidden=(32,))
    guide = guides.PolicyGuide(env, policy, horizon=horizon)
    loss = rlai.TrajectoryELBO(baseline="mean")
    result = rlai.fit(
        model, guide, num_steps=80, num_episodes=256, lr=1e-2, seed=0, progress=False, loss=loss
    )
    first, last = sum(result.returns[:10]) / 10, sum(result.returns[-10:]) / 10
    assert last > 2 * first, (first, last)  # random play lasts ~22 steps


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(alpha=0.0), ValueError, "alpha must be positive and finite"),
        (dict(alpha=float("inf")), ValueError, "alpha must be positive and finite"),
        (dict(alpha="hot"), TypeError, "alpha must be a positive finite number"),
        (dict(gamma=0.0), ValueError, r"gamma must be in \(0, 1\]"),
        (dict(gamma=1.5), ValueError, r"gamma must be in \(0, 1\]"),
        (dict(horizon=0), ValueError, "horizon must be >= 1"),
        (dict(horizon=2.5), TypeError, "horizon must be an int"),
    ],
)
def test_bad_model_arguments(kwargs, error, match):
    mdp = envs.chain(3)
    args = dict(horizon=3) | kwargs
    with pytest.raises(error, match=match):
        models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), **args)


def test_prior_support_must_match_the_action_space():
    pend, cart = envs.make("Pendulum-v1"), envs.make("CartPole-v1")
    with pytest.raises(ValueError, match="UniformPrior is over Discrete"):
        models.TrajectoryModel(pend, models.UniformPrior(cart.action_space), horizon=2)
    with pytest.raises(ValueError, match="GaussianPrior needs continuous actions"):
        models.TrajectoryModel(cart, models.GaussianPrior(1.0), horizon=2)
    with pytest.raises(ValueError, match="bounded action space"):
        models.UniformPrior(gym.spaces.Box(-math.inf, math.inf, shape=(1,)))
    wrong = models.PolicyPrior(lambda s: dist.Normal(torch.zeros(s.shape[0]), 1.0))
    with pytest.raises(ValueError, match="PolicyPrior's fn gives a distribution with event shape"):
        models.TrajectoryModel(cart, wrong, horizon=2)(3)
    three = models.PolicyPrior(lambda s: dist.Categorical(logits=torch.zeros(s.shape[0], 3)))
    with pytest.raises(ValueError, match="Categorical over 3 actions, but the action space has 2"):
        models.TrajectoryModel(cart, three, horizon=2)(3)
    with pytest.raises(TypeError, match="prior must be UniformPrior"):
        models.TrajectoryModel(cart, "uniform", horizon=2)


def test_guide_distribution_must_match_the_action_space():
    cart = envs.make("CartPole-v1")
    pend = envs.make("Pendulum-v1")
    policy = guides.TanhGaussianMLP(pend.observation_space, pend.action_space)
    with pytest.raises(TypeError, match="CategoricalMLP needs a Discrete action space"):
        guides.CategoricalMLP(pend.observation_space, pend.action_space)
    guide = guides.PolicyGuide(cart, torch.nn.Sequential(policy), horizon=2)
    with pytest.raises(Exception, match="."):
        guide(3)
    with pytest.raises(TypeError, match="TabularGuide needs an envs.TabularMDP"):
        guides.TabularGuide(cart, horizon=2)


def test_tanh_gaussian_log_prob_stays_finite_when_the_action_saturates():
    # float32 tanh rounds to exactly +-1 for |u| > ~9: the log-density must come from the cached u
    # (through both transforms), not from atanh(+-1) = inf.
    env = envs.make("Pendulum-v1")
    policy = guides.TanhGaussianMLP(env.observation_space, env.action_space, hidden=(8,))
    with torch.no_grad():
        policy.net[-1].bias[0] = 30.0
    d = policy(torch.zeros(4, 3))
    fresh = d.log_prob(d.rsample())  # the cached pre-tanh value: the exact density
    stored = d.rsample().detach().clone()  # a copy, as from a replay buffer: goes through atanh
    assert (stored == 2.0).all()
    assert torch.isfinite(fresh).all() and torch.isfinite(d.log_prob(stored)).all()


def test_two_policy_guides_under_one_name_are_refused():
    env = envs.make("Pendulum-v1")
    first = guides.PolicyGuide(
        env, guides.TanhGaussianMLP(env.observation_space, env.action_space), horizon=2
    )
    first.register()
    second = guides.PolicyGuide(
        env, guides.TanhGaussianMLP(env.observation_space, env.action_space), horizon=2
    )
    with pytest.raises(
        ValueError, match="another module is already registered in Pyro's param store as 'policy'"
    ):
        second.register()
    first.register()  # the same module again is fine
    pyro.clear_param_store()
    second.register()  # a cleared store frees the name
