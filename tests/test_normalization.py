"""What Gymnasium-scale tasks need: running observation normalization (statistics, sharing, saving,
loading, resuming), reward scaling, actions rescaled onto the box and clamped into it."""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference import load_policy, runs
from rl_as_inference.algos import mpo, sac, svi, vmpo
from rl_as_inference.algos.collect import Collector
from rl_as_inference.algos.vmpo import Rollouts
from rl_as_inference.cli import main
from rl_as_inference.critics import TwinQ
from rl_as_inference.guides import GaussianMLP, RunningObsNormalizer, TanhGaussianMLP, attach_obs_normalizer
from rl_as_inference.guides.normalization import obs_normalizer_of
from rl_as_inference.resume import Checkpointer

QUIET = ["--no-progress", "--eval-episodes", "2"]


class ActionEcho(gym.Env):
    """Observes the action it was given, unclipped: shows what reached the env."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 3.0], np.float32))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.asarray(action, np.float32), 1.0, False, False, {}


@pytest.fixture(autouse=True, scope="module")
def echo():
    gym.register("test/ActionEcho-v0", entry_point=ActionEcho, max_episode_steps=50, disable_env_checker=True)
    yield
    gym.registry.pop("test/ActionEcho-v0", None)


def test_the_running_statistics_are_the_mean_and_variance_of_everything_seen():
    torch.manual_seed(0)
    x = torch.randn(301, 3, dtype=torch.float64) * torch.tensor([0.01, 1.0, 300.0]) + torch.tensor(
        [5.0, -1, 2e3]
    )
    normalizer = RunningObsNormalizer(3)
    assert torch.equal(normalizer(x.float()), x.float().clamp(-10, 10))  # identity before any update
    for chunk in (x[:1], x[1:101], x[101:102], x[102:]):  # uneven batches, one of a single row
        normalizer.update(chunk)
    mean, var = x.numpy().mean(0), x.numpy().var(0)  # population variance, numpy's reference
    np.testing.assert_allclose(normalizer.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(normalizer.var.numpy(), var, rtol=1e-10)
    assert normalizer.count.item() == 301
    z = normalizer(x)
    np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-10)
    # unit spread but for eps = 1e-8 beside the variance (1e-4 for the first coordinate)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), np.sqrt(var / (var + 1e-8)), rtol=1e-9)


def test_normalized_coordinates_are_clipped_and_a_constant_one_maps_to_zero():
    normalizer = RunningObsNormalizer(2, clip=3.0)
    normalizer.update(torch.tensor([[1.0, 7.0], [-1.0, 7.0]]))  # mean (0, 7), variance (1, 0)
    out = normalizer(torch.tensor([[100.0, 7.0], [-0.5, 7.0]]))
    assert torch.equal(out[:, 1], torch.zeros(2))
    assert out[0, 0].item() == 3.0 and out[1, 0].item() == pytest.approx(-0.5, rel=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [((0,), "dim=0"), ((2,), None), ((2, -1.0), "clip=-1.0"), ((2, float("inf")), "clip=inf")],
)
def test_bad_normalizer_arguments_are_named(args, message):
    if message is None:
        RunningObsNormalizer(*args)
        return
    with pytest.raises(ValueError, match=message):
        RunningObsNormalizer(*args)


def test_a_discrete_observation_space_takes_no_normalizer():
    with pytest.raises(ValueError, match="1-D Box observation space, got Discrete"):
        RunningObsNormalizer.for_space(gym.spaces.Discrete(16))


def test_one_normalizer_serves_the_policy_the_critics_and_their_targets():
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    policy = TanhGaussianMLP(obs_space, act_space, hidden=(8,))
    lagged = copy.deepcopy(policy)
    critic = TwinQ(obs_space, act_space, hidden=(8,))
    normalizer = RunningObsNormalizer(3)
    attach_obs_normalizer(normalizer, policy, lagged, critic)
    encoders = [critic.q1.encoder, critic.q2.encoder, critic.target[0].encoder, critic.target[1].encoder]
    assert all(e.normalizer is normalizer for e in [policy.encoder, lagged.encoder, *encoders])
    normalizer.update(torch.randn(50, 3) * 100)
    obs = torch.randn(4, 3) * 100
    z = normalizer(obs)
    # each network computes on the normalized observation: the same output as on z without one
    plain = copy.deepcopy(critic.target[0])
    plain.encoder.normalizer = None
    torch.testing.assert_close(
        critic.target_min(obs, torch.zeros(4, 1)),
        torch.minimum(plain(z, torch.zeros(4, 1)), _plain(critic.target[1])(z, torch.zeros(4, 1))),
    )
    # the Polyak update still pairs parameters one to one (the statistics are buffers)
    critic.update_target(0.5)
    assert obs_normalizer_of(critic) is normalizer


def _plain(module):
    out = copy.deepcopy(module)
    out.encoder.normalizer = None
    return out


def test_the_collector_normalizes_every_observation_it_collects_before_the_policy_sees_it():
    data = Collector(
        "Pendulum-v1", num_envs=3, device=torch.device("cpu"), seed=0, buffer_size=100, normalize_obs=True
    )
    seen = [data.obs.clone()]
    for _ in range(5):
        data.step(None)
        seen.append(data.obs.clone())
    everything = torch.cat(seen).double()
    assert data.obs_normalizer.count.item() == 18
    torch.testing.assert_close(data.obs_normalizer.mean, everything.mean(0))
    torch.testing.assert_close(data.obs_normalizer.var, everything.var(0, unbiased=False))
    # the buffer keeps the raw observations: the networks normalize with the current statistics
    torch.testing.assert_close(data.buffer.storage["obs"][:15], torch.cat(seen[:5]))


def test_stored_rewards_are_scaled_and_logged_returns_are_not():
    kwargs = {"num_envs": 2, "device": torch.device("cpu"), "seed": 3, "buffer_size": 50}
    plain, scaled = Collector("Pendulum-v1", **kwargs), Collector("Pendulum-v1", reward_scale=0.25, **kwargs)
    for _ in range(10):
        plain.step(None)
        scaled.step(None)
    torch.testing.assert_close(
        scaled.buffer.storage["reward"][:20], 0.25 * plain.buffer.storage["reward"][:20]
    )
    torch.testing.assert_close(scaled.returns.current, plain.returns.current)


@pytest.mark.parametrize("backend", ["gymnasium", "functional"])
def test_box_actions_reach_the_env_clamped_and_are_stored_as_drawn(backend):
    env_id = "test/ActionEcho-v0" if backend == "gymnasium" else "MountainCarContinuous-v0"
    data = Collector(env_id, num_envs=4, device=torch.device("cpu"), seed=0, buffer_size=40)
    drawn = torch.tensor([[5.0, -2.0], [-3.0, 4.0], [0.5, 1.5], [0.0, 0.0]])[:, : data.action_space.shape[0]]

    class Wild(torch.nn.Module):
        def forward(self, obs):
            return torch.distributions.Independent(torch.distributions.Normal(drawn, 1e-30), 1)

    data.step(Wild())
    torch.testing.assert_close(data.buffer.storage["action"][:4], drawn)
    if backend == "gymnasium":  # the echo observes what the env was given
        low, high = (
            torch.as_tensor(ActionEcho.action_space.low),
            torch.as_tensor(ActionEcho.action_space.high),
        )
        torch.testing.assert_close(data.obs, torch.maximum(torch.minimum(drawn, high), low))


def test_on_policy_rollouts_clamp_box_actions_too():
    data = Rollouts("test/ActionEcho-v0", num_envs=2, device=torch.device("cpu"), seed=0)
    drawn = torch.tensor([[5.0, -2.0], [-3.0, 4.0]])

    class Wild(torch.nn.Module):
        def forward(self, obs):
            return torch.distributions.Independent(torch.distributions.Normal(drawn, 1e-30), 1)

    batch = data.unroll(Wild(), 1)
    torch.testing.assert_close(batch["action"][0], drawn)
    torch.testing.assert_close(batch["next_obs"][0], torch.tensor([[1.0, 0.0], [-1.0, 3.0]]))


def test_rescaled_gaussian_actions_span_the_box():
    obs_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    box = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 0.5], np.float32))
    torch.manual_seed(0)
    plain = GaussianMLP(obs_space, box, hidden=(8,), state_dependent_std=True)
    torch.manual_seed(0)
    scaled = GaussianMLP(obs_space, box, hidden=(8,), state_dependent_std=True, rescale_actions=True)
    obs = torch.randn(5, 2)
    (loc, scale), (sloc, sscale) = plain.params(obs), scaled.params(obs)
    mid, half = torch.tensor([0.0, 0.25]), torch.tensor([2.0, 0.25])
    torch.testing.assert_close(sloc, mid + half * loc)
    torch.testing.assert_close(sscale, half * scale)
    with pytest.raises(ValueError, match="rescale_actions needs a bounded action space"):
        GaussianMLP(obs_space, gym.spaces.Box(-np.inf, np.inf, (1,)), rescale_actions=True)


def test_a_normalized_run_saves_its_statistics_and_load_policy_applies_them(tmp_path):
    out = tmp_path / "run"
    code = main(
        ["train", "--env", "Pendulum-v1", "--algo", "vmpo", "--out", str(out), *QUIET]
        + ["--set", "total_env_steps=512", "--set", "num_envs=8", "--set", "hidden=[16]"]
        + ["--set", "normalize_obs=true", "--set", "obs_clip=5.0", "--set", "rescale_actions=true"]
    )
    assert code == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["policy"]["normalize_obs"] is True and state["policy"]["obs_clip"] == 5.0
    assert state["policy"]["rescale_actions"] is True
    loaded = load_policy(out)
    normalizer = obs_normalizer_of(loaded.module)
    assert normalizer is not None and normalizer.clip == 5.0
    assert normalizer.count.item() == 512 + 8  # every collected observation and the first resets
    assert normalizer.var.min().item() < 0.99  # learned statistics, not the identity's
    # the loaded policy acts on raw observations as the trained one did: rebuild it by hand
    torch.manual_seed(0)
    obs = torch.randn(6, 3) * 4
    by_hand = GaussianMLP(
        gym.spaces.Box(-np.inf, np.inf, (3,)),
        gym.spaces.Box(-2, 2, (1,)),
        hidden=(16,),
        state_dependent_std=True,
        rescale_actions=True,
    )
    attach_obs_normalizer(RunningObsNormalizer(3, clip=5.0), by_hand)
    by_hand.load_state_dict(state["state_dict"])
    torch.testing.assert_close(loaded.module(obs).mean, by_hand(obs).mean)
    report = json.loads((out / "eval.json").read_text())
    assert report["episodes"] == 2


def test_a_normalized_run_resumes_with_its_statistics(tmp_path):
    config = sac.SACConfig(
        env="Pendulum-v1",
        total_env_steps=600,
        learning_starts=200,
        batch_size=16,
        hidden=(16,),
        log_every=100,
        normalize_obs=True,
        reward_scale=0.1,
    )
    whole = sac.train(config, checkpointer=Checkpointer(tmp_path / "whole.pt", every=300))

    class Stop(Exception):
        pass

    def stop(row):
        if row["env_steps"] >= 400:
            raise Stop

    with pytest.raises(Stop):
        sac.train(config, callback=stop, checkpointer=Checkpointer(tmp_path / "cut.pt", every=300))
    resumed = sac.train(config, checkpointer=Checkpointer(tmp_path / "cut.pt", every=300, resume=True))
    assert obs_normalizer_of(resumed.policy).count.item() == 601
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sac.SACConfig(normalize_obs=True, rescale_obs=True), "not allowed together"),
        (lambda: sac.SACConfig(obs_clip=0), "obs_clip=0 is not allowed"),
        (lambda: sac.SACConfig(reward_scale=-1.0), "reward_scale=-1.0 is not allowed"),
        (lambda: svi.SVIConfig(reward_scale=0.1), "start_states='replay'"),
        (lambda: vmpo.VMPOConfig(rescale_actions=1), "rescale_actions=1 is not allowed"),
    ],
)
def test_bad_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_normalizing_discrete_observations_is_refused_naming_the_env():
    with pytest.raises(ValueError, match="FrozenLake-v1: normalize_obs needs a 1-D Box"):
        vmpo.train(vmpo.VMPOConfig(env="FrozenLake-v1", normalize_obs=True, total_env_steps=64))


def test_mpo_and_svi_train_with_a_normalizer():
    for module, config in (
        (
            mpo,
            mpo.MPOConfig(
                env="Pendulum-v1",
                total_env_steps=300,
                learning_starts=200,
                batch_size=16,
                hidden=(16,),
                num_samples=4,
                normalize_obs=True,
                rescale_actions=True,
            ),
        ),
        (
            svi,
            svi.SVIConfig(
                env="Pendulum-v1",
                start_states="rollout",
                num_envs=4,
                horizon=3,
                total_env_steps=120,
                hidden=(16,),
                normalize_obs=True,
                reward_scale=0.1,
            ),
        ),
    ):
        result = module.train(config)
        normalizer = obs_normalizer_of(result.policy)
        # one statistic per observation collected (the collector also counts its first resets)
        expected = result.env_steps + (0 if module is svi else config.num_envs)
        assert normalizer.count.item() == expected
        assert torch.isfinite(torch.cat([p.flatten() for p in result.policy.parameters()])).all()


def test_runs_spec_round_trips_every_policy_flag():
    policy = GaussianMLP(
        gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (1,)), hidden=(4,), rescale_actions=True
    )
    attach_obs_normalizer(RunningObsNormalizer(3, clip=2.5), policy)
    spec = runs._policy_spec(policy, sac.SACConfig(hidden=(4,)))
    assert spec["rescale_actions"] is True and spec["normalize_obs"] is True and spec["obs_clip"] == 2.5
