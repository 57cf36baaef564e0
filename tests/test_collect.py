"""Data collection: n-step replay paths against a brute-force walk, the critics' n-step and Retrace
targets by hand, behaviour log-probabilities, Discrete and Gymnasium-backed collectors, and the
temperature (fixed, scheduled, learned)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference import replay
from rl_as_inference.algos import sac
from rl_as_inference.algos.collect import Collector
from rl_as_inference.critics import TwinQ, policy_log_prior, soft_q_loss
from rl_as_inference.guides import CategoricalMLP, TanhGaussianMLP
from rl_as_inference.replay import ReplayBuffer, available_memory, storage_bytes, transition_fields
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
def test_n_step_sampling_returns_the_paths_of_a_brute_force_walk(capacity, steps):
    stride, n = 3, 4
    buf = _filled_buffer(capacity, stride, steps)
    batch = buf.sample_n_step(500, n, stride=stride, generator=torch.Generator().manual_seed(1))
    st, path = buf.storage, batch["path"]
    oldest = (buf.position - buf.size) % capacity
    for i in range(500):
        slot = int(batch["slot"][i])
        # the path must be one env's consecutive transitions, all still in the buffer
        assert (slot - oldest) % capacity < buf.size - (n - 1) * stride
        for key in st:  # the first step is a plain transition
            assert torch.equal(batch[key][i], st[key][slot])
        last = n - 1
        for k in range(n):
            j = (slot + k * stride) % capacity
            for key in st:
                assert torch.equal(path[key][k, i], st[key][j])
            if (st["terminated"][j] or st["truncated"][j]) and last == n - 1:
                last = min(last, k)
        assert int(batch["last"][i]) == last
    # n = 1: paths of one step, the plain transitions
    one = buf.sample_n_step(50, 1, stride=stride, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(one["path"]["reward"][0], st["reward"][one["slot"]])
    assert (one["last"] == 0).all()


def test_n_step_sampling_rejects_what_it_cannot_do():
    buf = _filled_buffer(60, 3, 2)
    with pytest.raises(ValueError, match="too few for 4-step paths"):
        buf.sample_n_step(8, 4, stride=3)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        buf.sample_n_step(8, 0, stride=3)
    with pytest.raises(ValueError, match="not a multiple of stride"):
        buf.sample_n_step(8, 1, stride=7)
    plain = ReplayBuffer(8, transition_fields((1,), (1,)))
    with pytest.raises(ValueError, match="needs a 'truncated' field"):
        plain.sample_n_step(8, 2)


def _path_batch(obs_dim, actions, seed=0):
    """An n-step batch (as :meth:`ReplayBuffer.sample_n_step` returns) with ends of every kind."""
    g = torch.Generator().manual_seed(seed)
    n, b = actions.shape[:2]
    terminated = torch.zeros(n, b, dtype=torch.bool)
    truncated = torch.zeros(n, b, dtype=torch.bool)
    terminated[1, 1] = True  # path 1 ends at step 1 without a bootstrap
    truncated[0, 2] = True  # path 2 is cut at step 0 by a time limit: bootstrap from its next_obs
    obs, next_obs = torch.randn(n, b, obs_dim, generator=g), torch.randn(n, b, obs_dim, generator=g)
    ended = terminated | truncated
    for k in range(1, n):  # consecutive transitions of one env: s_k = s'_{k-1} until an episode ends
        obs[k] = torch.where(ended[k - 1, :, None], obs[k], next_obs[k - 1])
    path = {
        "obs": obs,
        "action": actions,
        "reward": torch.randn(n, b, generator=g),
        "next_obs": next_obs,
        "terminated": terminated,
        "truncated": truncated,
        "behaviour_log_prob": torch.randn(n, b, generator=g) - 1.0,
    }
    last = torch.cat((torch.ones_like(ended[:1]), ~ended[:-1])).cumprod(0).sum(0) - 1
    return {key: value[0] for key, value in path.items()} | {"path": path, "last": last}


def test_n_step_critic_target_has_the_kl_terms_of_the_stored_actions_under_the_current_q():
    # the target of Q(s_0, a_0) from a replayed path: r_0 + sum_{k>=1} gamma^k (r_k - alpha (log q -
    # log pi)(a_k|s_k)) + gamma^m V(s_m), cut at a termination, bootstrapped at a truncation, with a
    # prior pi given as a callable of (obs, action) (here a second policy, as em's pi_k)
    space_o, space_a = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3)
    torch.manual_seed(0)
    critic = TwinQ(space_o, space_a, hidden=(8,))
    policy = CategoricalMLP(space_o, space_a, hidden=(8,))
    prior = CategoricalMLP(space_o, space_a, hidden=(8,))
    with torch.no_grad():
        for net in (policy, prior):
            net.net[-1].weight.normal_()  # away from uniform
    actions = torch.randint(0, 3, (3, 4), generator=torch.Generator().manual_seed(1))
    batch = _path_batch(2, actions)
    alpha, gamma = 0.5, 0.9
    loss = soft_q_loss(critic, policy, batch, alpha=alpha, log_pi=policy_log_prior(prior), gamma=gamma)
    path = batch["path"]
    with torch.no_grad():
        y = []
        for i in range(4):
            total, discount = 0.0, 1.0
            for k in range(3):
                o, a = path["obs"][k, i : i + 1], path["action"][k, i : i + 1]
                if k > 0:
                    log_ratio = policy(o).log_prob(a) - prior(o).log_prob(a)
                    total -= discount * alpha * float(log_ratio)
                total += discount * float(path["reward"][k, i])
                if path["terminated"][k, i]:
                    break
                if path["truncated"][k, i] or k == 2:
                    s = path["next_obs"][k, i : i + 1]
                    probs, log_pi = policy(s).probs, prior(s).logits
                    v = (probs * (critic.target_min(s) - alpha * (probs.log() - log_pi))).sum()
                    total += discount * gamma * float(v)
                    break
                discount *= gamma
            y.append(total)
        y = torch.tensor(y)
        q1, q2 = critic(batch["obs"])
        a = batch["action"][:, None]
        expected = (q1.gather(1, a)[:, 0] - y).square().mean() + (q2.gather(1, a)[:, 0] - y).square().mean()
    torch.testing.assert_close(loss, expected)


def test_retrace_critic_target_weighs_the_corrections_by_truncated_ratios():
    space_o, space_a = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3)
    torch.manual_seed(0)
    critic = TwinQ(space_o, space_a, hidden=(8,))
    policy = CategoricalMLP(space_o, space_a, hidden=(8,))
    actions = torch.randint(0, 3, (3, 4), generator=torch.Generator().manual_seed(1))
    batch = _path_batch(2, actions)
    alpha, gamma, lam = 0.5, 0.9, 0.8
    loss = soft_q_loss(
        critic,
        policy,
        batch,
        alpha=alpha,
        log_pi=-math.log(3),
        gamma=gamma,
        correction="retrace",
        trace_lambda=lam,
    )
    path = batch["path"]
    with torch.no_grad():

        def v(s):  # the soft value of q against the uniform prior, exactly over the 3 actions
            probs = policy(s).probs
            return (probs * (critic.target_min(s) - alpha * (probs.log() + math.log(3)))).sum(-1)

        y = []
        for i in range(4):  # Q(s_0, a_0) + sum_k gamma^k (prod_{j<=k} c_j) delta_k, by hand
            total, weight = 0.0, 1.0
            for k in range(3):
                o, a = path["obs"][k, i : i + 1], path["action"][k, i : i + 1]
                q_sa = float(critic.target_min(o)[0, a])
                if k == 0:
                    total = q_sa
                else:
                    ratio = math.exp(float(policy(o).log_prob(a)) - float(path["behaviour_log_prob"][k, i]))
                    weight *= gamma * lam * min(1.0, ratio)
                cont = 0.0 if path["terminated"][k, i] else 1.0
                delta = (
                    float(path["reward"][k, i])
                    + gamma * cont * float(v(path["next_obs"][k, i : i + 1]))
                    - q_sa
                )
                total += weight * delta
                if path["terminated"][k, i] or path["truncated"][k, i]:
                    break
            y.append(total)
        y = torch.tensor(y)
        q1, q2 = critic(batch["obs"])
        a = batch["action"][:, None]
        expected = (q1.gather(1, a)[:, 0] - y).square().mean() + (q2.gather(1, a)[:, 0] - y).square().mean()
    torch.testing.assert_close(loss, expected)
    del batch["path"]["behaviour_log_prob"]
    with pytest.raises(ValueError, match="needs the behaviour's log-probabilities"):
        soft_q_loss(critic, policy, batch, alpha=alpha, log_pi=0.0, gamma=gamma, correction="retrace")
    with pytest.raises(
        ValueError, match="n_step_correction='tree' is not allowed; use one of 'none', 'retrace'"
    ):
        soft_q_loss(critic, policy, batch, alpha=alpha, log_pi=0.0, gamma=gamma, correction="tree")


def test_collector_stores_the_behaviour_log_probability_when_asked():
    cpu = torch.device("cpu")
    data = Collector("Pendulum-v1", num_envs=4, device=cpu, seed=0, buffer_size=64, behaviour_log_prob=True)
    data.step(None)  # uniform warm-up actions on [-2, 2]: log mu = -log 4
    torch.manual_seed(0)
    policy = TanhGaussianMLP(data.observation_space, data.action_space, hidden=(8,))
    with torch.no_grad():  # means far outside [-2, 2]: the float32 actions saturate at the box faces
        policy.net[-1].bias[0] = 12.0
    data.step(policy)
    st = data.buffer.storage
    torch.testing.assert_close(st["behaviour_log_prob"][:4], torch.full((4,), -math.log(4.0)))
    assert (st["action"][4:8] == 2.0).all()
    # log mu is scored as a learner scores the stored action later (its float32 value, not the
    # sample's exact pre-tanh u): on-policy the ratio q / mu of Retrace's traces is then exactly 1
    with torch.no_grad():
        want = policy(st["obs"][4:8]).log_prob(st["action"][4:8])
    torch.testing.assert_close(st["behaviour_log_prob"][4:8], want, rtol=0, atol=1e-5)
    discrete = Collector(
        "CartPole-v1", num_envs=2, device=cpu, seed=0, buffer_size=8, discrete=True, behaviour_log_prob=True
    )
    discrete.step(None)
    torch.testing.assert_close(
        discrete.buffer.storage["behaviour_log_prob"][:2], torch.full((2,), -math.log(2))
    )
    # only a retrace config asks for the field: the default buffers keep their fields
    plain = Collector.for_config(sac.SACConfig(n_step=3), cpu, "sac")
    assert "behaviour_log_prob" not in plain.buffer.storage
    retrace = Collector.for_config(sac.SACConfig(n_step=3, n_step_correction="retrace"), cpu, "sac")
    assert "behaviour_log_prob" in retrace.buffer.storage


def test_truncate_latest_marks_the_newest_transitions_across_the_wrap():
    buf = _filled_buffer(12, 3, 5)  # 15 transitions written: the newest five in slots 2, 1, 0, 11, 10
    before = buf.storage["truncated"].clone()
    buf.truncate_latest(5)
    newest = torch.zeros(12, dtype=torch.bool)
    newest[[0, 1, 2, 10, 11]] = True
    assert buf.storage["truncated"][newest].all()
    assert torch.equal(buf.storage["truncated"][~newest], before[~newest])
    with pytest.raises(ValueError, match="needs a 'truncated' field"):
        ReplayBuffer(4, transition_fields((1,), (1,))).truncate_latest(1)


def test_a_buffer_state_without_the_new_field_still_loads_and_a_mismatch_is_named():
    # a state written by a buffer of the former fields (every default config's) loads as before
    old = _filled_buffer(60, 3, 12)
    state = old.state_dict()
    fields = transition_fields((1,), (1,)) | {"truncated": ((), torch.bool), "slot": ((), torch.int64)}
    again = ReplayBuffer(60, fields)
    again.load_state_dict(state)
    assert again.position == old.position and again.size == old.size
    for key, value in old.storage.items():
        assert torch.equal(again.storage[key], value), key
    with pytest.raises(ValueError, match=r"fields missing from it \['behaviour_log_prob'\]"):
        ReplayBuffer(60, fields | {"behaviour_log_prob": ((), torch.float32)}).load_state_dict(state)
    with pytest.raises(ValueError, match=r"fields this buffer does not have \['slot'\]"):
        ReplayBuffer(60, transition_fields((1,), (1,)) | {"truncated": ((), torch.bool)}).load_state_dict(
            state
        )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_step", 0, "n_step=0 is not allowed; use an int >= 1"),
        (
            "n_step_correction",
            "tree",
            "n_step_correction='tree' is not allowed; use one of 'none', 'retrace'",
        ),
        ("trace_lambda", 1.5, r"trace_lambda=1.5 is not allowed; use a number in \[0, 1\]"),
    ],
)
def test_n_step_settings_are_checked_by_every_replay_config(field, value, message):
    from rl_as_inference.algos import em, mpo, softq, svi

    for cls in (sac.SACConfig, svi.SVIConfig, em.EMConfig, mpo.MPOConfig, softq.SoftQConfig):
        with pytest.raises(ValueError, match=message):
            cls(**{field: value})


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


def test_storage_bytes_is_what_the_buffer_allocates():
    fields = transition_fields((3, 4), (2,), action_dtype=torch.int64) | {"truncated": ((), torch.bool)}
    buf = ReplayBuffer(10, fields)
    allocated = sum(t.numel() * t.element_size() for t in buf.storage.values())
    # per transition: obs and next_obs 12 float32 each, 2 int64, a float32 reward and two bools
    assert storage_bytes(10, fields) == allocated == 10 * (2 * 12 * 4 + 2 * 8 + 4 + 2)


def test_available_memory_of_the_cpu_is_positive_where_it_is_known():
    free = available_memory("cpu")
    assert free is None or (isinstance(free, int) and free > 0)


def test_a_buffer_larger_than_the_free_memory_is_refused_before_allocating(monkeypatch):
    fields = transition_fields((96, 96, 3), (3,))  # CarRacing-v3's image observations
    per = storage_bytes(1, fields)
    monkeypatch.setattr(replay, "available_memory", lambda device: 1000 * per + per // 2)
    ReplayBuffer(1000, fields)  # fits
    with pytest.raises(ValueError) as info:
        ReplayBuffer(100_000, fields)
    message = str(info.value)
    assert "capacity 100,000 (a run's buffer_size)" in message
    assert f"{per:,} bytes per transition" in message and "'obs' of shape (96, 96, 3)" in message
    assert "at most 1,000 transitions fit: lower buffer_size" in message


def test_a_collector_whose_buffer_does_not_fit_names_the_run_and_closes_its_envs(monkeypatch):
    closed = []
    real_close = gym.vector.SyncVectorEnv.close
    monkeypatch.setattr(
        gym.vector.SyncVectorEnv, "close", lambda self, **kw: closed.append(1) or real_close(self)
    )
    monkeypatch.setattr(replay, "available_memory", lambda device: 10_000)
    with pytest.raises(ValueError, match=r"^sac on Pendulum-v1: a replay buffer of capacity 1,000 "):
        Collector(
            "Pendulum-v1",
            num_envs=2,
            device=torch.device("cpu"),
            seed=0,
            buffer_size=1000,
            backend="gymnasium",
            algorithm="sac",
        )
    assert closed


@pytest.mark.parametrize("correction", ["none", "retrace"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("n", [2, 4])  # the batch helper ends paths at steps 0 and 1
def test_the_discrete_path_target_equals_the_general_one(n, alpha, correction):
    # n_step_discrete_soft_target reads the later steps' states off the path's next states and
    # (without KL terms) only the last one; on paths as a replay buffer stores them it must give
    # n_step_soft_target's targets exactly
    from torch.distributions import Categorical

    from rl_as_inference.critics import n_step_discrete_soft_target, n_step_soft_target

    space_o, space_a = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3)
    torch.manual_seed(0)
    critic, policy = TwinQ(space_o, space_a, hidden=(8,)), CategoricalMLP(space_o, space_a, hidden=(8,))
    prior = CategoricalMLP(space_o, space_a, hidden=(8,))
    actions = torch.randint(0, 3, (n, 6), generator=torch.Generator().manual_seed(1))
    batch = _path_batch(2, actions)
    log_pi = policy_log_prior(prior)

    def soft_value(obs):
        q, log_q = critic.target_min(obs), policy(obs).logits
        return (log_q.exp() * (q - alpha * (log_q - log_pi(obs, None)))).sum(-1)

    common = {"gamma": 0.9, "alpha": alpha, "log_pi": log_pi, "correction": correction}
    with torch.no_grad():
        general = n_step_soft_target(
            batch,
            policy=lambda o: Categorical(logits=policy(o).logits),
            soft_value=soft_value,
            action_value=lambda o, a: critic.target_min(o).gather(-1, a.long()[:, None])[:, 0],
            **common,
        )
        discrete = n_step_discrete_soft_target(
            batch, tables=lambda o: (critic.target_min(o), policy(o).logits), **common
        )
    torch.testing.assert_close(discrete, general)
