"""A CUDA device this machine lacks is named in one line, wherever a ``device=`` is taken."""

import gymnasium as gym
import pytest
import torch

from rl_as_inference import envs, fit, guides, models
from rl_as_inference.envs.base import resolve_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
MESSAGE = r"device='cuda' but this machine has no CUDA device"

BUILDERS = {
    "envs.make": lambda: envs.make("Pendulum-v1", device="cuda"),
    "envs.gridworld": lambda: envs.gridworld(2, 2, device="cuda"),
    "envs.random_mdp": lambda: envs.random_mdp(3, 2, device="cuda"),
    "envs.make_vec": lambda: envs.make_vec("CartPole-v1", num_envs=4, device="cuda"),
    "gymnasium.make_vec": lambda: gym.make_vec("rl_as_inference/CartPole-v1", num_envs=4, device="cuda"),
    "resolve_device": lambda: resolve_device("cuda"),
}


@NO_CUDA
@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_cuda_without_cuda_is_named_at_once(build):
    with pytest.raises(ValueError, match=MESSAGE):
        build()


@NO_CUDA
def test_fit_on_cuda_without_cuda_names_the_device():
    env = envs.make("Pendulum-v1")
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=3)
    guide = guides.PolicyGuide(
        env, guides.TanhGaussianMLP(env.observation_space, env.action_space, hidden=(4,)), horizon=3
    )
    with pytest.raises(ValueError, match=MESSAGE):
        fit(model, guide, num_steps=1, num_episodes=2, device="cuda", progress=False)


def test_a_cuda_index_past_the_last_device_is_named(monkeypatch):
    # Two CUDA devices pretended: cuda:1 is fine, cuda:2 is named with the range there is.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(
        ValueError, match=r"device='cuda:2' but this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"
    ):
        resolve_device("cuda:2")
