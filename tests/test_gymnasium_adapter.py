"""``envs.from_gymnasium``: any Gymnasium env with torch tensors in and out, equal to the raw numpy env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from rl_as_inference import envs
from rl_as_inference.envs.gymnasium_adapter import TorchVectorWrapper

CASES = {
    # id: (num_envs, steps, observation dtype, make kwargs); every run sees episodes end.
    "FrozenLake-v1": (4, 80, torch.int64, {}),
    "CartPole-v1": (4, 80, torch.float32, {}),
    "Pendulum-v1": (3, 40, torch.float32, {"max_episode_steps": 15}),
}


def _raw_actions(space: gym.Space, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n)
    return rng.uniform(-3.0, 3.0, size=(n, *space.shape))  # float64 and out of the box on purpose


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=[m.value for m in AutoresetMode])
@pytest.mark.parametrize("id", sorted(CASES))
def test_outputs_equal_raw_gymnasium(id, mode):
    n, steps, obs_dtype, kwargs = CASES[id]
    vector_kwargs = {"autoreset_mode": mode}
    raw = gym.make_vec(id, n, vectorization_mode="sync", vector_kwargs=vector_kwargs, **kwargs)
    venv = envs.from_gymnasium(id, n, vector_kwargs=vector_kwargs, **kwargs)
    assert venv.functional is False and isinstance(venv, gym.vector.VectorEnv)
    assert venv.num_envs == n and venv.metadata["autoreset_mode"] is mode
    assert venv.single_observation_space == raw.single_observation_space
    assert venv.observation_space == raw.observation_space and venv.action_space == raw.action_space

    r_obs, r_info = raw.reset(seed=11)
    obs, info = venv.reset(seed=11)
    assert isinstance(obs, torch.Tensor) and obs.dtype == obs_dtype and obs.device.type == "cpu"
    assert np.array_equal(obs.numpy(), r_obs) and set(info) == set(r_info)
    rng = np.random.default_rng(11)
    ended = 0
    for _ in range(steps):
        a = _raw_actions(raw.single_action_space, rng, n)
        # The raw env gets the action in its space's dtype; the wrapper converts a torch tensor.
        r_out = raw.step(a.astype(raw.action_space.dtype))
        out = venv.step(torch.as_tensor(a))
        obs, reward, terminated, truncated, info = out
        assert obs.dtype == obs_dtype and reward.dtype == torch.float64
        assert terminated.dtype == truncated.dtype == torch.bool
        for ours, theirs in zip(out[:4], r_out[:4], strict=True):
            assert isinstance(ours, torch.Tensor) and np.array_equal(ours.numpy(), theirs)
        assert set(info) == set(r_out[4])
        ended += int((terminated | truncated).sum())
        if "final_obs" in info:
            mask = info["_final_obs"]
            assert isinstance(mask, torch.Tensor) and np.array_equal(mask.numpy(), r_out[4]["_final_obs"])
            for i in np.flatnonzero(r_out[4]["_final_obs"]):
                assert np.array_equal(info["final_obs"][i].numpy(), r_out[4]["final_obs"][i])
        if mode is AutoresetMode.DISABLED:
            done = terminated | truncated
            if done.any():
                r_obs, _ = raw.reset(options={"reset_mask": done.numpy()})
                obs, _ = venv.reset(options={"reset_mask": done})  # a torch mask is converted
                assert np.array_equal(obs.numpy(), r_obs)
    assert ended > 0, "no episode ended: autoreset was not exercised"
    raw.close()
    venv.close()


def test_numeric_info_becomes_tensors():
    venv = envs.from_gymnasium("FrozenLake-v1", 2)
    _, info = venv.reset(seed=0)
    _, _, _, _, info = venv.step(torch.tensor([1, 2]))
    assert isinstance(info["prob"], torch.Tensor) and info["prob"].dtype == torch.float64
    assert info["_prob"].dtype == torch.bool


def test_factory_and_vector_env_instance():
    from_factory = envs.from_gymnasium(lambda: gym.make("CartPole-v1"), 3)
    from_id = envs.from_gymnasium("CartPole-v1", 3)
    from_instance = envs.from_gymnasium(gym.make_vec("CartPole-v1", 3, vectorization_mode="sync"), 3)
    assert isinstance(from_factory.env, gym.vector.SyncVectorEnv)
    first = [v.reset(seed=4)[0] for v in (from_factory, from_id, from_instance)]
    assert torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])
    actions = torch.tensor([0, 1, 1])
    outs = [v.step(actions) for v in (from_factory, from_id, from_instance)]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][0], outs[2][0])
    same = envs.from_gymnasium(
        lambda: gym.make("CartPole-v1"), 2, vector_kwargs={"autoreset_mode": "SameStep"}
    )
    assert same.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP


def test_agrees_with_the_functional_vector_env():
    """On a ported id the non-functional wrapper and the functional port give the same episodes."""
    wrapped = envs.from_gymnasium("CartPole-v1", 6)
    functional = envs.make_vec("CartPole-v1", 6, dtype=torch.float64, seeding="gymnasium")
    assert wrapped.functional is False and functional.functional is True
    a, _ = wrapped.reset(seed=9)
    b, _ = functional.reset(seed=9)
    assert torch.equal(a, b)
    gen = torch.Generator().manual_seed(9)
    for _ in range(100):
        action = torch.randint(0, 2, (6,), generator=gen)
        for x, y in zip(wrapped.step(action)[:4], functional.step(action)[:4], strict=True):
            assert torch.equal(x, y.to(x.dtype))


def test_outputs_are_copies_of_reused_buffers():
    venv = envs.from_gymnasium("CartPole-v1", 2, vector_kwargs={"copy": False})
    obs, _ = venv.reset(seed=0)
    kept = obs.clone()
    venv.step(torch.tensor([1, 1]))
    assert torch.equal(obs, kept)


def test_action_conversion_and_dtypes():
    venv = envs.from_gymnasium("Pendulum-v1", 2)
    venv.reset(seed=0)
    venv.step(torch.zeros(2, 1, dtype=torch.float64))  # converted to the space's float32
    venv.step(np.zeros((2, 1), dtype=np.float32))
    venv.step([[0.5], [-0.5]])
    cart = envs.from_gymnasium("CartPole-v1", 2)
    cart.reset(seed=0)
    cart.step(torch.tensor([0, 1], dtype=torch.int32))
    cart.step(np.array([1, 0]))


def test_repr_and_device():
    venv = envs.from_gymnasium("CartPole-v1", 2, device="cpu")
    assert venv.device == torch.device("cpu")
    assert "CartPole-v1" in repr(venv) and "functional=False" in repr(venv)
    assert isinstance(venv, TorchVectorWrapper) and venv.unwrapped is venv.env


# ---------------------------------------------------------------------- bad input
def test_unknown_id():
    with pytest.raises(ValueError, match="unknown Gymnasium environment id 'NoSuchEnv-v0'"):
        envs.from_gymnasium("NoSuchEnv-v0", 2)
    with pytest.raises(ValueError, match="'CartPole-v9'.*v1"):
        envs.from_gymnasium("CartPole-v9", 2)


@pytest.mark.parametrize(
    ("bad", "error"), [(0, ValueError), (-1, ValueError), ("2", TypeError), (1.0, TypeError)]
)
def test_bad_num_envs(bad, error):
    with pytest.raises(error, match="num_envs"):
        envs.from_gymnasium("CartPole-v1", bad)


def test_bad_sources_and_arguments():
    with pytest.raises(TypeError, match="factory, not an env instance"):
        envs.from_gymnasium(gym.make("CartPole-v1"), 2)
    with pytest.raises(TypeError, match="needs a Gymnasium id"):
        envs.from_gymnasium(42, 2)
    with pytest.raises(TypeError, match=r"\['render_mode'\] only apply to an id"):
        envs.from_gymnasium(lambda: gym.make("CartPole-v1"), 2, render_mode="rgb_array")
    with pytest.raises(ValueError, match="not allowed with a factory"):
        envs.from_gymnasium(lambda: gym.make("CartPole-v1"), 2, vectorization_mode="vector_entry_point")
    with pytest.raises(ValueError, match="vectorization mode"):
        envs.from_gymnasium("CartPole-v1", 2, vectorization_mode="threads")
    raw = gym.make_vec("CartPole-v1", 3, vectorization_mode="sync")
    with pytest.raises(ValueError, match="num_envs=2 but the given vector env has 3"):
        envs.from_gymnasium(raw, 2)
    with pytest.raises(TypeError, match="do not apply to an already built"):
        envs.from_gymnasium(raw, 3, max_episode_steps=5)


def test_bad_actions():
    cart = envs.from_gymnasium("CartPole-v1", 3)
    cart.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\).*needs shape \(3,\)"):
        cart.step(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="discrete action space .* takes integers"):
        cart.step(torch.zeros(3))
    with pytest.raises(TypeError, match="must hold numbers"):
        cart.step(np.array(["a", "b", "c"]))
    pend = envs.from_gymnasium("Pendulum-v1", 2)
    pend.reset(seed=0)
    with pytest.raises(ValueError, match=r"needs shape \(2, 1\)"):
        pend.step(torch.zeros(2))
    with pytest.raises(TypeError, match="continuous action space .* takes floats"):
        pend.step(torch.zeros(2, 1, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_outputs():
    venv = envs.from_gymnasium("Pendulum-v1", 2, device="cuda")
    obs, _ = venv.reset(seed=0)
    assert obs.is_cuda
    obs, reward, terminated, truncated, _ = venv.step(torch.zeros(2, 1, device="cuda"))
    assert obs.is_cuda and reward.is_cuda and terminated.is_cuda and truncated.is_cuda
