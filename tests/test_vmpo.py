"""V-MPO: the loss against hand-computed values, the n-step targets against a brute-force loop, the
temperature dual meeting its bound, a short CartPole run that learns, and the run-directory round trip."""

from __future__ import annotations

import inspect
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal

import rl_as_inference as rlai
from rl_as_inference import envs, runs
from rl_as_inference.algos import vmpo
from rl_as_inference.resume import Checkpointer


def _duals(log_temperature: float = 0.0, alphas: tuple[float, ...] = (5.0,)):
    return (
        torch.tensor(log_temperature, requires_grad=True),
        torch.tensor([math.log(a) for a in alphas], requires_grad=True),
    )


def test_public_names_have_docstrings():
    assert vmpo.__doc__
    for name in vmpo.__all__:
        obj = getattr(vmpo, name)
        assert inspect.getdoc(obj) and obj.__doc__.strip(), name


def test_categorical_loss_matches_hand_computed_values():
    config = vmpo.VMPOConfig(epsilon_eta=0.01, epsilon_alpha=0.02)
    returns = torch.tensor([3.0, 1.0, 0.0, 2.0])
    values = torch.zeros(4, requires_grad=True)  # A = G - V = [3, 1, 0, 2]: top half = samples 0 and 3
    actions = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.0, 0.0], [2.0, -1.0]], requires_grad=True)
    online = Categorical(logits=logits)
    target = Categorical(logits=logits.detach())  # pi = pi_old: KL = 0
    log_temperature, log_alpha = _duals()
    loss, stats = vmpo.vmpo_losses(
        returns, values, actions, online, target, log_temperature, log_alpha, config
    )

    e = math.e
    psi = torch.tensor([e / (e + 1), 1 / (e + 1)])  # softmax([3, 2] / eta) at eta = 1
    log_p = torch.log_softmax(logits.detach(), -1)
    policy_loss = -(psi[0] * log_p[0, 0] + psi[1] * log_p[3, 0])
    value_loss = 0.5 * (9 + 1 + 0 + 4) / 4
    temperature_loss = 0.01 + math.log((e**3 + e**2) / 2)  # eta eps + eta log mean_K exp(A / eta)
    alpha_loss = 5.0 * (0.02 - 0.0)
    kl_psi = float((psi * torch.log(2 * psi)).sum())  # KL(psi || uniform on the 2 kept samples)
    torch.testing.assert_close(stats["policy_loss"], policy_loss)
    assert float(stats["value_loss"]) == pytest.approx(value_loss)
    assert float(stats["kl_q_rel"]) == pytest.approx(kl_psi / 0.01, rel=1e-5)
    assert float(stats["kl_rel"]) == 0.0 and float(stats["alpha"]) == pytest.approx(5.0)
    assert float(loss.detach()) == pytest.approx(
        value_loss + float(policy_loss) + temperature_loss + alpha_loss, rel=1e-6
    )

    loss.backward()
    # the value regresses onto G; advantages are constants for the policy and the duals
    torch.testing.assert_close(values.grad, -returns / 4)
    # only the kept samples (0 and 3) are fitted
    assert logits.grad[1].abs().sum() == 0 and logits.grad[2].abs().sum() == 0
    assert logits.grad[0, 0] < 0 and logits.grad[3, 0] < 0  # descent raises log pi(a = 0) there
    # dL/d log eta = eta (eps_eta - KL(psi || u)): KL = 0.111 > eps_eta = 0.01, so descent raises eta
    assert float(log_temperature.grad) == pytest.approx(0.01 - kl_psi, rel=1e-5) and log_temperature.grad < 0
    # dL/d log alpha = alpha (eps_alpha - KL) = 5 * 0.02 > 0: the constraint is slack, alpha falls
    assert float(log_alpha.grad) == pytest.approx(0.1)


