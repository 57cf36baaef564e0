"""The site ledger: every site booked where its credit is unbiased, in the traced and the fused pass alike.

Each test here compares a Monte-Carlo gradient or weight with an exact value computed independently
(quadrature, enumeration, exact inference), with tolerances in standard errors of the estimate.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import rl_as_inference as rlai
from rl_as_inference import envs, exact, guides, models
from rl_as_inference.envs.base import FunctionalEnv, Step

F64 = torch.float64


class CoinEnv(FunctionalEnv):
    """s' ~ Bernoulli(sigmoid(3 a)) given a continuous action a in [-1, 1]; reward r_t = s_t.

    The transition is a non-reparameterized site whose law depends on a pathwise action: its
    score-function term is the only way the reward of the next step reaches the action.
    """

    id = "Coin-v0"
    state_shape = (1,)
    reset_low, reset_high = (0.0,), (0.0,)
    differentiable = True
    stochastic = True

    def __init__(self):
        super().__init__(dtype=F64)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float64)

    def transition_dist(self, state, action):
        return dist.Bernoulli(logits=3.0 * action).to_event(1)

    def step(self, state, action, next_state=None):
        if next_state is None:
            next_state = self.transition_dist(state, action).sample()
        done = torch.zeros(state.shape[:-1], dtype=torch.bool, device=state.device)
        return Step(next_state, state[..., 0], done)

    def _observe(self, state):
        return state


ALPHA, GAMMA = 0.5, 0.9


def coin_setup():
    env = CoinEnv()
    model = models.TrajectoryModel(
        env, models.UniformPrior(env.action_space), horizon=2, alpha=ALPHA, gamma=GAMMA
    )
    guide = guides.OpenLoopGuide(env, horizon=2, init_std=0.7, gamma=GAMMA)
    pyro.clear_param_store()
    guide(1)
    store = pyro.get_param_store()
    store["open_loop.loc"] = torch.tensor([[0.3], [-0.2]], dtype=F64)
    return env, model, guide


def coin_truth() -> float:
    """dELBO/dloc_0 by Gauss-Hermite quadrature over u_0 ~ N(loc_0, sd_0), a_0 = tanh(u_0).

    ELBO = [r_0 / alpha - KL_0] + gamma [E r_1 / alpha - KL_1], r_0 = s_0 = 0, E r_1 = E sigmoid(3 a_0),
    and -KL(q_0 || U[-1, 1]) = H(u_0) + E log(1 - tanh(u_0)^2) - log 2: only E sigmoid(3 a_0) and
    E log(1 - a_0^2) depend on loc_0.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)  # E f(Z) = sum w f(z) / sqrt(2 pi)
    loc = torch.tensor(0.3, dtype=F64, requires_grad=True)
    u = loc + 0.7 * torch.as_tensor(nodes, dtype=F64)
    a = torch.tanh(u)
    w = torch.as_tensor(weights, dtype=F64) / math.sqrt(2 * math.pi)
    log_jacobian = 2 * (math.log(2.0) - u - torch.nn.functional.softplus(-2 * u))  # log(1 - tanh(u)^2)
    elbo = (w * (GAMMA * torch.sigmoid(3 * a) / ALPHA + log_jacobian)).sum()
    elbo.backward()
    return float(loc.grad)


def loc0_gradients(model, guide, loss, reps: int, n: int) -> torch.Tensor:
    store = pyro.get_param_store()
    out = []
    for _ in range(reps):
        for p in store.values():
            p.unconstrained().grad = None
        loss.loss_and_grads(model, guide, n, torch.zeros(n, 1, dtype=F64))
        out.append(-store["open_loop.loc"].unconstrained().grad[0, 0].item())
    return torch.tensor(out, dtype=F64)


class LinearValue(torch.nn.Module):
    """A deliberately state-dependent baseline V(s_t, t) = 5 s_t (shape ``[H, N]``)."""

    def forward(self, states, times):
        return 5.0 * states[..., 0]


