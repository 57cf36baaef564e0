"""Pyro's TraceEnum_ELBO on tabular trajectory models against exact inference.

With ``config_enumerate`` on the guide, every action (and stochastic-state) site is summed out
under q instead of sampled, so the ELBO Pyro computes is the exact expectation of the source's eq. (2),
discounted: it must equal ``exact.elbo_of`` for the guide's policy to rounding, and its gradient
the exact gradient. Without enumeration TraceEnum_ELBO is a one-sample estimator like Trace_ELBO.
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate

from rl_as_inference import envs, exact, guides, models

ALPHA, H = 0.7, 3


def _mdp(kind: str) -> envs.TabularMDP:
    """3 states, 2 actions, float64; ``terminal``: state 2 ends the episode but is not absorbing and
    can be the initial state, so that masks after termination are exercised."""
    base = envs.random_mdp(3, 2, seed=1, deterministic=kind == "deterministic", dtype=torch.float64)
    if kind != "terminal":
        return base
    return envs.TabularMDP(
        base.transition,
        base.reward,
        np.array([0.5, 0.2, 0.3]),
        terminal=np.array([False, False, True]),
        dtype=torch.float64,
    )


def _prior(kind: str, mdp: envs.TabularMDP):
    if kind == "uniform":
        return models.UniformPrior(mdp.action_space), None
    table = torch.softmax(
        torch.randn(
            H,
            mdp.num_states,
            mdp.num_actions,
            generator=torch.Generator().manual_seed(5),
            dtype=torch.float64,
        ),
        -1,
    )
    return models.TablePrior(table), table


def _guide(kind: str, mdp: envs.TabularMDP, gamma: float):
    if kind == "tabular":
        guide = guides.TabularGuide(mdp, horizon=H, init_scale=1.0, gamma=gamma)
        return guide, guide.policy
    guide = guides.OpenLoopGuide(mdp, horizon=H, gamma=gamma)
    with torch.no_grad():
        guide.register()
        pyro.param(f"{guide.name}.logits").normal_(generator=torch.Generator().manual_seed(3))

    def policy():  # the same q_t(a) in every state: [T, S, A]
        q = torch.softmax(pyro.param(f"{guide.name}.logits").detach(), -1)
        return q[:, None, :].expand(H, mdp.num_states, mdp.num_actions)

    return guide, policy


@pytest.mark.parametrize("mdp_kind", ["deterministic", "stochastic", "terminal"])
@pytest.mark.parametrize("gamma", [1.0, 0.8])
@pytest.mark.parametrize("prior_kind", ["uniform", "table"])
@pytest.mark.parametrize("guide_kind", ["tabular", "open_loop"])
def test_an_enumerated_guide_gives_the_exact_elbo(mdp_kind, gamma, prior_kind, guide_kind):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    mdp = _mdp(mdp_kind)
    prior, table = _prior(prior_kind, mdp)
    model = models.TrajectoryModel(mdp, prior, horizon=H, alpha=ALPHA, gamma=gamma)
    guide, policy = _guide(guide_kind, mdp, gamma)
    N = 4  # Pyro sums over the episodes plate; every episode has the same exact expectation
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, config_enumerate(guide), N)
    expected = exact.elbo_of(mdp, policy(), horizon=H, alpha=ALPHA, gamma=gamma, prior=table)
    # exact on both sides: float64 rounding only
    assert -loss / N == pytest.approx(expected, abs=1e-9, rel=1e-9)


def test_the_enumerated_gradient_is_the_exact_gradient():
    pyro.clear_param_store()
    mdp, gamma = _mdp("terminal"), 0.8
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=H, alpha=ALPHA, gamma=gamma
    )
    guide = guides.TabularGuide(mdp, horizon=H, init_scale=1.0, gamma=gamma)
    logits = guide.logits()
    TraceEnum_ELBO(max_plate_nesting=1).loss_and_grads(model, config_enumerate(guide), 1)
    grad = -logits.grad.clone()

    def elbo(x):
        return exact.elbo_of(mdp, torch.softmax(x, -1), horizon=H, alpha=ALPHA, gamma=gamma)

    # central differences of the exact ELBO: truncation error O(eps^2) ~ 1e-10, rounding ~ 1e-16/eps
    eps, base = 1e-5, logits.detach().clone()
    numeric = torch.zeros_like(base)
    for index in np.ndindex(*base.shape):
        step = torch.zeros_like(base)
        step[index] = eps
        numeric[index] = (elbo(base + step) - elbo(base - step)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, atol=1e-8, rtol=1e-6)


def test_svi_with_an_enumerated_guide_reaches_the_exact_optimum():
    # exact gradients: no noise, so plain Adam ascends to the soft-optimal policy's ELBO
    pyro.clear_param_store()
    mdp, gamma = _mdp("stochastic"), 0.9
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=H, alpha=ALPHA, gamma=gamma
    )
    guide = guides.TabularGuide(mdp, horizon=H, gamma=gamma)
    svi = SVI(
        model, config_enumerate(guide), pyro.optim.Adam({"lr": 0.1}), TraceEnum_ELBO(max_plate_nesting=1)
    )
    for _ in range(300):
        svi.step(1)
    best = exact.solve(mdp, horizon=H, alpha=ALPHA, gamma=gamma)
    reached = exact.elbo_of(mdp, guide.policy(), horizon=H, alpha=ALPHA, gamma=gamma)
    assert best.elbo - 1e-4 < reached <= best.elbo + 1e-12
    torch.testing.assert_close(guide.policy(), best.policy, atol=1e-2, rtol=0)


def test_a_float32_mdp_enumerates_to_its_exact_elbo_in_float32():
    # the default dtype: every site in float32, so the einsum runs (it refused mixed dtypes)
    mdp = envs.gridworld(2, 3, slip=0.1)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=H, gamma=0.9)
    guide = guides.TabularGuide(mdp, horizon=H, init_scale=1.0, gamma=0.9)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, config_enumerate(guide), 1)
    expected = exact.elbo_of(mdp, guide.policy(), horizon=H, alpha=1.0, gamma=0.9)
    # float32 tables and log-probs summed over ~1e5 enumerated terms: a few ulp of 1e-7 each
    assert -loss == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_without_enumeration_trace_enum_elbo_is_trace_elbo():
    # the same seed draws the same episodes: both are the one-sample estimator, to rounding
    mdp = _mdp("terminal")
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=H, alpha=ALPHA, gamma=0.8
    )
    guide = guides.TabularGuide(mdp, horizon=H, init_scale=1.0, gamma=0.8)
    guide.register()  # create the logits first: their random init would shift the first draw
    pyro.set_rng_seed(7)
    stock = Trace_ELBO().loss(model, guide, 64)
    pyro.set_rng_seed(7)
    with pytest.warns(UserWarning, match="found no sample sites configured for enumeration"):
        enum = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, 64)
    assert enum == pytest.approx(stock, rel=1e-12)


def test_the_rollout_of_an_enumerated_guide_broadcasts_every_step():
    # under enumeration each site adds a dim on the left of the plate: s_0 in -2, a_0 in -3, s_1
    # in -4, a_1 in -5; the Trajectory stacks the steps broadcast, each entry the reward of its values
    mdp = _mdp("stochastic")
    guide = guides.TabularGuide(mdp, horizon=2)
    enumerated = pyro.poutine.enum(config_enumerate(guide), first_available_dim=-2)
    trajectory = pyro.poutine.trace(enumerated).get_trace(5).nodes["_RETURN"]["value"]
    # [t, a_1, s_1, a_0, s_0, episode]: nothing is sampled, so the plate's dim stays 1 (it broadcasts)
    assert trajectory.rewards.shape == (2, 2, 3, 2, 3, 1)
    R = mdp.reward
    for a1, s1, a0, s0 in np.ndindex(2, 3, 2, 3):
        assert (trajectory.rewards[0, a1, s1, a0, s0] == R[s0, a0]).all()
        assert (trajectory.rewards[1, a1, s1, a0, s0] == R[s1, a1]).all()


def test_a_terminal_value_gets_the_states_batch_under_vectorized_particles():
    # terminal_value returns one value per state of the batch, [P, N] under vectorized particles
    mdp = _mdp("stochastic")
    model = models.TrajectoryModel(
        mdp,
        models.UniformPrior(mdp.action_space),
        horizon=H,
        alpha=ALPHA,
        terminal_value=lambda s: s.double(),
    )
    guide = guides.TabularGuide(mdp, horizon=H)
    loss = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss(model, guide, 4)
    assert np.isfinite(loss)
    with pytest.raises(ValueError, match=r"terminal_value must return one value per episode, shape \(4,\)"):
        models.TrajectoryModel(
            mdp, models.UniformPrior(mdp.action_space), horizon=H, terminal_value=lambda s: s[:1].double()
        )(4)


def test_a_finite_mdp_steps_broadcast_batches_and_names_ones_that_do_not_broadcast():
    mdp = _mdp("stochastic")
    state = torch.tensor([[0, 1, 2]])  # [1, 3]
    action = torch.tensor([[0], [1]])  # [2, 1]
    step = mdp.step(state, action, next_state=torch.zeros(1, 1, dtype=torch.long))
    assert step.reward.shape == (2, 3)
    assert (step.reward == mdp.reward[state, action]).all()
    assert mdp.step(state, action).state.shape == (2, 3)  # sampled next states take the batch
    with pytest.raises(
        ValueError, match=r"action has shape \(2,\) but the state batch is \(1, 3\).*broadcasts"
    ):
        mdp.step(state, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"next_state has shape \(4,\), which does not broadcast with"):
        mdp.step(state, action, next_state=torch.zeros(4, dtype=torch.long))
    # the continuous-state envs keep equal batches: their dynamics do not broadcast
    cartpole = envs.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"action has shape \(2, 1\) but the state batch is \(3,\)"):
        cartpole.step(cartpole.sample_initial(3), torch.zeros(2, 1, dtype=torch.long))