def test_duals_move_the_right_way_when_their_constraints_flip():
    returns = torch.tensor([3.0, 1.0, 0.0, 2.0])
    actions = torch.tensor([0, 1, 1, 0])
    online = Categorical(logits=torch.tensor([[3.0, -3.0]] * 4))
    target = Categorical(logits=torch.zeros(4, 2))  # KL(pi_old || pi) ~ 2 > eps_alpha
    log_temperature, log_alpha = _duals()
    config = vmpo.VMPOConfig(epsilon_eta=0.5, epsilon_alpha=0.01)  # KL(psi || u) = 0.11 < 0.5
    loss, stats = vmpo.vmpo_losses(
        returns, torch.zeros(4), actions, online, target, log_temperature, log_alpha, config
    )
    loss.backward()
    assert float(stats["kl_q_rel"]) < 1 and log_temperature.grad > 0  # slack: eta falls (sharper weights)
    assert float(stats["kl_rel"]) > 1 and log_alpha.grad < 0  # violated: alpha rises


def test_top_fraction_keeps_the_largest_advantages():
    returns = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    config = vmpo.VMPOConfig(top_fraction=0.5)
    logits = torch.zeros(6, 2, requires_grad=True)
    loss, _ = vmpo.vmpo_losses(
        returns,
        torch.zeros(6),
        torch.zeros(6, dtype=torch.long),
        Categorical(logits=logits),
        Categorical(logits=torch.zeros(6, 2)),
        *_duals(),
        config,
    )
    loss.backward()
    fitted = logits.grad.abs().sum(-1) > 0
    assert fitted.tolist() == [False, True, False, True, False, True]  # advantages 5, 4, 3


