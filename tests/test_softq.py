"""Soft Q-learning: its policy is the closed-form E-step, its regression's fixed point is the exact
soft Bellman fixed point of a finite MDP, and it learns a Gymnasium task at a reduced budget."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

from rl_as_inference import bellman
from rl_as_inference.algos import softq
from rl_as_inference.envs.tabular import gridworld
from rl_as_inference.guides import SoftQPolicy


def _tabular_q(num_states: int, num_actions: int, alpha: float) -> SoftQPolicy:
    # one-hot observations through one linear layer: a table Q[s, a] (plus a per-action bias)
    return SoftQPolicy(
        gym.spaces.Discrete(num_states), gym.spaces.Discrete(num_actions), hidden=(), temperature=alpha
    )


def test_policy_is_greedy_in_kl_and_its_soft_value_is_the_expected_soft_q():
    torch.manual_seed(0)
    alpha = 0.7
    policy = SoftQPolicy(
        gym.spaces.Box(-1.0, 1.0, (3,)), gym.spaces.Discrete(4), hidden=(8,), temperature=alpha
    )
    with torch.no_grad():
        policy.net[-1].weight.normal_()  # away from the near-zero initialization
    obs = torch.rand(5, 3) * 2 - 1
    q = policy.q_values(obs)
    log_prior = torch.full_like(q, -math.log(4))
    expected = bellman.greedy_in_kl(q, log_prior, alpha)
    torch.testing.assert_close(policy(obs).probs, expected)
    soft = bellman.soft_value_of_distribution(q, expected, log_prior, alpha)
    torch.testing.assert_close(policy.soft_value(q), soft)
    assert (policy.soft_value(q) <= q.max(-1).values + 1e-6).all()  # the KL cost: never above the max
    assert torch.equal(policy.mode(policy(obs)), q.argmax(-1))


def test_temperature_is_saved_with_the_weights_and_checked():
    policy = _tabular_q(3, 2, alpha=0.25)
    clone = _tabular_q(3, 2, alpha=1.0)
    clone.load_state_dict(policy.state_dict())
    assert float(clone.temperature) == 0.25
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            policy.set_temperature(bad)


def _fixed_point(mdp, gamma: float, alpha: float, iterations: int = 2000) -> torch.Tensor:
    log_prior = torch.full((mdp.num_states, mdp.num_actions), -math.log(mdp.num_actions), dtype=torch.float64)
    q = torch.zeros(mdp.num_states, mdp.num_actions, dtype=torch.float64)
    for _ in range(iterations):  # a gamma-contraction: 0.9^2000 leaves nothing
        q = bellman.bellman_operator(
            q, bellman.greedy_in_kl(q, log_prior, alpha), mdp, gamma=gamma, alpha=alpha
        )
    return q


@pytest.mark.parametrize("double_q", [False, True])
def test_regression_on_every_transition_reaches_the_exact_soft_fixed_point(double_q):
    gamma, alpha = 0.9, 0.5
    mdp = gridworld(3, 3, walls=[(1, 1)], step_reward=-1.0, goal_reward=0.0)
    exact = _fixed_point(mdp, gamma, alpha)
    S, A = mdp.num_states, mdp.num_actions
    s, a = torch.meshgrid(torch.arange(S), torch.arange(A), indexing="ij")
    s, a = s.reshape(-1), a.reshape(-1)
    next_s = mdp.transition[s, a].argmax(-1)  # deterministic: slip 0
    batch = {
        "obs": s,
        "action": a,
        "reward": mdp.reward[s, a].float(),
        "next_obs": next_s,
        "terminated": mdp.terminal[next_s],
    }
    torch.manual_seed(0)
    q_net = _tabular_q(S, A, alpha)
    target = _tabular_q(S, A, alpha)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=0.05)
    for i in range(300):  # fitted soft Q iteration: fit the target, then copy it
        target.load_state_dict(q_net.state_dict())
        optimizer.param_groups[0]["lr"] = 0.05 * 0.98**i  # Adam's step noise shrinks to ~1e-4
        for _ in range(30):
            loss = softq.soft_q_loss(q_net, target, batch, gamma=gamma, loss="mse", double_q=double_q)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    learned = q_net.q_values(torch.arange(S)).detach().double()
    # Transitions into the goal end the episode; the goal's own row is never a state one acts in
    # (it is terminal on entry), so compare the rows of the states an episode can be in.
    live = ~mdp.terminal
    torch.testing.assert_close(learned[live], exact[live], atol=2e-3, rtol=0)


def test_huber_and_mse_losses_agree_on_small_errors_and_differ_on_large_ones():
    torch.manual_seed(0)
    q_net, target = _tabular_q(2, 2, 1.0), _tabular_q(2, 2, 1.0)
    batch = {
        "obs": torch.tensor([0, 1]),
        "action": torch.tensor([0, 1]),
        "reward": torch.tensor([0.1, 5.0]),
        "next_obs": torch.tensor([1, 0]),
        "terminated": torch.tensor([True, True]),  # y = r: the targets are the rewards
    }
    q = q_net.q_values(torch.tensor([0, 1])).detach()[[0, 1], [0, 1]]
    err = q - batch["reward"]
    mse = softq.soft_q_loss(q_net, target, batch, gamma=0.9, loss="mse")
    huber = softq.soft_q_loss(q_net, target, batch, gamma=0.9, loss="huber")
    torch.testing.assert_close(mse, err.square().mean())
    expected = torch.where(err.abs() < 1, 0.5 * err.square(), err.abs() - 0.5).mean()
    torch.testing.assert_close(huber, expected)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss", "l1", "loss='l1' is not allowed"),
        ("alpha_schedule", "cosine", "alpha_schedule='cosine' is not allowed"),
        ("updates_every", 0, "updates_every=0 is not allowed; use an int >= 1"),
        ("updates_per_step", 0, "updates_per_step=0 is not allowed; use an int >= 1"),
    ],
)
def test_bad_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        softq.SoftQConfig(**{field: value})


@pytest.mark.parametrize("updates_every, updates_per_step", [(1, 1), (1, 3), (2, 2)])
def test_learner_steps_are_updates_per_step_every_updates_every_collections(
    updates_every, updates_per_step, monkeypatch
):
    batches = []
    real_loss = softq.soft_q_loss

    def counted(q_net, target, batch, **kwargs):
        batches.append(batch["obs"])
        return real_loss(q_net, target, batch, **kwargs)

    monkeypatch.setattr(softq, "soft_q_loss", counted)
    config = softq.SoftQConfig(
        env="CartPole-v1", total_env_steps=200, learning_starts=120, num_envs=4, batch_size=8,
        hidden=(8,), updates_every=updates_every, updates_per_step=updates_per_step, log_every=200,
    )  # fmt: skip
    softq.train(config)
    # 50 collections of 4 transitions; collection c ends at env step 4c, and those that end at
    # learning_starts or later (c = 30..50) are learner turns where c is a multiple of updates_every
    turns = sum(1 for c in range(30, 51) if c % updates_every == 0)
    assert len(batches) == turns * updates_per_step
    if updates_per_step > 1:  # each learner step draws its own batch
        assert not torch.equal(batches[0], batches[1])


def test_continuous_actions_are_refused():
    with pytest.raises(ValueError, match="Pendulum-v1"):
        softq.train(softq.SoftQConfig(env="Pendulum-v1", total_env_steps=10))


def test_softq_learns_cartpole_at_a_reduced_budget():
    from rl_as_inference.runs import LoadedPolicy, episode_returns

    config = softq.SoftQConfig(
        env="CartPole-v1",
        total_env_steps=4000,
        learning_starts=500,
        num_envs=4,
        hidden=(64, 64),
        n_step=3,
        alpha=0.5,
        alpha_final=0.05,
        lr=1e-3,
        log_every=1000,
    )
    result = softq.train(config)
    returns = episode_returns(LoadedPolicy(result.policy, "CartPole-v1", torch.device("cpu")), episodes=10)
    # A uniformly random policy averages about 22 on CartPole-v1 (std about 12 per episode, so a
    # 10-episode mean of a random policy above 100 is impossible in practice).
    assert sum(returns) / len(returns) > 100, returns
    assert {"critic_loss", "alpha"} <= set(result.metrics[-1])
    assert float(result.policy.temperature) == pytest.approx(0.05, rel=1e-6)  # the schedule's end


def test_softq_run_round_trips_through_load_policy(tmp_path):
    import rl_as_inference as rlai
    from rl_as_inference import runs

    sets = ["total_env_steps=600", "learning_starts=500", "num_envs=4", "hidden=[16]", "log_every=100"]
    sets += ["alpha=0.3", "alpha_final=0.2"]
    out = runs.train_run(
        "MountainCar-v0", algo="softq", sets=sets, out=tmp_path / "mc", progress=False, eval_episodes=1
    )
    policy = rlai.load_policy(out)
    assert isinstance(policy.module, SoftQPolicy)
    assert policy.module.rescale_obs  # the recipe's setting, carried into the saved spec
    assert float(policy.module.temperature) == pytest.approx(0.2)  # the schedule's end, from the weights
    obs, _ = gym.make("MountainCar-v0").reset(seed=0)
    assert policy.act(obs) in (0, 1, 2)
    assert 0 <= policy.act(obs, deterministic=False, generator=torch.Generator().manual_seed(0)) < 3


@pytest.mark.parametrize("double_q", [False, True])
def test_n_step_target_adds_each_later_steps_q_minus_v_correction(double_q):
    # for q' = softmax(Q' / alpha) (pi uniform), alpha (log q'(a|s) - log pi(a)) = Q'(s, a) - V'(s): the
    # n-step target of T^{pi,q} is r_0 + sum_{k>=1} gamma^k (r_k - Q'(s_k, a_k) + V'(s_k)) + gamma^m V'(s_m)
    torch.manual_seed(0)
    alpha, gamma, n, b = 0.4, 0.9, 3, 4
    q_net, target = _tabular_q(5, 3, alpha), _tabular_q(5, 3, alpha)
    with torch.no_grad():
        for net in (q_net, target):
            net.net[-1].weight.normal_()
    g = torch.Generator().manual_seed(1)
    terminated = torch.zeros(n, b, dtype=torch.bool)
    truncated = torch.zeros(n, b, dtype=torch.bool)
    terminated[1, 1], truncated[0, 2] = True, True
    # consecutive transitions of one env, as a replay buffer stores them: s_k = s'_{k-1} until a
    # step ends the episode, a fresh start after it
    obs, next_obs = torch.randint(0, 5, (n, b), generator=g), torch.randint(0, 5, (n, b), generator=g)
    for k in range(1, n):
        ended = terminated[k - 1] | truncated[k - 1]
        obs[k] = torch.where(ended, obs[k], next_obs[k - 1])
    path = {
        "obs": obs,
        "action": torch.randint(0, 3, (n, b), generator=g),
        "reward": torch.randn(n, b, generator=g),
        "next_obs": next_obs,
        "terminated": terminated,
        "truncated": truncated,
    }
    last = torch.tensor([2, 1, 0, 2])
    batch = {key: value[0] for key, value in path.items()} | {"path": path, "last": last}
    loss = softq.soft_q_loss(q_net, target, batch, gamma=gamma, loss="mse", double_q=double_q)
    with torch.no_grad():
        q_target = target.q_values(torch.arange(5))
        chooser = q_net if double_q else target  # whose q' the value and the KL terms are of
        probs = torch.softmax(chooser.q_values(torch.arange(5)) / alpha, -1)
        v = (probs * (q_target - alpha * (probs.log() + math.log(3)))).sum(-1)
        q_choose = chooser.q_values(torch.arange(5))
        kl_term = q_choose - alpha * torch.logsumexp(q_choose / alpha, -1, keepdim=True) + alpha * math.log(3)
        y = []
        for i in range(b):
            total, discount = 0.0, 1.0
            for k in range(n):
                s, a = path["obs"][k, i], path["action"][k, i]
                if k > 0:
                    total -= discount * float(kl_term[s, a])  # = Q' - V' of the chooser
                total += discount * float(path["reward"][k, i])
                if terminated[k, i]:
                    break
                if truncated[k, i] or k == n - 1:
                    total += discount * gamma * float(v[path["next_obs"][k, i]])
                    break
                discount *= gamma
            y.append(total)
        q = q_net.q_values(batch["obs"]).gather(-1, batch["action"][:, None])[:, 0]
    torch.testing.assert_close(loss, (q - torch.tensor(y)).square().mean())
