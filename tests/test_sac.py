"""Replay buffer, twin critics and SAC as the H = 1 case of the trajectory ELBO."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pyro
import pytest
import torch

import rl_as_inference as rlai
from rl_as_inference import envs, guides, models
from rl_as_inference.algos import sac
from rl_as_inference.critics import TwinQ
from rl_as_inference.replay import ReplayBuffer, transition_fields


def test_replay_buffer_wraps_around_and_samples_stored_rows():
    buf = ReplayBuffer(5, transition_fields((2,), (1,)))
    for k in range(3):  # 3 batches of 2 -> 6 rows into 5 slots: the oldest is overwritten
        obs = torch.full((2, 2), float(k))
        buf.add(
            obs=obs,
            action=torch.zeros(2, 1),
            reward=torch.tensor([10.0 * k, 10.0 * k + 1]),
            next_obs=obs + 1,
            terminated=torch.tensor([False, k == 2]),
        )
    assert len(buf) == 5 and buf.position == 1
    assert buf.storage["reward"].tolist() == [21.0, 1.0, 10.0, 11.0, 20.0]
    batch = buf.sample(64, torch.Generator().manual_seed(0))
    assert set(batch["reward"].tolist()) <= {21.0, 1.0, 10.0, 11.0, 20.0}
    assert torch.equal(batch["next_obs"], batch["obs"] + 1)
    copy = ReplayBuffer(5, transition_fields((2,), (1,)))
    copy.load_state_dict(buf.state_dict())
    assert torch.equal(copy.storage["reward"], buf.storage["reward"]) and copy.position == 1
    with pytest.raises(ValueError, match="capacity must be an int >= 1"):
        ReplayBuffer(0, transition_fields((2,), (1,)))
    with pytest.raises(ValueError, match="needs exactly the fields"):
        buf.add(obs=obs)


def test_twin_q_targets_track_by_polyak_averaging():
    env = envs.make("Pendulum-v1")
    critic = TwinQ(env.observation_space, env.action_space, hidden=(8,))
    obs, action = torch.randn(4, 3), torch.randn(4, 1)
    assert torch.equal(critic.target_min(obs, action), critic.min(obs, action))
    with torch.no_grad():
        for p in critic.q1.parameters():
            p.add_(1.0)
    before = [p.clone() for p in critic.target[0].parameters()]
    critic.update_target(0.25)
    for b, t, o in zip(before, critic.target[0].parameters(), critic.q1.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)
    assert not any(p.requires_grad for p in critic.target.parameters())


def test_twin_q_with_rescaled_observations_sees_the_box_faces_as_plus_minus_one():
    env = envs.make("MountainCarContinuous-v0")
    space = env.observation_space
    critic = TwinQ(space, env.action_space, hidden=(8,), rescale_obs=True)
    plain = TwinQ(space, env.action_space, hidden=(8,))
    faces = torch.tensor(np.stack((space.low, space.high, (space.low + space.high) / 2)))
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    for q in (critic.q1, critic.q2, critic.target[0], critic.target[1]):
        assert torch.allclose(q.encoder(faces, torch.float32), expected, atol=1e-6)
    # Same weights, different inputs: the map is a non-persistent buffer, so the keys agree.
    assert set(plain.state_dict()) == set(critic.state_dict())
    plain.load_state_dict(critic.state_dict())
    action = torch.zeros(3, 1)
    assert not torch.allclose(plain.min(faces, action), critic.min(faces, action))


def test_rescaling_passes_unbounded_coordinates_unchanged_and_warns_about_nothing():
    import warnings

    from rl_as_inference.guides.policies import ObservationEncoder

    space = envs.make("CartPole-v1").observation_space  # x and theta bounded, both velocities not
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf - inf in the bounds used to raise a RuntimeWarning
        encoder = ObservationEncoder(space, rescale=True)
    obs = torch.tensor([[4.8, 3.0, -0.41887903, -7.0], [0.0, -2.0, 0.0, 5.0]])
    out = encoder(obs, torch.float32)
    assert torch.allclose(out[:, [0, 2]], torch.tensor([[1.0, -1.0], [0.0, 0.0]]), atol=1e-6)
    assert torch.equal(out[:, [1, 3]], obs[:, [1, 3]])


def test_discrete_observations_with_a_start_are_one_hot_from_their_start():
    from rl_as_inference.guides.policies import ObservationEncoder

    # Discrete(4, start=2) observes 2, 3, 4, 5: before, 4 and 5 overflowed the one-hot of width 4
    encoder = ObservationEncoder(gym.spaces.Discrete(4, start=2))
    assert torch.equal(encoder(torch.tensor([2, 3, 4, 5]), torch.float32), torch.eye(4))


def test_sac_actor_loss_equals_the_trajectory_elbo_at_horizon_one():
    env = envs.make("Pendulum-v1")
    alpha, gamma = 0.3, 0.9
    states = env.reset(64, seed=0)

    def soft_value(s):  # any function of the next state serves as the critic's bootstrap
        return -(s[:, 0] ** 2) - 0.5 * s[:, 1].abs()

    class ExactCritic:  # Q(s, a) = r(s, a) + gamma V(s') for the batch of states above
        def min(self, obs, action):
            step = env.step(states, action)
            return step.reward + gamma * soft_value(step.state)

    torch.manual_seed(0)
    policy = guides.TanhGaussianMLP(env.observation_space, env.action_space, hidden=(16,))
    log_pi = sac.uniform_log_prior(env.action_space)
    torch.manual_seed(1)
    sac_loss, _ = sac.actor_loss(policy, ExactCritic(), env.observe(states), alpha, log_pi)
    sac_grads = torch.autograd.grad(sac_loss, list(policy.parameters()))

    model = models.TrajectoryModel(
        env,
        models.UniformPrior(env.action_space),
        horizon=1,
        alpha=alpha,
        gamma=gamma,
        terminal_value=soft_value,
    )
    guide = guides.PolicyGuide(env, policy, horizon=1, gamma=gamma)  # q shares the model's gamma
    torch.manual_seed(1)  # the same action draws
    loss = rlai.TrajectoryELBO(reduction="mean").differentiable_loss(model, guide, 64, states)
    svi_grads = torch.autograd.grad(alpha * loss, list(policy.parameters()))
    # alpha * (-ELBO) at H = 1 is SAC's actor loss, value and gradient.
    assert (alpha * loss).item() == pytest.approx(sac_loss.item(), rel=1e-5)
    for a, b in zip(sac_grads, svi_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert pyro.get_param_store().keys()  # the guide's network was registered with Pyro


def test_sac_learns_pendulum_at_a_reduced_budget():
    config = sac.SACConfig(
        total_env_steps=3000, learning_starts=500, hidden=(64, 64), batch_size=128, log_every=500
    )
    result = sac.train(config)
    returns = [row["return"] for row in result.metrics]
    assert result.env_steps == 3000 and len(returns) == 6
    # Random play (the first 500 steps) scores about -1500 per episode; seeded run: -966 at 3000 steps.
    assert returns[-1] > returns[0] + 300, returns
    obs = envs.make("Pendulum-v1").observe(envs.make("Pendulum-v1").reset(5, seed=0))
    assert result.policy.act(obs).shape == (5, 1)


def test_sac_rejects_discrete_action_spaces():
    with pytest.raises(
        ValueError, match=r"sac needs a continuous \(Box\) action space; CartPole-v1 has Discrete\(2\)"
    ):
        sac.train(sac.SACConfig(env="CartPole-v1", total_env_steps=10))


# ---------------------------------------------------------------------- segment SVI (the flagship)
def test_svi_learns_pendulum_at_a_reduced_budget():
    from rl_as_inference.algos import svi

    config = svi.SVIConfig(
        total_env_steps=2500, learning_starts=500, horizon=3, hidden=(64, 64), batch_size=128, log_every=500
    )
    result = svi.train(config)
    returns = [row["return"] for row in result.metrics]
    assert result.env_steps == 2500 and all(math.isfinite(row["elbo"]) for row in result.metrics)
    # Random play (the first 500 steps) scores about -1500 per episode; it must clearly improve.
    assert returns[-1] > returns[0] + 300, returns


def test_svi_kl_objective_runs_and_bad_configs_are_rejected():
    from rl_as_inference.algos import svi

    config = svi.SVIConfig(
        total_env_steps=300,
        learning_starts=200,
        horizon=2,
        hidden=(16,),
        batch_size=16,
        objective="kl",
        prior_update_every=10,
        log_every=100,
    )
    result = svi.train(config)
    assert result.env_steps == 300 and math.isfinite(result.metrics[-1]["elbo"])
    with pytest.raises(ValueError, match="objective='entropy' is not allowed"):
        svi.train(svi.SVIConfig(objective="entropy"))
    with pytest.raises(ValueError, match=r"svi needs a continuous \(Box\) action space; CartPole-v1"):
        svi.train(svi.SVIConfig(env="CartPole-v1"))


def test_em_is_svi_with_the_kl_objective_and_learns():
    from rl_as_inference.algos import em

    config = em.EMConfig(
        total_env_steps=2500,
        learning_starts=500,
        horizon=3,
        hidden=(64, 64),
        batch_size=128,
        actor_batch_size=64,
        prior_update_every=50,
        log_every=500,
    )
    result = em.train(config)
    returns = [row["return"] for row in result.metrics]
    assert all(math.isfinite(row["kl"]) and row["kl"] >= -0.05 for row in result.metrics)
    assert returns[-1] > returns[0] + 300, returns
    with pytest.raises(ValueError, match="em optimizes the KL objective"):
        em.train(em.EMConfig(objective="maxent"))


def test_metric_rows_fall_on_multiples_of_log_every_after_learning_starts():
    config = sac.SACConfig(
        total_env_steps=400, learning_starts=250, log_every=100, hidden=(8,), batch_size=16
    )
    rows = [row["env_steps"] for row in sac.train(config).metrics]
    assert rows == [250, 300, 400]  # no catch-up row at 251 for the interval learning_starts skipped


def test_sac_rows_log_the_mean_loss_over_the_interval_not_the_last_step(monkeypatch):
    losses = []

    def recorded(*args, **kwargs):
        loss = soft_q_loss(*args, **kwargs)
        losses.append(loss.item())
        return loss

    soft_q_loss = sac.soft_q_loss
    monkeypatch.setattr(sac, "soft_q_loss", recorded)
    config = sac.SACConfig(
        total_env_steps=400, learning_starts=200, log_every=100, hidden=(8,), batch_size=16
    )
    rows = sac.train(config).metrics
    assert [row["env_steps"] for row in rows] == [200, 300, 400]
    # one learner step per env step from 200 on: the first row has 1, the others 100 each
    spans = [losses[:1], losses[1:101], losses[101:201]]
    assert len(losses) == 201
    for row, span in zip(rows, spans, strict=True):
        assert row["critic_loss"] == pytest.approx(sum(span) / len(span), rel=1e-5)
    assert rows[-1]["critic_loss"] != pytest.approx(losses[-1], rel=1e-3)  # not the last step's


@pytest.mark.parametrize("prior", ["pi_k", "uniform"])
def test_kl_objective_terminal_value_has_no_spread_gradient_at_q_equal_pi_k(prior):
    # em / svi with objective "kl": the terminal value V(s_H) = E_q[Q - alpha (log q - log pi_k)] and
    # the critic's T^{pi,q} use the trajectory model's prior pi_k. At q = pi_k the KL part is at its
    # minimum, so its gradient on q's spread (the log-scale head) vanishes in expectation; the
    # uniform box density used there before turns alpha into a maximum-entropy bonus, which does not.
    from rl_as_inference.algos import svi
    from rl_as_inference.algos.svi_actor import SegmentActor
    from rl_as_inference.critics import constant_log_prior

    env = envs.make("Pendulum-v1")
    torch.manual_seed(0)
    actor = SegmentActor.build(svi.SVIConfig(objective="kl", hidden=(16,)), env, torch.device("cpu"))
    assert actor.reference is not None  # a frozen copy: q = pi_k
    critic = TwinQ(env.observation_space, env.action_space, hidden=(16,))
    with torch.no_grad():  # Q = 0: what is left of V's gradient is the KL (or entropy) term's
        for net in (critic.q1, critic.q2):
            net.net[-1].weight.zero_()
            net.net[-1].bias.zero_()
    if prior == "pi_k":
        log_pi = svi.critic_log_prior(actor, env.action_space)
        obs, a = torch.randn(5, 3), torch.rand(5, 1) * 4 - 2
        torch.testing.assert_close(log_pi(obs, a), actor.reference(obs).log_prob(a))  # the critic's too
    else:
        log_pi = constant_log_prior(sac.uniform_log_prior(env.action_space))
    alpha, n = 0.5, 20_000
    states = env.sample_initial(n, torch.Generator().manual_seed(1))
    head = {}
    hook = actor.policy.net[-1].register_forward_hook(lambda m, i, out: head.setdefault("out", out))
    torch.manual_seed(2)
    value = svi.terminal_soft_value(env, actor.policy, critic, log_pi, alpha)(states)
    hook.remove()
    head["out"].retain_grad()
    value.sum().backward()
    # each state's own dV_i / d log sigma_i: their mean is the gradient of the mean V on the
    # log-scale bias, their spread gives its standard error (one action draw per state)
    per_state = head["out"].grad[:, 1]
    mean, se = per_state.mean().item(), per_state.std().item() / math.sqrt(n)
    if prior == "pi_k":
        # per state -alpha (eps^2 - 1) with eps ~ N(0, 1): mean 0, sd alpha sqrt(2) (se ~ 0.005)
        assert abs(mean) < 4 * se, (mean, se)
    else:  # the entropy bonus moves the spread (here down: at sigma = 1 the box's tanh saturates
        # too often for the squashed entropy), by more than 20 standard errors (seeded: -0.102, se 0.0044)
        assert abs(mean) > 10 * se, (mean, se)