def test_gaussian_loss_is_decoupled_and_pulls_the_mean_toward_good_actions():
    config = vmpo.VMPOConfig(epsilon_mean=0.01, epsilon_stddev=1e-4)
    gen = torch.Generator().manual_seed(0)
    b = 64
    actions = torch.randn(b, 1, generator=gen)
    returns = -((actions[:, 0] - 0.7) ** 2)  # prefers actions near 0.7
    loc = torch.zeros(b, 1, requires_grad=True)
    log_scale = torch.zeros(b, 1, requires_grad=True)
    online = Independent(Normal(loc, log_scale.exp()), 1)
    target = Independent(Normal(torch.zeros(b, 1), torch.ones(b, 1)), 1)
    log_temperature, log_alpha = _duals(alphas=(1.0, 1.0))
    loss, stats = vmpo.vmpo_losses(
        returns, torch.zeros(b), actions, online, target, log_temperature, log_alpha, config
    )
    assert {"kl_mean_rel", "kl_stddev_rel", "alpha_mean", "alpha_stddev"} <= set(stats)
    # with pi = pi_old the decoupled fit is twice the log-likelihood of pi_old, weighted on the top half
    top = torch.topk(returns, b // 2)
    psi = torch.softmax(top.values, 0)
    expected = -(psi * 2 * target.log_prob(actions)[top.indices]).sum()
    torch.testing.assert_close(stats["policy_loss"], expected)
    loss.backward()
    # d/dmu of -psi log N(a; mu, 1) at mu = 0 is -psi a on the kept samples; the others get no gradient
    torch.testing.assert_close(loc.grad[top.indices, 0], -psi * actions[top.indices, 0])
    dropped = torch.ones(b, dtype=torch.bool)
    dropped[top.indices] = False
    assert (loc.grad[dropped] == 0).all()
    assert loc.grad.sum() < 0  # the kept actions lie around 0.7: descent moves the means up
    # a shifted mean violates only the mean's KL; a shrunk scale only the stddev's
    shifted = Independent(Normal(torch.full((b, 1), 0.5), torch.ones(b, 1)), 1)
    _, stats = vmpo.vmpo_losses(
        returns, torch.zeros(b), actions, shifted, target, *_duals(alphas=(1.0, 1.0)), config
    )
    assert float(stats["kl_mean_rel"]) == pytest.approx(0.125 / 0.01) and float(stats["kl_stddev_rel"]) == 0
    shrunk = Independent(Normal(torch.zeros(b, 1), torch.full((b, 1), 0.5)), 1)
    _, stats = vmpo.vmpo_losses(
        returns, torch.zeros(b), actions, shrunk, target, *_duals(alphas=(1.0, 1.0)), config
    )
    assert float(stats["kl_mean_rel"]) == 0 and float(stats["kl_stddev_rel"]) > 1


def test_temperature_dual_minimizer_meets_the_kl_bound():
    gen = torch.Generator().manual_seed(0)
    returns = torch.randn(256, generator=gen) * 3.0
    config = vmpo.VMPOConfig(epsilon_eta=0.1)
    logits = torch.zeros(256, 2)
    log_temperature, log_alpha = _duals()
    opt = torch.optim.Adam([log_temperature], lr=0.05)
    for _ in range(1000):
        loss, stats = vmpo.vmpo_losses(
            returns,
            torch.zeros(256),
            torch.zeros(256, dtype=torch.long),
            Categorical(logits=logits),
            Categorical(logits=logits),
            log_temperature,
            log_alpha,
            config,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(stats["kl_q_rel"]) - 1.0) < 0.02, stats


def _brute_force_returns(rewards, next_values, terminated, truncated, gamma):
    steps, n = rewards.shape
    out = torch.zeros(steps, n, dtype=torch.float64)
    for i in range(n):
        for t in range(steps):
            total, discount = 0.0, 1.0
            for k in range(t, steps):
                total += discount * float(rewards[k, i])
                if terminated[k, i]:
                    break
                if truncated[k, i] or k == steps - 1:
                    total += discount * gamma * float(next_values[k, i])
                    break
                discount *= gamma
            out[t, i] = total
    return out


def test_nstep_returns_match_a_brute_force_loop():
    gen = torch.Generator().manual_seed(3)
    steps, n, gamma = 9, 6, 0.9
    rewards = torch.randn(steps, n, generator=gen, dtype=torch.float64)
    next_values = torch.randn(steps, n, generator=gen, dtype=torch.float64)
    terminated = torch.rand(steps, n, generator=gen) < 0.2
    truncated = torch.rand(steps, n, generator=gen) < 0.2
    terminated[4, 0] = truncated[4, 0] = True  # both at once: termination wins
    got = vmpo.nstep_returns(rewards, next_values, terminated, truncated, gamma)
    torch.testing.assert_close(got, _brute_force_returns(rewards, next_values, terminated, truncated, gamma))
    # one env by hand: terminated at t = 1 (no bootstrap), truncated at t = 3, unroll ends at t = 4
    r = torch.ones(5, 1, dtype=torch.float64)
    v = torch.tensor([[10.0], [20.0], [30.0], [40.0], [50.0]], dtype=torch.float64)
    term = torch.tensor([[False], [True], [False], [False], [False]])
    trunc = torch.tensor([[False], [False], [False], [True], [False]])
    got = vmpo.nstep_returns(r, v, term, trunc, 0.5)[:, 0].tolist()
    assert got == [1 + 0.5 * 1, 1, 1 + 0.5 * (1 + 0.5 * 40), 1 + 0.5 * 40, 1 + 0.5 * 50]


def _deterministic_return(policy, episodes: int = 32) -> float:
    venv = envs.make_vec("CartPole-v1", episodes, autoreset_mode="SameStep")
    obs, _ = venv.reset(seed=123)
    total, alive = torch.zeros(episodes), torch.ones(episodes, dtype=torch.bool)
    with torch.no_grad():
        while alive.any():
            obs, reward, terminated, truncated, _ = venv.step(policy.mode(policy(obs)))
            total += reward * alive
            alive &= ~(terminated | truncated)
    return float(total.mean())


@pytest.mark.slow
def test_vmpo_learns_cartpole_on_a_reduced_budget():
    config = vmpo.VMPOConfig(total_env_steps=20_000, seed=0)
    result = vmpo.train(config)
    assert result.env_steps >= 20_000 and result.metrics
    row = result.metrics[-1]
    assert {"return", "temperature", "kl_q_rel", "kl_rel", "alpha", "value_loss"} <= set(row)
    assert row["return"] > 60  # a uniformly random policy lasts ~22 steps
    assert _deterministic_return(result.policy) > 150


def test_train_run_and_load_policy_round_trip(tmp_path):
    small = ["total_env_steps=1024", "num_envs=8", "unroll_length=16", "log_every=256", "hidden=[16]"]
    out = runs.train_run(
        "CartPole-v1", algo="vmpo", sets=small, out=tmp_path / "cartpole", progress=False, eval_episodes=2
    )
    summary = json.loads((out / "eval.json").read_text())
    assert summary["algo"] == "vmpo" and summary["env_steps"] == 1024 and summary["episodes"] == 2
    policy = rlai.load_policy(out)
    assert type(policy.module).__name__ == "CategoricalMLP"
    assert policy.act(np.zeros(4, dtype=np.float32)) in (0, 1)
    # a Box action space gets a GaussianMLP with a state-dependent scale
    out = runs.train_run(
        "Pendulum-v1", algo="vmpo", sets=small, out=tmp_path / "pendulum", progress=False, eval_episodes=1
    )
    policy = rlai.load_policy(out)
    assert policy.module.state_dependent_std and policy.act(np.zeros(3, dtype=np.float32)).shape == (1,)


def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path):
    config = vmpo.VMPOConfig(total_env_steps=768, num_envs=4, unroll_length=16, log_every=64, hidden=(16,))
    whole = vmpo.train(config, checkpointer=Checkpointer(tmp_path / "whole.pt", every=256))

    class Stop(Exception):
        pass

    def stop(row):
        if row["env_steps"] >= 512:
            raise Stop

    with pytest.raises(Stop):
        vmpo.train(config, callback=stop, checkpointer=Checkpointer(tmp_path / "cut.pt", every=256))
    resumed = vmpo.train(config, checkpointer=Checkpointer(tmp_path / "cut.pt", every=256, resume=True))
    assert resumed.env_steps == whole.env_steps
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key


