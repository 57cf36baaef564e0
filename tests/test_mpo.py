"""MPO's loss: the E-step temperature dual meets its KL bound; the decoupled M-step moves what it should."""

from __future__ import annotations

import math

import pytest
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


def test_the_categorical_kl_multiplier_grows_at_most_linearly_while_its_bound_is_violated():
    # A policy held 0.05 nats from pi_k (50x the bound) for 1500 dual steps of Adam at lr 0.01, as
    # in a run whose optimizer noise alone keeps the KL above epsilon_policy. Adam moves the
    # parameter by ~lr per step, so alpha = softplus(param) ends near 0.69 + 1500 x 0.01 = 15.7; an
    # exp parameter would end near e^15 = 3e6 (what froze a LunarLander-v3 run's policy).
    b = 8
    q_values = torch.zeros(b, 3)
    target_logits = torch.zeros(b, 3)
    online = torch.tensor([[0.4, 0.0, -0.4]]).expand(b, 3)
    config = mpo.MPOConfig(epsilon_policy=1e-3)
    log_temperature = torch.tensor(0.0, requires_grad=True)
    alpha_param = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.Adam([alpha_param], lr=0.01)
    for _ in range(1500):
        loss, stats = mpo.categorical_mpo_losses(
            q_values, online, target_logits, log_temperature, alpha_param, config
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(stats["kl_policy_rel"]) > 10  # the bound stayed violated throughout
    # softplus(0) + 1500 Adam steps of at most ~lr each (m / sqrt(v) -> 1 for a constant sign)
    assert 10.0 < float(stats["alpha_policy"]) < 0.7 + 1500 * 0.01 * 1.05


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


def test_per_dimension_constraints_bound_each_coordinate_and_sum_to_the_joint_kl():
    gen = torch.Generator().manual_seed(2)
    b, d = 32, 2
    actions = torch.randn(16, b, d, generator=gen)
    q_values = -(actions**2).sum(-1)
    zeros, ones = torch.zeros(b, d), torch.ones(b, d)
    # The mean moves in coordinate 0 only (by 0.2: KL 0.02 there, 0 in coordinate 1).
    loc = torch.stack([torch.full((b,), 0.2), torch.zeros(b)], dim=-1)
    joint = mpo.MPOConfig(epsilon_mean=0.01)
    _, joint_stats = mpo.mpo_losses(q_values, actions, (loc, ones), (zeros, ones), *_duals(), joint)
    per_dim = mpo.MPOConfig(epsilon_mean=0.01, per_dim_constraints=True)
    duals = [torch.tensor(0.0, requires_grad=True)] + [torch.zeros(d, requires_grad=True) for _ in range(2)]
    loss, stats = mpo.mpo_losses(q_values, actions, (loc, ones), (zeros, ones), *duals, per_dim)
    loss.backward()
    # KL(N(0, 1) || N(0.2, 1)) = 0.2^2 / 2 = 0.02 in coordinate 0: the binding ratio is 2 either way,
    # since the other coordinate contributes nothing to the joint KL.
    assert (
        abs(float(stats["kl_mean_rel"]) - 2.0) < 1e-5 and abs(float(joint_stats["kl_mean_rel"]) - 2.0) < 1e-5
    )
    # Coordinate 0 violates its bound (descent raises its multiplier), coordinate 1 is slack (lowers it).
    assert duals[1].grad[0] < 0 < duals[1].grad[1]
    assert (duals[2].grad > 0).all()  # the scale did not move in either coordinate


def test_out_of_box_cost_is_the_distance_to_the_box_in_half_widths():
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    actions = torch.tensor([[[0.5, 0.5], [3.0, 0.5], [-4.0, 2.0]]])  # inside; 1 out in 0; 2 and 1 out
    cost = mpo.out_of_box_cost(actions, low, high)
    # half widths (2, 0.5): (0, 0), (0.5, 0), (1, 2) -> norms 0, 0.5, sqrt(5)
    assert torch.allclose(cost, -torch.tensor([[0.0, 0.5, 5.0**0.5]]))


def test_action_penalization_pulls_a_mean_outside_the_box_back_inside():
    gen = torch.Generator().manual_seed(3)
    b = 32
    t_loc, t_scale = torch.full((b, 1), 1.5), torch.full((b, 1), 0.5)  # pi_k centred beyond high = 1
    actions = t_loc + t_scale * torch.randn(64, b, 1, generator=gen)
    q_values = torch.zeros(64, b)  # Q indifferent: only the penalty has a preference
    box = (torch.tensor([-1.0]), torch.tensor([1.0]))
    config = mpo.MPOConfig(action_penalization=True)
    loc = t_loc.clone().requires_grad_(True)
    log_eta_penalty = torch.tensor(0.0, requires_grad=True)
    loss, stats = mpo.mpo_losses(
        q_values, actions, (loc, t_scale), (t_loc, t_scale), *_duals(), config,
        penalty_log_temperature=log_eta_penalty, action_box=box,
    )  # fmt: skip
    loss.backward()
    plain = t_loc.clone().requires_grad_(True)
    mpo.mpo_losses(q_values, actions, (plain, t_scale), (t_loc, t_scale), *_duals(), mpo.MPOConfig())[
        0
    ].backward()
    # With Q flat, the plain M-step pulls each mean toward its own samples' mean (noise); the penalty
    # weights add a pull toward the box in every state (descent lowers the mean).
    assert (loc.grad > plain.grad).all()
    assert {"temperature_penalty", "kl_penalty_rel"} <= set(stats)
    # Its dual alone: minimizing g(eta) puts the penalty weights' KL from pi_k on epsilon_penalty.
    opt = torch.optim.Adam([log_eta_penalty], lr=0.05)
    for _ in range(2000):
        loss, stats = mpo.mpo_losses(
            q_values, actions, (t_loc, t_scale), (t_loc, t_scale), *_duals(), config,
            penalty_log_temperature=log_eta_penalty, action_box=box,
        )  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(stats["kl_penalty_rel"]) - 1.0) < 0.02, stats
    with pytest.raises(ValueError, match="needs penalty_log_temperature and action_box"):
        mpo.mpo_losses(q_values, actions, (loc, t_scale), (t_loc, t_scale), *_duals(), config)


