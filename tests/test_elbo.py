"""TrajectoryELBO against exact inference and Pyro's TraceGraph_ELBO."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import rl_as_inference as rlai
from rl_as_inference import envs, exact, guides, models
from rl_as_inference.envs.base import FunctionalEnv, Step

F64 = torch.float64


def set_tabular_policy(guide: guides.TabularGuide, logits: torch.Tensor) -> None:
    pyro.get_param_store()[f"{guide.name}.logits"] = logits.detach().clone()


def exact_elbo_differentiable(mdp, logits, *, horizon, alpha, gamma, prior=None):
    """The exact ELBO of softmax(logits) by forward propagation, differentiable in the logits:
    sum_t gamma^t E_{d_t}[ E_q[R / alpha] - KL(q_t || pi) ] (gamma a continuation probability)."""
    q = torch.softmax(logits, -1)
    log_q = torch.log_softmax(logits, -1)
    log_pi = torch.full_like(log_q[0], -math.log(mdp.num_actions)) if prior is None else prior.log()
    P, R = mdp.transition, mdp.reward.double()
    alive = mdp.initial.clone()
    total = torch.zeros((), dtype=F64)
    for t in range(horizon):
        step = gamma**t * (q[t] * (R / alpha - (log_q[t] - log_pi))).sum(-1)
        total = total + (alive * step).sum()
        nxt = torch.einsum("s,sa,sat->t", alive, q[t], P)
        alive = nxt * (~mdp.terminal).double()
    return total


CASES = {
    "random-stochastic-uniform": dict(
        mdp=lambda: envs.random_mdp(5, 3, seed=2), alpha=0.5, gamma=0.9, prior=False
    ),
    "gridworld-slip-terminal": dict(
        mdp=lambda: envs.gridworld(3, 3, slip=0.2), alpha=1.0, gamma=1.0, prior=False
    ),
    "random-det-policy-prior": dict(
        mdp=lambda: envs.random_mdp(5, 3, seed=3, deterministic=True), alpha=0.3, gamma=0.95, prior=True
    ),
}


def build(case, horizon, seed=0):
    mdp = case["mdp"]()
    gen = torch.Generator().manual_seed(seed)
    table = torch.softmax(torch.randn(mdp.num_states, mdp.num_actions, generator=gen, dtype=F64), -1)
    prior = (
        models.PolicyPrior(lambda s: torch.distributions.Categorical(probs=table[s]))
        if case["prior"]
        else models.UniformPrior(mdp.action_space)
    )
    model = models.TrajectoryModel(mdp, prior, horizon=horizon, alpha=case["alpha"], gamma=case["gamma"])
    guide = guides.TabularGuide(mdp, horizon=horizon, gamma=case["gamma"])
    logits = torch.randn(horizon, mdp.num_states, mdp.num_actions, generator=gen, dtype=F64)
    return mdp, model, guide, logits, (table if case["prior"] else None)


def test_differentiable_reference_matches_exact_module():
    case = CASES["gridworld-slip-terminal"]
    mdp, _, _, logits, prior = build(case, 4)
    ref = exact_elbo_differentiable(mdp, logits, horizon=4, alpha=case["alpha"], gamma=case["gamma"])
    value = exact.elbo_of(mdp, torch.softmax(logits, -1), horizon=4, alpha=case["alpha"], gamma=case["gamma"])
    assert ref.item() == pytest.approx(value, abs=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("analytic_kl", [True, False])
def test_value_matches_exact_elbo_of_fixed_policy(name, analytic_kl):
    case = CASES[name]
    horizon = 4
    mdp, model, guide, logits, prior = build(case, horizon)
    set_tabular_policy(guide, logits)
    pyro.set_rng_seed(0)
    loss = rlai.TrajectoryELBO(analytic_kl=analytic_kl)
    n = 20_000
    with torch.no_grad():
        terms = loss.terms(model, guide, n)
    per_episode = terms.costs.sum(0)
    estimate = per_episode.mean().item()
    assert terms.elbo.item() == pytest.approx(estimate, rel=1e-9, abs=1e-12)
    se = per_episode.std().item() / math.sqrt(n)
    truth = exact.elbo_of(
        mdp, torch.softmax(logits, -1), horizon=horizon, alpha=case["alpha"], gamma=case["gamma"], prior=prior
    )
    # Unbiased estimate of the exact ELBO: within 3 standard errors (a 0.3% false alarm rate).
    assert abs(estimate - truth) < 3 * se, (estimate, truth, se)


def test_log_weights_are_per_episode_and_unbiased_for_the_evidence():
    case = CASES["random-stochastic-uniform"]  # gamma 0.9: the death time is marginalized
    mdp, model, guide, logits, prior = build(case, 3)
    set_tabular_policy(guide, logits)
    pyro.set_rng_seed(1)
    n = 20_000
    w = rlai.TrajectoryELBO().log_weights(model, guide, n)
    assert w.shape == (n,) and not w.requires_grad
    kw = dict(horizon=3, alpha=case["alpha"], gamma=case["gamma"])
    log_z = exact.log_evidence(mdp, **kw)
    # E_q[w] = p(O): the normalized weights average to 1 within 4 standard errors.
    ratio = torch.exp(w - log_z)
    assert abs(ratio.mean().item() - 1) < 4 * ratio.std().item() / math.sqrt(n), ratio.mean()
    # mean(log w) is a lower bound of log p(O) at least as tight as the ELBO (Jensen over the death
    # time); here it is strictly tighter, by far more than its standard error.
    elbo = exact.elbo_of(mdp, torch.softmax(logits, -1), **kw)
    se = w.std().item() / math.sqrt(n)
    assert elbo + 4 * se < w.mean().item() < log_z
    # The discounted sum of log ratios, a weight that ignores the death time, is not unbiased.
    ledger = rlai.TrajectoryELBO()._ledger(model, guide, (n,), {}, kl=False)[0]
    biased = torch.exp(ledger.elbo_terms() - log_z)
    assert abs(ledger.elbo_terms().mean().item() - elbo) < 4 * ledger.elbo_terms().std().item() / math.sqrt(n)
    assert abs(biased.mean().item() - 1) > 10 * biased.std().item() / math.sqrt(n)


def _gradient(loss, model, guide, n) -> torch.Tensor:
    store = pyro.get_param_store()
    name = f"{guide.name}.logits"
    param = store[name]
    param.grad = None
    if isinstance(loss, rlai.TrajectoryELBO):
        loss.loss_and_grads(model, guide, n)
    else:
        loss.loss_and_grads(model, guide, n)
    return param.grad.detach().clone()


def test_gradient_equals_tracegraph_and_exact_in_expectation():
    mdp = envs.random_mdp(3, 2, seed=5)  # small: T * S * A = 18 gradient entries
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=3, alpha=0.7, gamma=0.9
    )
    guide = guides.TabularGuide(mdp, horizon=3, gamma=0.9)
    logits = torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact_logits = logits.clone().requires_grad_()
    exact_elbo_differentiable(mdp, exact_logits, horizon=3, alpha=0.7, gamma=0.9).backward()
    truth = exact_logits.grad
    reps, n = 150, 128
    estimates = {}
    for label, loss in (
        ("analytic KL", rlai.TrajectoryELBO(reduction="sum", baseline="none", analytic_kl=True)),
        ("Monte-Carlo KL", rlai.TrajectoryELBO(reduction="sum", baseline="none", analytic_kl=False)),
        ("TraceGraph_ELBO", pyro.infer.TraceGraph_ELBO()),
    ):
        pyro.clear_param_store()
        set_tabular_policy(guide, logits)
        pyro.set_rng_seed(2)
        grads = torch.stack([-_gradient(loss, model, guide, n) / n for _ in range(reps)])
        estimates[label] = (grads.mean(0), grads.std(0) / math.sqrt(reps))
    # All three are unbiased estimates of the exact per-episode gradient. 18 entries at 4 standard
    # errors: a false alarm in roughly 1 of 900 runs; the fixed seed makes the run deterministic.
    for label, (mean, se) in estimates.items():
        assert ((mean - truth).abs() <= 4 * se + 1e-9).all(), (label, (mean - truth) / se)
    tg, se_tg = estimates["TraceGraph_ELBO"]
    for label in ("analytic KL", "Monte-Carlo KL"):
        mean, se = estimates[label]
        assert ((mean - tg).abs() <= 4 * (se**2 + se_tg**2).sqrt() + 1e-9).all(), label


def test_baselines_reduce_variance_without_bias():
    mdp = envs.chain(4, slip=0.1)
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=6, alpha=0.2, gamma=1.0
    )
    guide = guides.TabularGuide(mdp, horizon=6)
    logits = torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact_logits = logits.clone().requires_grad_()
    exact_elbo_differentiable(mdp, exact_logits, horizon=6, alpha=0.2, gamma=1.0).backward()
    truth = exact_logits.grad
    reps, n = 200, 64
    spread = {}
    for baseline in ("none", "mean", "value"):
        pyro.clear_param_store()
        set_tabular_policy(guide, logits)
        pyro.set_rng_seed(3)
        loss = rlai.TrajectoryELBO(reduction="sum", baseline=baseline)
        _gradient(loss, model, guide, n)  # builds the value network for baseline="value"
        if baseline == "value":
            # The policy stays fixed here, so train the value baseline by itself, as SVI would.
            value_opt = torch.optim.Adam(loss.value_baseline.parameters(), lr=0.01)
        samples = []
        for _ in range(reps):
            if baseline == "value":
                value_opt.zero_grad()
            samples.append(-_gradient(loss, model, guide, n) / n)
            if baseline == "value":
                value_opt.step()
        grads = torch.stack(samples)
        mean, se = grads.mean(0), grads.std(0) / math.sqrt(reps)
        # The first steps of the running and learned baselines are still warming up: still unbiased.
        assert ((mean - truth).abs() <= 4.5 * se + 1e-9).all(), (baseline, ((mean - truth) / se).abs().max())
        spread[baseline] = grads.var(0).sum().item()
    assert spread["mean"] < spread["none"]
    assert spread["value"] < spread["none"]


# ---------------------------------------------------------------------- continuous: pathwise vs score
def test_pathwise_and_score_function_agree_on_pendulum():
    env = envs.make("Pendulum-v1", dtype=F64)
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=3, alpha=2.0)
    guide = guides.OpenLoopGuide(env, horizon=3, init_std=0.5)
    pyro.set_rng_seed(0)
    init = env.reset(1, seed=0)

    def grads(estimator, reps, n):
        loss = rlai.TrajectoryELBO(estimator=estimator, reduction="mean", baseline="mean")
        out = []
        for _ in range(reps):
            store = pyro.get_param_store()
            for p in store.values():
                p.unconstrained().grad = None
            loss.loss_and_grads(model, guide, n, init.expand(n, 2))
            out.append(store["open_loop.loc"].unconstrained().grad.clone())
        g = torch.stack(out)[10:]  # skip the running baseline's warm-up
        return g.mean(0), g.std(0) / math.sqrt(len(g))

    guide(1)  # create the parameters
    path, se_path = grads("pathwise", 60, 256)
    score, se_score = grads("score", 60, 4096)
    assert ((path - score).abs() <= 4 * (se_path**2 + se_score**2).sqrt()).all(), (
        path,
        score,
        se_path,
        se_score,
    )
    # The pathwise estimate is far less noisy per episode (that is the point of differentiable dynamics).
    assert (se_path * math.sqrt(256) < se_score * math.sqrt(4096)).all()


def test_auto_estimator_uses_score_function_for_non_differentiable_envs():
    env = envs.make("Pendulum-v1")
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=2)
    guide = guides.OpenLoopGuide(env, horizon=2)
    loss = rlai.TrajectoryELBO()
    _, g = loss._traces(model, guide, (8,), {})
    assert g.nodes["a_0"]["fn"].has_rsample
    env.differentiable = False
    _, g = loss._traces(model, guide, (8,), {})
    assert not g.nodes["a_0"]["fn"].has_rsample
    _, g = rlai.TrajectoryELBO(estimator="pathwise")._traces(model, guide, (8,), {})
    assert g.nodes["a_0"]["fn"].has_rsample


# ---------------------------------------------------------------------- bad input
def test_guide_missing_an_action_site_is_an_error():
    mdp = envs.chain(3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=2)

    def short_guide(n):
        with pyro.plate("episodes", n):
            pyro.sample("s_0", dist.Categorical(probs=mdp.initial).expand([n]))
            pyro.sample("a_0", dist.Categorical(logits=torch.zeros(2)).expand([n]))

    with pytest.raises(ValueError, match="the guide has no site 'a_1'"):
        rlai.TrajectoryELBO().loss(model, short_guide, 4)


class NaNAfterTwo(FunctionalEnv):
    """A counter whose reward turns NaN at state 2 (a buggy user environment)."""

    id = "Counter-NaN"
    state_shape = (1,)
    reset_low, reset_high = (0.0,), (0.0,)
    differentiable = True

    def __init__(self):
        super().__init__(dtype=F64)
        import gymnasium as gym

        self.observation_space = gym.spaces.Box(-10, 10, shape=(1,))
        self.action_space = gym.spaces.Box(-1, 1, shape=(1,))

    def _step(self, state, action):
        reward = torch.where(
            state[..., 0] >= 2, torch.full_like(state[..., 0], float("nan")), -(action[..., 0] ** 2)
        )
        return Step(state + 1, reward.to(F64), torch.zeros_like(state[..., 0], dtype=torch.bool))

    def _observe(self, state):
        return state


def test_nan_reward_names_the_step():
    env = NaNAfterTwo()
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=4)
    guide = guides.OpenLoopGuide(env, horizon=4)
    # named by the env's step check, with the rollout's step and site
    with pytest.raises(ValueError, match=r"non-finite reward nan .*at step 2 of the rollout: sites a_2, O_2"):
        rlai.TrajectoryELBO().loss_and_grads(model, guide, 8)


class NaNAfterTwoUnchecked(NaNAfterTwo):
    """The same env with its own ``step`` (as TabularMDP has): no reward check in between."""

    def step(self, state, action):
        return self._step(state, action)


def test_a_nan_reward_that_reaches_the_elbo_names_the_step():
    env = NaNAfterTwoUnchecked()
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=4)
    guide = guides.OpenLoopGuide(env, horizon=4)
    with pytest.raises(ValueError, match="step 2 is NaN.*O_2"):
        rlai.TrajectoryELBO().loss_and_grads(model, guide, 8)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(estimator="magic"), ValueError, "estimator='magic' is not allowed"),
        (dict(baseline="median"), ValueError, "baseline='median' is not allowed"),
        (dict(baseline=3), TypeError, "baseline must be one of"),
        (dict(reduction="max"), ValueError, "reduction='max' is not allowed"),
        (dict(baseline_decay=1.0), ValueError, "baseline_decay must be in"),
    ],
)
def test_bad_loss_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        rlai.TrajectoryELBO(**kwargs)


def test_works_inside_pyro_svi_and_predictive():
    mdp = envs.gridworld(3, 3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=6)
    guide = guides.TabularGuide(mdp, horizon=6)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=rlai.TrajectoryELBO())
    first = svi.step(64)
    assert math.isfinite(first)
    samples = pyro.infer.Predictive(model, guide=guide, num_samples=2, return_sites=["a_0", "a_5"])(16)
    assert samples["a_0"].shape == (2, 16) and samples["a_5"].shape == (2, 16)
    trace = poutine.trace(guide).get_trace(5)
    assert {"s_0", "a_0", "a_5"} <= set(trace.nodes) and "s_1" not in trace.nodes
    slippery = envs.gridworld(3, 3, slip=0.1)
    trace = poutine.trace(guides.TabularGuide(slippery, horizon=6, name="slippery")).get_trace(5)
    assert {"s_0", "a_0", "s_1", "a_5", "s_6"} <= set(trace.nodes)  # stochastic dynamics: s_t are sites


# ---------------------------------------------------------------------- fused evaluation
def _fused_vs_traced(model, guide, n, **loss_kwargs):
    out = {}
    for fused in (True, False):
        pyro.set_rng_seed(7)
        store = pyro.get_param_store()
        loss = rlai.TrajectoryELBO(fused=fused, **loss_kwargs)
        for p in store.values():
            p.unconstrained().grad = None
        value = loss.loss_and_grads(model, guide, n)
        grads = {
            k: v.unconstrained().grad.clone() for k, v in store.items() if v.unconstrained().grad is not None
        }
        out[fused] = (value, loss.last.costs.detach(), grads)
    return out


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_fused_pass_equals_tracing_on_a_stochastic_mdp_with_termination(analytic_kl):
    mdp = envs.gridworld(3, 3, slip=0.2)
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=6, alpha=0.5, gamma=0.9
    )
    guide = guides.TabularGuide(mdp, horizon=6, init_scale=1.0, gamma=0.9)
    pyro.set_rng_seed(0)
    guide(1)
    out = _fused_vs_traced(model, guide, 64, analytic_kl=analytic_kl, baseline="none")
    (v1, c1, g1), (v0, c0, g0) = out[True], out[False]
    # Same random numbers, same estimator: equal up to the order of floating-point sums.
    assert v1 == pytest.approx(v0, rel=1e-6)
    torch.testing.assert_close(c1.double(), c0.double(), rtol=1e-5, atol=1e-5)  # dtypes may differ
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6)


def test_fused_pass_equals_tracing_with_networks_and_value_baseline():
    env = envs.make("CartPole-v1")
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=20)
    torch.manual_seed(0)
    guide = guides.PolicyGuide(
        env, guides.CategoricalMLP(env.observation_space, env.action_space, (16,)), horizon=20
    )
    out = _fused_vs_traced(model, guide, 32, baseline="value")
    (v1, c1, g1), (v0, c0, g0) = out[True], out[False]
    assert v1 == pytest.approx(v0, rel=1e-6)
    torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-5)
    assert set(g1) == set(g0) and any(k.startswith("value_baseline") for k in g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6)


def test_fused_pass_equals_tracing_on_pendulum_pathwise():
    env = envs.make("Pendulum-v1")
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=15)
    torch.manual_seed(0)
    guide = guides.PolicyGuide(
        env, guides.TanhGaussianMLP(env.observation_space, env.action_space, (16,)), horizon=15
    )
    out = _fused_vs_traced(model, guide, 32)
    (v1, c1, g1), (v0, c0, g0) = out[True], out[False]
    assert v1 == pytest.approx(v0, rel=1e-5)
    torch.testing.assert_close(c1, c0, rtol=1e-4, atol=1e-4)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5)


def test_fused_true_refuses_what_it_cannot_fuse():
    mdp = envs.chain(3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3)
    other = guides.TabularGuide(mdp, horizon=4)
    with pytest.raises(ValueError, match="fused=True but model and guide differ in env or horizon"):
        rlai.TrajectoryELBO(fused=True).loss(model, other, 4)
    with pytest.raises(ValueError, match="fused='sometimes' is not allowed"):
        rlai.TrajectoryELBO(fused="sometimes")
