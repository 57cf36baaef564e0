"""MPO's loss: the E-step temperature dual meets its KL bound; the decoupled M-step moves what it should."""

from __future__ import annotations

import torch

import rl_as_inference as rlai
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


def test_categorical_e_step_is_exact_and_its_dual_meets_the_kl_bound():
    gen = torch.Generator().manual_seed(0)
    b, a = 16, 4
    q_values = torch.randn(b, a, generator=gen) * 3.0
    target_logits = torch.randn(b, a, generator=gen)
    config = mpo.MPOConfig(epsilon=0.1, epsilon_policy=1e-3)
    log_temperature = torch.tensor(0.0, requires_grad=True)
    log_alpha = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.Adam([log_temperature], lr=0.05)
    for _ in range(2000):  # only the temperature moves
        loss, stats = mpo.categorical_mpo_losses(
            q_values, target_logits, target_logits, log_temperature, log_alpha, config
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    eta = log_temperature.detach().exp()
    # The E-step by hand: q(a|s) = pi_k(a|s) exp(Q/eta) / Z, over every action (no sampling).
    pi_k = torch.softmax(target_logits, -1)
    q = pi_k * torch.exp(q_values / eta)
    q = q / q.sum(-1, keepdim=True)
    kl = (q * (q.log() - pi_k.log())).sum(-1).mean()
    assert abs(float(kl) / 0.1 - 1.0) < 0.02  # the dual's optimum puts the realized KL on its bound
    assert abs(float(stats["kl_q_rel"]) - float(kl) / 0.1) < 1e-3


def test_categorical_m_step_moves_toward_the_e_step_and_its_kl_stays_finite():
    b = 8
    q_values = torch.tensor([[0.0, 1.0, 0.0]]).expand(b, 3)  # action 1 is best
    target_logits = torch.zeros(b, 3)
    logits = torch.zeros(b, 3, requires_grad=True)
    config = mpo.MPOConfig()
    duals = [torch.tensor(0.0, requires_grad=True) for _ in range(2)]
    loss, _ = mpo.categorical_mpo_losses(q_values, logits, target_logits, *duals, config)
    loss.backward()
    assert (logits.grad[:, 1] < 0).all() and (logits.grad[:, [0, 2]] > 0).all()  # descent raises action 1
    # A near-deterministic policy (probabilities underflow to 0 in float32) keeps a finite KL/loss.
    far = torch.tensor([[200.0, -200.0, 0.0]]).expand(b, 3).clone().requires_grad_(True)
    loss, stats = mpo.categorical_mpo_losses(q_values, far, target_logits, *duals, config)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(far.grad).all()
    assert float(stats["kl_policy_rel"]) > 1 and duals[1].grad < 0  # violated: its multiplier grows


def test_categorical_mpo_learns_cartpole_at_a_reduced_budget():
    from rl_as_inference.runs import LoadedPolicy, episode_returns

    config = mpo.MPOConfig(
        env="CartPole-v1",
        total_env_steps=2500,
        learning_starts=500,
        hidden=(64, 64),
        epsilon_policy=0.01,
        n_step=3,
        log_every=500,
    )
    result = mpo.train(config)
    returns = episode_returns(LoadedPolicy(result.policy, "CartPole-v1", torch.device("cpu")), episodes=10)
    # A uniformly random policy averages about 22 on CartPole-v1; 2500 steps of MPO reach far more
    # (about 290 to 300 after 3000 steps for seeds 0 and 1 here).
    assert sum(returns) / len(returns) > 100, returns
    assert {"kl_q_rel", "kl_policy_rel", "alpha_policy", "temperature"} <= set(result.metrics[-1])


def test_mpo_with_rescaled_observations_round_trips_through_a_run(tmp_path):
    from rl_as_inference import runs

    sets = ["total_env_steps=600", "learning_starts=500", "num_envs=4", "hidden=[16]", "log_every=100"]
    sets += ["rescale_obs=true", "exploring_starts=0.5"]
    out = runs.train_run(
        "MountainCar-v0", algo="mpo", sets=sets, out=tmp_path / "mc", progress=False, eval_episodes=1
    )
    policy = rlai.load_policy(out)
    assert policy.module.rescale_obs and policy.module.encoder.rescale