@pytest.mark.parametrize("baseline", ["none", "mean", "value"])
def test_fused_and_traced_credit_a_stochastic_transition_through_its_score(baseline):
    """Fails on the code before the ledger: the fused pass dropped the transition's score term
    (its estimate missed gamma dE[r_1]/dloc_0 entirely), and baseline='value' baselined s_1's
    score with V(s_1), which depends on s_1 itself (biased)."""
    truth = coin_truth()
    estimates = {}
    for fused in (True, False):
        env, model, guide = coin_setup()
        pyro.set_rng_seed(0)
        base = LinearValue() if baseline == "value" else baseline
        loss = rlai.TrajectoryELBO(fused=fused, baseline=base, reduction="mean")
        g = loc0_gradients(model, guide, loss, reps=40, n=2048)
        estimates[fused] = g
        # Unbiased: within 4 standard errors of the quadrature truth (truth about 0.4 here; the
        # score term alone is about 0.6 of it).
        se = g.std().item() / math.sqrt(len(g))
        assert abs(g.mean().item() - truth) < 4 * se, (fused, g.mean().item(), truth, se)
    # The same random numbers give the same estimates in both passes.
    torch.testing.assert_close(estimates[True], estimates[False], rtol=1e-6, atol=1e-9)


def test_value_baseline_with_one_step_and_no_terminal_factor_is_finite():
    """Fails on the code before the ledger: one cost row made ValueBaseline divide 0 by 0."""
    env = envs.make("CartPole-v1")
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=1)
    torch.manual_seed(0)
    policy = guides.CategoricalMLP(env.observation_space, env.action_space, (8,))
    guide = guides.PolicyGuide(env, policy, horizon=1, name="one_step")
    loss = rlai.TrajectoryELBO(baseline="value")
    pyro.clear_param_store()
    value = loss.loss_and_grads(model, guide, 16)
    assert math.isfinite(value)
    grads = [p.grad for p in policy.parameters()] + [p.grad for p in loss.value_baseline.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def tabular_with_observation(mdp, horizon: int, y: float):
    """A custom model: the built-in trajectory model plus an observation y ~ N(s_H, 1) outside the
    site convention (say a sensor reading at the end of the episode)."""
    base = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=horizon, alpha=1.0)

    def model(n):
        traj = base(n)  # the plate "episodes" is the built-in model's; y keeps its batch shape [n]
        pyro.sample("y", dist.Normal(traj.states[-1].to(F64), 1.0), obs=torch.full((n,), y, dtype=F64))

    return model


def exact_elbo_with_observation(mdp, logits, horizon: int, y: float) -> torch.Tensor:
    """E_q[sum_t R + log pi - log q + log N(y; s_H, 1)] by forward propagation (no terminal states)."""
    q, log_q = torch.softmax(logits, -1), torch.log_softmax(logits, -1)
    log_pi = -math.log(mdp.num_actions)
    d = mdp.initial.clone()
    total = torch.zeros((), dtype=F64)
    for t in range(horizon):
        total = total + (d * (q[t] * (mdp.reward.double() - (log_q[t] - log_pi))).sum(-1)).sum()
        d = torch.einsum("s,sa,sat->t", d, q[t], mdp.transition)
    states = torch.arange(mdp.num_states, dtype=F64)
    return total + (d * dist.Normal(states, 1.0).log_prob(torch.tensor(y, dtype=F64))).sum()