@pytest.mark.parametrize(
    "sets",
    [
        {"twin_critic": False},
        {"per_dim_constraints": True, "action_penalization": True, "rescale_actions": True},
    ],
    ids=["single-critic", "per-dim-penalized"],
)
def test_mpo_refinements_train_and_log(sets):
    config = mpo.MPOConfig(
        env="Pendulum-v1", total_env_steps=300, learning_starts=200, hidden=(16,), log_every=100, **sets
    )
    result = mpo.train(config)
    row = result.metrics[-1]
    assert all(math.isfinite(float(row[k])) for k in ("loss", "critic_loss", "temperature"))
    if config.action_penalization:
        assert {"temperature_penalty", "kl_penalty_rel"} <= set(row)


def test_single_critic_is_one_network_and_its_loss_one_squared_error():
    import gymnasium as gym

    from rl_as_inference.critics import TwinQ, soft_q_loss

    obs_space, act_space = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (1,))
    torch.manual_seed(0)
    critic = TwinQ(obs_space, act_space, hidden=(8,), twin=False)
    assert (
        critic.q2 is None
        and len(critic.target) == 1
        and len(critic(torch.zeros(2, 3), torch.zeros(2, 1))) == 1
    )
    obs, act = torch.randn(5, 3), torch.randn(5, 1)
    assert torch.equal(critic.min(obs, act), critic.q1(obs, act))
    assert torch.equal(critic.target_min(obs, act), critic.target[0](obs, act))

    class StandardNormal(torch.nn.Module):
        def forward(self, o):
            return torch.distributions.Independent(
                torch.distributions.Normal(torch.zeros(o.shape[0], 1), 1.0), 1
            )

    policy = StandardNormal()
    batch = {"obs": obs, "action": act, "reward": torch.ones(5), "next_obs": obs}
    batch["terminated"] = torch.ones(5, dtype=torch.bool)
    # terminated everywhere: the target is the reward, so the loss is mean (Q1 - 1)^2 and nothing more
    loss = soft_q_loss(critic, policy, batch, alpha=0.0, log_pi=0.0, gamma=0.99)
    assert torch.allclose(loss, (critic.q1(obs, act) - 1).square().mean())
    with pytest.raises(ValueError, match="per_dim_constraints=true and action_penalization=true are for Box"):
        mpo.train(mpo.MPOConfig(env="CartPole-v1", per_dim_constraints=True, total_env_steps=10))


