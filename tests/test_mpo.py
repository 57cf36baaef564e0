"""MPO's loss: the E-step temperature dual meets its KL bound; the decoupled M-step moves what it should."""

from __future__ import annotations

import torch

from rl_as_inference.algos import mpo


def _samples(seed=0, m=64, b=32, d=1):
    gen = torch.Generator().manual_seed(seed)
    actions = torch.randn(m, b, d, generator=gen)
    q_values = -((actions[..., 0] - 0.7) ** 2) * 5.0  # prefers actions near 0.7
    return q_values, actions


def _duals(log_temperature=0.0):
    return [torch.tensor(float(v), requires_grad=True) for v in (log_temperature, 0.0, 0.0)]


def test_temperature_dual_minimizer_meets_the_kl_bound():
    q_values, actions = _samples()
    config = mpo.MPOConfig(epsilon=0.1)
    duals = _duals()
    opt = torch.optim.Adam([duals[0]], lr=0.05)
    zeros = torch.zeros(actions.shape[1], 1)
    ones = torch.ones(actions.shape[1], 1)
    for _ in range(2000):  # only the temperature moves: minimize g(eta) = eta eps + eta E log mean exp(Q/eta)
        loss, stats = mpo.mpo_losses(q_values, actions, (zeros, ones), (zeros, ones), *duals, config)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # At the dual optimum the non-parametric q(a|s) ~ pi_k exp(Q/eta) has KL(q || pi_k) = epsilon
    # (on average over states, on the sampled actions).
    assert abs(float(stats["kl_q_rel"]) - 1.0) < 0.02, stats
    weights = torch.softmax(q_values / duals[0].detach().exp(), dim=0)
    assert torch.allclose(weights.sum(0), torch.ones(q_values.shape[1]))
    assert abs(float(mpo.realized_kl(weights)) / 0.1 - float(stats["kl_q_rel"])) < 1e-2


def test_decoupled_m_step_moves_the_mean_toward_high_value_actions():
    q_values, actions = _samples(seed=1)
    config = mpo.MPOConfig()
    b = actions.shape[1]
    loc = torch.zeros(b, 1, requires_grad=True)
    log_scale = torch.zeros(b, 1, requires_grad=True)
    duals = _duals(log_temperature=0.0)
    loss, _ = mpo.mpo_losses(
        q_values, actions, (loc, log_scale.exp()), (torch.zeros(b, 1), torch.ones(b, 1)), *duals, config
    )
    loss.backward()
    # Weighted maximum likelihood pulls the mean toward 0.7 (the weights favour those actions) ...
    assert (loc.grad < 0).all()
    # ... and the weights concentrate there, so the fitted scale shrinks below pi_k's.
    assert (log_scale.grad > 0).all()
    # The KL multipliers grow when a constraint is violated and shrink when it is slack.
    far = torch.full((b, 1), 1.0, requires_grad=True)
    duals = _duals()
    loss, stats = mpo.mpo_losses(
        q_values, actions, (far, torch.ones(b, 1)), (torch.zeros(b, 1), torch.ones(b, 1)), *duals, config
    )
    loss.backward()
    assert float(stats["kl_mean_rel"]) > 1 and duals[1].grad < 0  # violated: gradient descent raises alpha
    assert float(stats["kl_stddev_rel"]) == 0 and duals[2].grad > 0  # slack: alpha_stddev decreases