def test_rescaled_observations_and_exploring_starts_round_trip_through_a_run(tmp_path):
    small = ["total_env_steps=1024", "num_envs=8", "unroll_length=16", "log_every=256", "hidden=[16]"]
    sets = [*small, "rescale_obs=true", "exploring_starts=0.5"]
    out = runs.train_run(
        "MountainCar-v0", algo="vmpo", sets=sets, out=tmp_path / "mc", progress=False, eval_episodes=1
    )
    policy = rlai.load_policy(out)
    space = gym.make("MountainCar-v0").observation_space
    assert policy.module.rescale_obs
    # The observation box's faces map onto -1 and +1, its centre onto 0.
    faces = torch.tensor(np.stack((space.low, space.high, (space.low + space.high) / 2)))
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    assert torch.allclose(policy.module.encoder(faces, torch.float32), expected, atol=1e-6)
    # The map is rebuilt from the space, not saved: the weights' keys are those of a plain policy.
    config = vmpo.VMPOConfig(hidden=(16,))
    plain = vmpo._make_policy(config, space, gym.spaces.Discrete(3))
    assert set(plain.state_dict()) == set(policy.module.state_dict())
    # Rescaling changes what the network sees: the same weights act differently without it.
    plain.load_state_dict(policy.module.state_dict())
    obs = torch.tensor(np.stack([space.sample() for _ in range(64)]))
    with torch.no_grad():
        assert not torch.allclose(plain(obs).logits, policy.module(obs).logits)


def test_the_progress_bar_shows_only_the_figures_vmpo_reports(tmp_path, capsys):
    # V-MPO logs no ELBO: the bar showed "elbo=nan", which reads as a diverged run
    small = ["total_env_steps=512", "num_envs=8", "unroll_length=16", "log_every=128", "hidden=[16]"]
    runs.train_run("CartPole-v1", algo="vmpo", sets=small, out=tmp_path / "r", progress=True, eval_episodes=0)
    err = capsys.readouterr().err
    assert "ret=" in err and "nan" not in err, err[-500:]
