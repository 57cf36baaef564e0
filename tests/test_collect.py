"""Data collection: n-step replay against a brute-force walk, Discrete and Gymnasium-backed collectors,
and the temperature (fixed, scheduled, learned)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference.algos.collect import Collector
from rl_as_inference.critics import TwinQ, soft_q_loss
from rl_as_inference.guides import CategoricalMLP
from rl_as_inference.replay import ReplayBuffer, transition_fields
from rl_as_inference.temperature import Temperature


def _filled_buffer(capacity: int, stride: int, steps: int, seed: int = 0) -> ReplayBuffer:
    """A buffer written as a Collector writes it: ``stride`` envs per add, random episode ends."""
    fields = transition_fields((1,), (1,)) | {"truncated": ((), torch.bool), "slot": ((), torch.int64)}
    buf = ReplayBuffer(capacity, fields)
    gen = torch.Generator().manual_seed(seed)
    for k in range(steps):
        u = torch.rand(stride, generator=gen)
        buf.add(
            obs=torch.full((stride, 1), float(k)),
            action=torch.zeros(stride, 1),
            reward=torch.randn(stride, generator=gen),
            next_obs=torch.full((stride, 1), k + 0.5) + torch.arange(stride)[:, None] * 1000,
            terminated=u < 0.15,
            truncated=(u >= 0.15) & (u < 0.25),
            slot=(torch.arange(stride) + buf.position) % capacity,
        )
    return buf


@pytest.mark.parametrize("capacity, steps", [(60, 12), (60, 47)])  # not full / wrapped around
def test_n_step_sampling_equals_a_brute_force_walk(capacity, steps):
    stride, n, gamma = 3, 4, 0.9
    buf = _filled_buffer(capacity, stride, steps)
    batch = buf.sample_n_step(500, n, gamma, stride=stride, generator=torch.Generator().manual_seed(1))
    st = buf.storage
    oldest = (buf.position - buf.size) % capacity
    for i in range(500):
        slot = int(batch["slot"][i])
        # the path must be one env's consecutive transitions, all still in the buffer
        assert (slot - oldest) % capacity < buf.size - (n - 1) * stride
        total, discount = 0.0, 1.0
        for k in range(n):
            j = (slot + k * stride) % capacity
            total += discount * float(st["reward"][j])
            discount *= gamma
            if st["terminated"][j] or st["truncated"][j] or k == n - 1:
                break
        assert math.isclose(float(batch["reward"][i]), total, rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(float(batch["discount"][i]), discount, rel_tol=1e-6)
        assert float(batch["next_obs"][i, 0]) == float(st["next_obs"][j, 0])
        assert bool(batch["terminated"][i]) == bool(st["terminated"][j])
        assert float(batch["obs"][i, 0]) == float(st["obs"][slot, 0])
    # n = 1 reproduces the one-step transition
    one = buf.sample_n_step(50, 1, gamma, stride=stride, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(one["reward"], st["reward"][one["slot"]])
    torch.testing.assert_close(one["discount"], torch.full((50,), gamma))


def test_n_step_sampling_rejects_what_it_cannot_do():
    buf = _filled_buffer(60, 3, 2)
    with pytest.raises(ValueError, match="too few for 4-step paths"):
        buf.sample_n_step(8, 4, 0.9, stride=3)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        buf.sample_n_step(8, 0, 0.9, stride=3)
    with pytest.raises(ValueError, match="not a multiple of stride"):
        buf.sample_n_step(8, 1, 0.9, stride=7)
    plain = ReplayBuffer(8, transition_fields((1,), (1,)))
    with pytest.raises(ValueError, match="needs a 'truncated' field"):
        plain.sample_n_step(8, 2, 0.9)


def test_n_step_critic_target_uses_the_summed_reward_and_gamma_to_the_m():
    space_o, space_a = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3)
    critic = TwinQ(space_o, space_a, hidden=(8,))
    policy = CategoricalMLP(space_o, space_a, hidden=(8,))
    obs = torch.randn(5, 2)
    batch = {
        "obs": obs,
        "action": torch.tensor([0, 1, 2, 0, 1]),
        "reward": torch.randn(5),
        "next_obs": torch.randn(5, 2),
        "terminated": torch.tensor([False, True, False, False, False]),
        "discount": torch.tensor([0.9, 0.81, 0.729, 0.9, 0.81]),
    }
    loss = soft_q_loss(critic, policy, batch, alpha=0.5, log_pi=-math.log(3), gamma=0.9)
    with torch.no_grad():  # the target by hand: exact expectation over the 3 actions
        probs = policy(batch["next_obs"]).probs
        q_next = critic.target_min(batch["next_obs"])
        v = (probs * (q_next - 0.5 * (probs.log() + math.log(3)))).sum(-1)
        y = batch["reward"] + batch["discount"] * (~batch["terminated"]).float() * v
        q1, q2 = critic(obs)
        a = batch["action"][:, None]
        expected = (q1.gather(1, a)[:, 0] - y).square().mean() + (q2.gather(1, a)[:, 0] - y).square().mean()
    torch.testing.assert_close(loss, expected)


def test_discrete_collector_stores_integer_actions_and_true_transitions():
    data = Collector(
        "CartPole-v1", num_envs=4, device=torch.device("cpu"), seed=0, buffer_size=10, discrete=True
    )
    assert data.buffer.capacity == 12  # rounded up to a multiple of num_envs
    for _ in range(40):
        data.step(None)
    st = data.buffer.storage
    assert st["action"].dtype == torch.int64 and set(st["action"].tolist()) <= {0, 1}
    # next_obs of a non-final transition is the obs stored num_envs slots later (same env)
    for j in range(12):
        later = (j + 4) % 12
        if (j - data.buffer.position) % 12 < 8 and not (st["terminated"][j] or st["truncated"][j]):
            assert torch.equal(st["next_obs"][j], st["obs"][later])
    with pytest.raises(ValueError, match=r"sac needs a continuous \(Box\) action space"):
        Collector(
            "CartPole-v1", num_envs=1, device=torch.device("cpu"), seed=0, buffer_size=8, algorithm="sac"
        )


def test_collector_exploring_starts_store_box_states_and_need_the_functional_backend():
    cpu = torch.device("cpu")
    data = Collector(
        "MountainCarContinuous-v0", num_envs=64, device=cpu, seed=0, buffer_size=64, exploring_starts=1.0
    )
    data.step(None)
    # Gymnasium's p(s_0) starts at rest; box starts move (velocity 0 has probability 0).
    assert (data.buffer.storage["obs"][:, 1] != 0).all()
    with pytest.raises(ValueError, match="exploring_starts needs backend='functional'"):
        Collector(
            "MountainCar-v0",
            num_envs=1,
            device=cpu,
            seed=0,
            buffer_size=8,
            discrete=True,
            backend="gymnasium",
            exploring_starts=0.5,
        )


def test_gymnasium_backend_stores_what_gymnasium_returned():
    data = Collector(
        "CartPole-v1",
        num_envs=2,
        device=torch.device("cpu"),
        seed=3,
        buffer_size=400,
        discrete=True,
        backend="gymnasium",
    )
    for _ in range(150):  # several episodes end under random actions
        data.step(None)
    st = data.buffer.storage
    assert bool(st["terminated"][:300].any())
    # replay the stored actions in Gymnasium's own envs (same seeds) and compare every transition
    for i in range(2):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=3 + i)
        for k in range(150):
            row = 2 * k + i
            assert np.allclose(st["obs"][row].numpy(), obs)
            obs, reward, terminated, truncated, _ = env.step(int(st["action"][row]))
            assert np.allclose(st["next_obs"][row].numpy(), obs)
            assert bool(st["terminated"][row]) == terminated and float(st["reward"][row]) == reward
            if terminated or truncated:
                obs, _ = env.reset()
    with pytest.raises(ValueError, match="needs backend='functional'"):
        Collector(
            "Pendulum-v1",
            num_envs=1,
            device=torch.device("cpu"),
            seed=0,
            buffer_size=8,
            store_states=True,
            backend="gymnasium",
        )
    with pytest.raises(ValueError, match="backend='jax' is not allowed"):
        Collector("Pendulum-v1", num_envs=1, device=torch.device("cpu"), seed=0, buffer_size=8, backend="jax")


def test_temperature_fixed_scheduled_and_learned():
    fixed = Temperature(alpha=0.2)
    fixed.advance(10_000)
    fixed.dual_step(torch.tensor([5.0]))
    assert fixed.value == 0.2 and not fixed.learned
    linear = Temperature(alpha=1.0, alpha_final=0.1, anneal_steps=100)
    linear.advance(50)
    assert math.isclose(linear.value, 0.55)
    linear.advance(1000)
    assert math.isclose(linear.value, 0.1)
    geometric = Temperature(alpha=1.0, alpha_final=0.01, schedule="exponential", anneal_steps=100)
    geometric.advance(50)
    assert math.isclose(geometric.value, 0.1)
    learned = Temperature(alpha=None, initial_alpha=1.0, lr=0.1)
    assert isinstance(learned.value, torch.Tensor)
    for _ in range(10):
        learned.dual_step(torch.tensor([1.0, 3.0]))  # violated: alpha grows
    assert learned.item() > 2.0
    state = learned.state_dict()
    learned.dual_step(torch.tensor([-100.0]))
    learned.load_state_dict(state)
    assert learned.item() == pytest.approx(float(state["log_alpha"].exp()))
    with pytest.raises(ValueError, match="alpha_final needs alpha"):
        Temperature(alpha=None, alpha_final=0.1)
    with pytest.raises(ValueError, match="schedule='cosine' is not allowed"):
        Temperature(alpha=1.0, alpha_final=0.1, schedule="cosine")
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        Temperature(alpha=-1.0)


def test_interval_means_average_every_step_and_survive_a_checkpoint():
    from rl_as_inference.algos.stats import IntervalMeans

    stats = IntervalMeans()
    for k in range(4):
        stats.add({"kl": torch.tensor(float(k)), "loss": 2.0 * k})
    copy = IntervalMeans()
    copy.load_state_dict(stats.state_dict())
    assert stats.pop() == {"kl": 1.5, "loss": 3.0} == copy.pop()
    assert stats.pop() == {}
    stats.add({"loss": 1.0})  # floats only: no tensor to say where the sums live
    stats.add({"loss": 2.0})
    assert stats.pop() == {"loss": 1.5}


def test_a_metric_row_refuses_a_policy_with_a_non_finite_parameter():
    # On an accelerator the distributions do not validate (no per-step sync): this per-row check is
    # what stops a diverged run there, with the parameter's name.
    from types import SimpleNamespace

    from rl_as_inference.algos.stats import emit_row
    from rl_as_inference.guides import GaussianMLP

    env = gym.make("Pendulum-v1")
    policy = GaussianMLP(env.observation_space, env.action_space, hidden=(8,))
    data = SimpleNamespace(env_steps=64, pop_mean_return=lambda: float("nan"))
    result = SimpleNamespace(policy=policy, metrics=[])
    emit_row(result, None, data, 0.0, {"loss": 1.0})
    assert len(result.metrics) == 1
    with torch.no_grad():
        policy.log_std[0] = float("nan")
    with pytest.raises(ValueError, match="diverged by env step 64: the policy's parameter 'log_std'"):
        emit_row(result, None, data, 0.0, {"loss": 1.0})
    assert len(result.metrics) == 1


def test_mpo_logs_m_step_kl_averaged_over_the_interval():
    from rl_as_inference.algos import mpo

    # rows every 100 learner steps and pi_k refreshed every 50: a row read at the logging step alone
    # always sees KL(pi_k || pi) = 0 right after a refresh
    config = mpo.MPOConfig(
        total_env_steps=500,
        learning_starts=200,
        log_every=100,
        target_policy_update_every=50,
        hidden=(16,),
        batch_size=32,
        num_samples=4,
    )
    rows = mpo.train(config).metrics
    assert all(row["kl_mean_rel"] > 0 and row["kl_stddev_rel"] > 0 for row in rows[1:]), rows