def test_an_observation_outside_the_convention_is_credited_to_every_action():
    """Fails on the code before the ledger: the observation was booked at row 0, so the score terms
    of a_1, a_2 never saw it and their gradient estimates were biased."""
    mdp = envs.random_mdp(4, 2, seed=1, deterministic=True)
    assert not bool(mdp.terminal.any())
    horizon, y = 3, 3.0
    model = tabular_with_observation(mdp, horizon, y)
    guide = guides.TabularGuide(mdp, horizon=horizon)
    logits = torch.randn(horizon, 4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact_logits = logits.clone().requires_grad_()
    exact_elbo_with_observation(mdp, exact_logits, horizon, y).backward()
    truth = exact_logits.grad
    pyro.clear_param_store()
    pyro.get_param_store()["tabular_guide.logits"] = logits.clone()
    pyro.set_rng_seed(0)
    loss = rlai.TrajectoryELBO(reduction="sum", baseline="none")
    reps, n = 150, 128
    grads = []
    for _ in range(reps):
        param = pyro.get_param_store()["tabular_guide.logits"]
        param.grad = None
        loss.loss_and_grads(model, guide, n)
        grads.append(-param.grad.detach().clone() / n)
    grads = torch.stack(grads)
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(reps)
    # 24 entries at 4 standard errors (a false alarm in about 1 of 650 runs; the seed is fixed).
    assert ((mean - truth).abs() <= 4 * se + 1e-9).all(), ((mean - truth) / se).abs().max()


def test_stock_trace_elbo_computes_the_discounted_elbo():
    """Step t's sites run under poutine.scale(gamma**t) in model and guide, so Pyro's own
    Trace_ELBO gives the same value as TrajectoryELBO (Monte-Carlo KL, summed over episodes).
    float64, so that the three sums differ by their order of summation only (~1e-15 relative;
    in float32 that order alone moves the sum of ~10^3 terms by ~1e-6)."""
    mdp = envs.random_mdp(5, 3, seed=2, dtype=torch.float64)
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=4, alpha=ALPHA, gamma=GAMMA
    )
    guide = guides.TabularGuide(mdp, horizon=4, init_scale=1.0, gamma=GAMMA)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide(1)
    trace = poutine.trace(model).get_trace(3)
    assert trace.nodes["a_2"]["scale"] == pytest.approx(GAMMA**2)
    assert trace.nodes["O_3"]["scale"] == pytest.approx(GAMMA**3)
    assert trace.nodes["s_3"]["scale"] == pytest.approx(GAMMA**2)  # drawn by step 2
    values = []
    for loss in (
        pyro.infer.Trace_ELBO(),
        rlai.TrajectoryELBO(reduction="sum", analytic_kl=False, fused=False),
        rlai.TrajectoryELBO(reduction="sum", analytic_kl=False, fused=True),
    ):
        pyro.set_rng_seed(1)
        values.append(loss.loss(model, guide, 64))
    assert values[0] == pytest.approx(values[1], rel=1e-10) and values[1] == pytest.approx(
        values[2], rel=1e-10
    )
    # And that value estimates exact.elbo_of of the same policy, with its discounted KL.
    q = guide.policy()
    truth = exact.elbo_of(mdp, q, horizon=4, alpha=ALPHA, gamma=GAMMA)
    pyro.set_rng_seed(2)
    terms = rlai.TrajectoryELBO().terms(model, guide, 20_000)
    per_episode = terms.costs.sum(0)
    assert abs(per_episode.mean().item() - truth) < 4 * per_episode.std().item() / math.sqrt(20_000)


def test_a_guide_must_share_the_models_continuation_probability():
    mdp = envs.random_mdp(3, 2, seed=0)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3, gamma=0.9)
    guide = guides.TabularGuide(mdp, horizon=3)  # gamma 1: a different death time
    for fused in (True, False):
        with pytest.raises(ValueError, match="build the guide with the model's gamma"):
            rlai.TrajectoryELBO(fused=fused).loss(model, guide, 4)


def test_pathwise_estimator_refuses_an_env_that_is_not_pathwise_differentiable():
    env = envs.make("Pendulum-v1")
    env.differentiable = False
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=2)
    guide = guides.OpenLoopGuide(env, horizon=2)
    with pytest.raises(
        ValueError, match="estimator='pathwise' but Pendulum-v1 is not pathwise-differentiable"
    ):
        rlai.TrajectoryELBO(estimator="pathwise").loss(model, guide, 4)


def test_inconsistent_scales_within_a_step_are_named():
    mdp = envs.random_mdp(3, 2, seed=0)

    def model(n):
        with pyro.plate("episodes", n, dim=-1):
            s = pyro.sample("s_0", dist.Categorical(probs=mdp.initial).expand([n]))
            with poutine.scale(scale=0.5):
                a = pyro.sample("a_0", dist.Categorical(logits=torch.zeros(2)).expand([n]))
            pyro.factor("O_0", mdp.reward[s, a])

    with pytest.raises(ValueError, match="site 'a_0' runs under scale 0.5 but site 's_0'"):
        rlai.TrajectoryELBO().log_weights(model, model, 4)
