"""The ports in Gymnasium's registry: ``gymnasium.make`` and ``gymnasium.make_vec`` on
``rl_as_inference/ID`` give envs that Gymnasium's own checker accepts and that step as Gymnasium's
originals do."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from rl_as_inference import envs

IDS = sorted(envs.PORTED)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the checker's notes on render modes
@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_make_passes_gymnasiums_env_checker(env_id):
    env = gym.make(f"rl_as_inference/{env_id}")
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec.max_episode_steps == gym.spec(env_id).max_episode_steps
    assert isinstance(env.unwrapped, envs.GymnasiumEnv)


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_make_steps_as_the_original(env_id):
    ours, theirs = gym.make(f"rl_as_inference/{env_id}"), gym.make(env_id)
    actions = gym.make(env_id).action_space
    actions.seed(3)
    for episode in range(3):
        a, _ = ours.reset(seed=100 + episode)
        b, _ = theirs.reset(seed=100 + episode)
        np.testing.assert_array_equal(a, b)  # the same initial state for the same seed
        for _ in range(1_000):
            action = actions.sample()
            a, ra, ta, ua, _ = ours.step(action)
            b, rb, tb, ub, _ = theirs.step(action)
            # float64 dynamics against Gymnasium's float64 code, observations cast to float32
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
            assert ra == pytest.approx(rb, abs=1e-5) and (ta, ua) == (tb, ub)
            if ta or ua:
                break
        assert ta or ua  # the episode ended the same way (terminated, or the time limit)


def test_gymnasium_make_vec_gives_the_batched_torch_env():
    vec = gym.make_vec("rl_as_inference/CartPole-v1", num_envs=4096)
    assert isinstance(vec, envs.FunctionalVectorEnv) and vec.num_envs == 4096
    obs, _ = vec.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (4096, 4)
    _, reward, terminated, truncated, _ = vec.step(torch.zeros(4096, dtype=torch.long))
    assert reward.shape == terminated.shape == truncated.shape == (4096,)
    pendulum = gym.make_vec("rl_as_inference/Pendulum-v1", num_envs=2, g=5.0, dtype=torch.float64)
    assert pendulum.env.g == 5.0 and pendulum.env.dtype == torch.float64  # kwargs reach the port
    assert pendulum.spec.id == "rl_as_inference/Pendulum-v1"


def test_module_prefix_form_imports_the_library_first():
    code = (
        "import gymnasium as gym; "
        "env = gym.make('rl_as_inference:rl_as_inference/Pendulum-v1'); "
        "print(type(env.unwrapped).__name__, env.reset(seed=0)[0].shape)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "GymnasiumEnv (3,)"


def test_bad_actions_are_named_through_gymnasium_make():
    env = gym.make("rl_as_inference/CartPole-v1")
    with pytest.raises(RuntimeError, match="call reset"):
        env.unwrapped.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 3 .* out of range: CartPole-v1 has actions in \[0, 2\)"):
        env.unwrapped.step(3)


def _episode_stats(vec, actions: np.ndarray, steps: int) -> list[tuple[float, int]]:
    vec.reset(seed=7)
    stats = []
    for k in range(steps):
        *_, info = vec.step(actions[k])
        if "episode" in info:
            done = info["_episode"]
            stats += [
                (float(r), int(n))
                for r, n in zip(info["episode"]["r"][done], info["episode"]["l"][done], strict=True)
            ]
    return stats


def test_gymnasiums_wrappers_run_on_the_torch_vector_env_through_numpy_view():
    from gymnasium.wrappers.vector import NormalizeObservation, NumpyToTorch, RecordEpisodeStatistics

    # seeding="gymnasium" and float64 reproduce gymnasium.make_vec step for step, so the episode
    # statistics Gymnasium's own wrapper records must be those it records on its own envs
    n, steps = 3, 450
    actions = np.random.default_rng(0).integers(0, 2, size=(steps, n))
    ours = RecordEpisodeStatistics(
        envs.numpy_view(envs.make_vec("CartPole-v1", n, seeding="gymnasium", dtype=torch.float64))
    )
    theirs = RecordEpisodeStatistics(gym.make_vec("CartPole-v1", n, vectorization_mode="sync"))
    expected = _episode_stats(theirs, actions, steps)
    assert len(expected) > 10 and _episode_stats(ours, actions, steps) == expected
    # and back to torch for a torch policy, through a stateful numpy wrapper
    stack = NumpyToTorch(
        NormalizeObservation(RecordEpisodeStatistics(envs.numpy_view(envs.make_vec("Pendulum-v1", 4))))
    )
    obs, _ = stack.reset(seed=0)
    obs, reward, *_ = stack.step(torch.zeros(4, 1))
    assert isinstance(obs, torch.Tensor) and isinstance(reward, torch.Tensor) and obs.shape == (4, 3)


def test_numpy_view_refuses_what_is_not_a_vector_env():
    with pytest.raises(TypeError, match="numpy_view wraps a gymnasium VectorEnv, got Pendulum"):
        envs.numpy_view(envs.make("Pendulum-v1"))