def test_a_clipping_critic_values_an_out_of_box_action_as_the_action_the_env_executes():
    import gymnasium as gym

    from rl_as_inference.critics import TwinQ
    from rl_as_inference.distributional import CategoricalQ

    obs_space, act_space = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2.0, 0.5, (2,))
    obs = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    outside = torch.tensor([[3.0, 0.0], [-5.0, 0.2], [0.0, 9.0], [-2.5, -4.0], [1.0, 0.4], [-1.0, 0.0]])
    clipped = outside.clamp(-2.0, 0.5)
    for make in (
        lambda clip: TwinQ(obs_space, act_space, hidden=(8,), clip_actions=clip),
        lambda clip: CategoricalQ(obs_space, act_space, hidden=(8,), num_atoms=5, clip_actions=clip),
    ):
        torch.manual_seed(1)
        critic = make(True)
        torch.manual_seed(1)
        plain = make(False)  # the same weights, evaluating the raw action
        assert torch.equal(critic.min(obs, outside), critic.min(obs, clipped))
        assert torch.equal(critic.target_min(obs, outside), critic.target_min(obs, clipped))
        assert torch.equal(critic.min(obs, clipped), plain.min(obs, clipped))  # inside: unchanged
        assert not torch.equal(plain.min(obs, outside), plain.min(obs, clipped))
        # the box is the env's, not a learned quantity: state dicts are those of an unclipped critic
        assert critic.state_dict().keys() == plain.state_dict().keys()


def test_mpo_critic_is_only_ever_asked_for_actions_inside_the_box(monkeypatch):
    from rl_as_inference import critics

    given, reached = [], []  # the actions handed to Q, and the action columns its first layer saw
    original_init, original_forward = critics.QNetwork.__init__, critics.QNetwork.forward

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        width = self.encoder.dim
        self.net[0].register_forward_pre_hook(
            lambda _, inputs: reached.append(inputs[0][..., width:].detach())
        )

    def forward(self, obs, action=None):
        given.append(action.detach())
        return original_forward(self, obs, action)

    monkeypatch.setattr(critics.QNetwork, "__init__", init)
    monkeypatch.setattr(critics.QNetwork, "forward", forward)
    config = mpo.MPOConfig(
        env="Pendulum-v1", total_env_steps=400, learning_starts=200, hidden=(16,), log_every=200
    )
    mpo.train(config)
    given = torch.cat([a.reshape(-1) for a in given])
    reached = torch.cat([a.reshape(-1) for a in reached])
    # Pendulum's torque box is [-2, 2]. pi_k's samples and the replayed actions leave it (the
    # Gaussian's initial scale is the half width: about a third of its samples fall outside);
    # before the critic clipped, those raw values reached the network.
    assert float(given.abs().max()) > 2.0 and given.numel() == reached.numel()
    assert float(reached.abs().max()) <= 2.0, float(reached.abs().max())


def test_out_of_box_stat_is_the_fraction_of_samples_with_a_coordinate_outside_the_box():
    actions = torch.tensor([[[0.5, 0.0]], [[1.5, 0.0]], [[0.0, -3.0]], [[2.0, 2.0]]])  # [M=4, B=1, d=2]
    q_values = torch.zeros(4, 1)
    params = (torch.zeros(1, 2), torch.ones(1, 2))
    duals = [torch.tensor(0.0, requires_grad=True) for _ in range(3)]
    box = (torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 2.0]))  # [2.0, 2.0] is outside on one axis only
    _, stats = mpo.mpo_losses(q_values, actions, params, params, *duals, mpo.MPOConfig(), action_box=box)
    assert float(stats["out_of_box"]) == 0.75
    _, stats = mpo.mpo_losses(q_values, actions, params, params, *duals, mpo.MPOConfig())
    assert "out_of_box" not in stats
