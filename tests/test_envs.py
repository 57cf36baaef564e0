"""The torch ports against Gymnasium's own code: one step, reset, observations, gradients, bad input."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference import envs

from .conftest import requires_cuda

IDS = sorted(envs.PORTED)
F64 = torch.float64
N_TRANSITIONS = 4000


# ---------------------------------------------------------------------- transitions from Gymnasium
def _random_action(rng: np.random.Generator, space: gym.Space):
    if isinstance(space, gym.spaces.Discrete):
        return int(rng.integers(space.n))
    # Half of the continuous actions fall outside the box: clipping must match too.
    return (rng.uniform(-2.0, 2.0, size=space.shape) * space.high).astype(np.float32)


def _goal_seeking_action(id: str, rng: np.random.Generator, state: np.ndarray):
    """Energy pumping, so that MountainCar and Acrobot episodes reach their terminal states."""
    if id == "MountainCar-v0":
        return 2 if state[1] >= 0 else 0
    if id == "MountainCarContinuous-v0":
        return np.array([np.sign(state[1] + 1e-12) * rng.uniform(0.5, 1.5)], dtype=np.float32)
    if id == "Acrobot-v1":
        return 2 if state[3] >= 0 else 0
    return None


def gymnasium_transitions(id: str, n: int, seed: int = 0):
    """(state, action, next_state, reward, terminated, observation) of ``n`` steps of real Gymnasium episodes."""
    env = gym.make(id)
    raw = env.unwrapped
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("state", "action", "next_state", "reward", "terminated", "obs")}
    env.reset(seed=seed)
    while len(rows["state"]) < n:
        state = np.array(raw.state, dtype=np.float64)
        action = None
        if rng.uniform() < 0.7:
            action = _goal_seeking_action(id, rng, state)
        if action is None:
            action = _random_action(rng, env.action_space)
        obs, reward, terminated, truncated, _ = env.step(action)
        rows["state"].append(state)
        rows["action"].append(action)
        rows["next_state"].append(np.array(raw.state, dtype=np.float64))
        rows["reward"].append(float(reward))
        rows["terminated"].append(bool(terminated))
        rows["obs"].append(obs)
        if terminated or truncated:
            env.reset()
    env.close()
    return {
        "state": torch.tensor(np.array(rows["state"])),
        "action": torch.tensor(np.array(rows["action"])),
        "next_state": torch.tensor(np.array(rows["next_state"])),
        "reward": torch.tensor(rows["reward"], dtype=F64),
        "terminated": torch.tensor(rows["terminated"]),
        "obs": torch.tensor(np.array(rows["obs"])),
    }


@pytest.fixture(scope="module", params=IDS)
def transitions(request):
    return request.param, gymnasium_transitions(request.param, N_TRANSITIONS)


def test_one_step_matches_gymnasium(transitions):
    id, data = transitions
    env = envs.make(id, dtype=F64)
    out = env.step(data["state"], data["action"])
    # Spec: next state and reward within 1e-9 in float64 on CPU. Gymnasium's own float64 math differs
    # from torch's only through 1-ulp sin/cos/pow differences, far below this bound.
    torch.testing.assert_close(out.state, data["next_state"], rtol=0, atol=1e-9)
    torch.testing.assert_close(out.reward, data["reward"], rtol=0, atol=1e-9)
    assert torch.equal(out.terminated, data["terminated"])
    # Observations are float32 copies of float64 values that agree to 1e-15: equal unless a value
    # sits on a float32 rounding boundary, which we have not seen in these data.
    assert torch.equal(env.observe(out.state), data["obs"])


def test_transitions_cover_termination_and_clipping(transitions):
    # Guards the test above against data that never exercises the interesting branches.
    id, data = transitions
    if id != "Pendulum-v1":  # Pendulum never terminates
        assert data["terminated"].sum() >= 3, f"{id}: too few terminal transitions in the test data"
    if data["action"].is_floating_point():
        high = float(gym.spec(id).make().action_space.high[0])
        assert (data["action"].abs() > high).float().mean() > 0.05


def test_step_is_pure_and_batched_over_any_shape():
    env = envs.make("Pendulum-v1", dtype=F64)
    state = env.reset(12, seed=3)
    action = torch.linspace(-3, 3, 12, dtype=torch.float32)[:, None]
    before = (state.clone(), action.clone())
    flat = env.step(state, action)
    assert torch.equal(state, before[0]) and torch.equal(action, before[1])
    again = env.step(state, action)
    assert torch.equal(flat.state, again.state) and torch.equal(flat.reward, again.reward)
    # A [3, 4] batch (particles x episodes) gives the same numbers as the flat [12] batch.
    shaped = env.step(state.reshape(3, 4, 2), action.reshape(3, 4, 1))
    assert shaped.state.shape == (3, 4, 2) and shaped.reward.shape == (3, 4)
    assert torch.equal(shaped.state.reshape(12, 2), flat.state)


def test_pendulum_reward_uses_pre_step_state_and_unwrapped_angle():
    env = envs.make("Pendulum-v1", dtype=F64)
    state = torch.tensor([[2 * math.pi + 0.1, 0.0], [-0.1, 0.0]], dtype=F64)
    out = env.step(state, torch.zeros(2, 1, dtype=F64))
    # theta is normalized inside the cost only: 2pi + 0.1 costs like 0.1.
    torch.testing.assert_close(out.reward, torch.tensor([-0.01, -0.01], dtype=F64), rtol=0, atol=1e-12)
    assert out.state[0, 0] > 2 * math.pi  # the state itself is never wrapped


# ---------------------------------------------------------------------- float32 default
@pytest.mark.parametrize("id", IDS)
def test_float32_default_tracks_float64(id):
    data = gymnasium_transitions(id, 500, seed=1)
    env32, env64 = envs.make(id), envs.make(id, dtype=F64)
    assert env32.dtype == torch.float32
    out32 = env32.step(data["state"].float(), data["action"])
    out64 = env64.step(data["state"], data["action"])
    assert out32.state.dtype == torch.float32 and out32.reward.dtype == torch.float32
    # One float32 step carries ~1e-7 relative error; Acrobot's RK4 amplifies it a little.
    torch.testing.assert_close(out32.state.double(), out64.state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out32.reward.double(), out64.reward, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------- reset
@pytest.mark.parametrize("id", IDS)
@pytest.mark.parametrize("seed", [0, 123])
def test_gymnasium_seeding_reproduces_make_vec_reset(id, seed):
    n = 7
    venv = gym.make_vec(id, n, vectorization_mode="sync")
    obs, _ = venv.reset(seed=seed)
    expected = torch.tensor(np.array([np.asarray(e.unwrapped.state, dtype=np.float64) for e in venv.envs]))
    venv.close()
    env = envs.make(id, dtype=F64)
    state = env.reset(n, seed=seed, seeding="gymnasium")
    assert torch.equal(state, expected)
    assert torch.equal(env.observe(state), torch.tensor(obs))


@pytest.mark.parametrize("id", IDS)
def test_torch_seeding_is_reproducible_and_has_gymnasium_distribution(id):
    env = envs.make(id, dtype=F64)
    n = 20_000
    a, b = env.reset(n, seed=5), env.reset(n, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, env.reset(n, seed=6))
    ref = gym.make(id)
    draws = []
    for s in range(400):
        ref.reset(seed=s)
        draws.append(np.asarray(ref.unwrapped.state, dtype=np.float64))
    ref_states = torch.tensor(np.array(draws))
    lo, hi = ref_states.min(0).values, ref_states.max(0).values
    width = torch.tensor(env.reset_high, dtype=F64) - torch.tensor(env.reset_low, dtype=F64)
    # Same support as Gymnasium's draws (widened by 1% of the box) ...
    margin = 0.01 * width.max()
    assert (a >= lo - margin).all() and (a <= hi + margin).all()
    # ... and the uniform's mean (l + h) / 2 per coordinate: standard error (h - l) / sqrt(12 n);
    # 5 standard errors makes a false alarm about 1 in 10^6 per coordinate.
    mean_expected = (ref_states.min(0).values + ref_states.max(0).values) / 2
    varying = ref_states.std(0) > 0
    se = (hi - lo) / math.sqrt(12 * n)
    assert ((a.mean(0) - mean_expected).abs()[varying] < 5 * se[varying] + 1e-3 * (hi - lo)[varying]).all()
    assert (a.std(0)[~varying] == 0).all()  # e.g. MountainCar's velocity starts at exactly 0


def test_reset_generator_stream_and_seed_none():
    env = envs.make("CartPole-v1")
    g = torch.Generator().manual_seed(0)
    first, second = env.reset(4, generator=g), env.reset(4, generator=g)
    assert not torch.equal(first, second)
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(env.reset(4, generator=g2), first)
    assert env.reset(3).shape == (3, 4)


# ---------------------------------------------------------------------- spaces and registry
@pytest.mark.parametrize("id", IDS)
def test_spaces_and_time_limit_match_gymnasium(id):
    env = envs.make(id)
    ref = gym.make(id)
    assert env.observation_space == ref.observation_space
    assert env.action_space == ref.action_space
    assert env.max_episode_steps == gym.spec(id).max_episode_steps
    # pathwise gradients of the return are unbiased on Pendulum-v1 only (tests/test_pathwise.py)
    assert env.differentiable == (id == "Pendulum-v1")
    state = env.reset(5, seed=0)
    obs = env.observe(state)
    assert obs.dtype == torch.float32 and obs.shape == (5, *ref.observation_space.shape)


# ---------------------------------------------------------------------- gradients
def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_pendulum_gradients_wrt_state_and_action():
    env = envs.make("Pendulum-v1", dtype=F64)
    gen = torch.Generator().manual_seed(0)
    state = torch.stack(
        [torch.rand(6, generator=gen, dtype=F64) * 6 - 3, torch.rand(6, generator=gen, dtype=F64) * 2 - 1], -1
    )
    action = (torch.rand(6, 1, generator=gen, dtype=F64) * 3.6 - 1.8).requires_grad_()  # inside the clip
    state.requires_grad_()
    _gradcheck(lambda s, a: env.step(s, a)[:2], state, action)
    # The observation carries gradients too when its dtype is kept.
    _gradcheck(lambda s: env.observe(s, dtype=None), state)


def test_mountain_car_continuous_gradients():
    env = envs.make("MountainCarContinuous-v0", dtype=F64, float32_state=False)
    state = torch.tensor([[-0.5, 0.01], [-0.3, -0.02], [0.1, 0.03]], dtype=F64, requires_grad=True)
    action = torch.tensor([[0.3], [-0.7], [0.9]], dtype=F64, requires_grad=True)
    _gradcheck(lambda s, a: env.step(s, a)[:2], state, action)
    # The default (Gymnasium-faithful float32 storage) gives the same analytic gradient.
    exact = envs.make("MountainCarContinuous-v0", dtype=F64)
    s32 = state.detach().float().double().requires_grad_()
    g_exact = torch.autograd.grad(exact.step(s32, action)[0].sum(), (s32, action))
    g_smooth = torch.autograd.grad(env.step(s32, action)[0].sum(), (s32, action))
    for a, b in zip(g_exact, g_smooth, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("id", ["CartPole-v1", "MountainCar-v0", "Acrobot-v1"])
def test_discrete_env_gradients_wrt_state(id):
    env = envs.make(id, dtype=F64)
    state = env.reset(4, seed=0).requires_grad_()
    if id == "MountainCar-v0":  # away from the walls and speed limits
        state = torch.tensor(
            [[-0.5, 0.01], [-0.3, -0.02], [0.1, 0.03], [-0.9, 0.0]], dtype=F64, requires_grad=True
        )
    action = torch.tensor([0, 1, 1, 0]) if env.action_space.n == 2 else torch.tensor([0, 1, 2, 1])
    _gradcheck(lambda s: env.step(s, action)[0], state)


# ---------------------------------------------------------------------- bad input
def test_unknown_id_names_it_and_points_to_from_gymnasium():
    with pytest.raises(ValueError, match=r"'LunarLander-v3'.*CartPole-v1.*from_gymnasium"):
        envs.make("LunarLander-v3")
    with pytest.raises(TypeError, match="string"):
        envs.make(3)
    with pytest.raises(TypeError, match="invalid arguments for Pendulum-v1"):
        envs.make("Pendulum-v1", gravity=3.0)


def test_bad_device_and_dtype():
    with pytest.raises(TypeError, match=r"dtype=torch.int32 is not supported"):
        envs.make("CartPole-v1", dtype=torch.int32)
    with pytest.raises(ValueError, match=r"device='gpu0' is not a torch device"):
        envs.make("CartPole-v1", device="gpu0")


@pytest.mark.parametrize("n", [0, -3])
def test_num_envs_must_be_positive(n):
    with pytest.raises(ValueError, match=f"num_envs must be >= 1, got {n}"):
        envs.make("CartPole-v1").reset(n)


@pytest.mark.parametrize("n", [2.0, "4", True, None])
def test_num_envs_must_be_int(n):
    with pytest.raises(TypeError, match="num_envs must be an int"):
        envs.make("CartPole-v1").reset(n)


def test_bad_seeding_options():
    env = envs.make("CartPole-v1")
    with pytest.raises(ValueError, match="seeding='numpy' is not allowed"):
        env.reset(2, seeding="numpy")
    with pytest.raises(ValueError, match="either seed= or generator="):
        env.reset(2, seed=1, generator=torch.Generator())


def test_bad_actions():
    cart = envs.make("CartPole-v1")
    s = cart.reset(4, seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(4, 1\).*expects integer actions"):
        cart.step(s, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"action has shape \(3,\)"):
        cart.step(s, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="action dtype is torch.float32.*integer"):
        cart.step(s, torch.zeros(4))
    with pytest.raises(TypeError, match="action dtype is torch.bool"):
        cart.step(s, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="action must be a torch.Tensor"):
        cart.step(s, np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="action is on meta but CartPole-v1 runs on cpu"):
        cart.step(s, torch.zeros(4, dtype=torch.long, device="meta"))
    pend = envs.make("Pendulum-v1")
    s = pend.reset(4, seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(4,\).*actions \[\*batch, 1\]"):
        pend.step(s, torch.zeros(4))
    with pytest.raises(TypeError, match="action dtype is torch.int64.*floating"):
        pend.step(s, torch.zeros(4, 1, dtype=torch.long))


def test_bad_states():
    env = envs.make("Pendulum-v1")
    with pytest.raises(ValueError, match=r"state has shape \(4, 3\).*expects \[\*batch, 2\]"):
        env.step(torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(TypeError, match="state dtype is torch.float64.*dtype=torch.float32"):
        env.step(torch.zeros(4, 2, dtype=F64), torch.zeros(4, 1))
    with pytest.raises(TypeError, match="state must be a torch.Tensor"):
        env.observe([[0.0, 0.0]])
    with pytest.raises(ValueError, match="state is on meta"):
        env.observe(torch.zeros(2, 2, device="meta"))


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("id", IDS)
def test_cuda_matches_cpu(id):
    data = gymnasium_transitions(id, 1000, seed=2)
    cpu, gpu = envs.make(id, dtype=F64), envs.make(id, device="cuda", dtype=F64)
    ref = cpu.step(data["state"], data["action"])
    out = gpu.step(data["state"].cuda(), data["action"].cuda())
    # CUDA's sin/cos differ from the CPU's by an ulp on ~13% of inputs (notes/classic-control.md).
    torch.testing.assert_close(out.state.cpu(), ref.state, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.reward.cpu(), ref.reward, rtol=0, atol=1e-9)
    assert torch.equal(out.terminated.cpu(), ref.terminated)
    s = gpu.reset(1000, seed=0)
    assert s.device.type == "cuda" and s.shape[0] == 1000
    assert gpu.observe(s).device.type == "cuda"


# ---------------------------------------------------------------------- exploring starts
BOXED = sorted(id for id in IDS if envs.PORTED[id].state_low is not None)


def test_exploring_starts_are_declared_where_the_state_has_a_box():
    assert BOXED == ["Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"]


@pytest.mark.parametrize("id", BOXED)
def test_exploring_starts_zero_is_the_default_reset_and_one_covers_the_box(id):
    n = 20_000
    assert torch.equal(envs.make(id, exploring_starts=0.0).reset(n, seed=3), envs.make(id).reset(n, seed=3))
    env = envs.make(id, dtype=F64, exploring_starts=1.0)
    states = env.reset(n, seed=3)
    low, high = torch.tensor(env.state_low, dtype=F64), torch.tensor(env.state_high, dtype=F64)
    assert (states >= low).all() and (states <= high).all()
    # Uniform on the box: the mean is its centre (standard error (h - l) / sqrt(12 n), 5 SE), and
    # draws reach within 1% of both faces (a 1% slab is missed by all n draws with prob. 0.99^n).
    se = (high - low) / math.sqrt(12 * n)
    assert ((states.mean(0) - (low + high) / 2).abs() < 5 * se).all()
    assert (states.min(0).values < low + 0.01 * (high - low)).all()
    assert (states.max(0).values > high - 0.01 * (high - low)).all()


def test_exploring_starts_mix_box_draws_with_p_s0_at_the_given_share():
    n, share = 40_000, 0.3
    states = envs.make("MountainCar-v0", exploring_starts=share).reset(n, seed=0)
    # p(s_0) starts at rest; a box draw has velocity exactly 0 with probability 0.
    moving = (states[:, 1] != 0).double().mean().item()
    assert abs(moving - share) < 5 * math.sqrt(share * (1 - share) / n)  # 5 binomial SE
    at_rest = states[states[:, 1] == 0, 0]
    assert (at_rest >= -0.6).all() and (at_rest <= -0.4).all()  # Gymnasium's reset range


def test_exploring_starts_reach_the_vector_env_and_its_autoresets():
    venv = envs.make_vec("MountainCar-v0", 256, exploring_starts=1.0, autoreset_mode="SameStep")
    obs, _ = venv.reset(seed=0)
    assert (obs[:, 1] != 0).float().mean() > 0.99
    ended = torch.zeros(256, dtype=torch.bool)
    for _ in range(20):  # box starts beside the goal terminate within a few steps and reset anywhere
        obs, _, terminated, truncated, _ = venv.step(torch.full((256,), 2))
        ended |= terminated | truncated
    assert ended.any()


def test_bad_exploring_starts():
    with pytest.raises(ValueError, match="CartPole-v1 declares none"):
        envs.make("CartPole-v1", exploring_starts=0.5)
    envs.make("CartPole-v1", exploring_starts=0.0)  # zero means p(s_0): allowed everywhere
    with pytest.raises(ValueError, match=r"exploring_starts=1.5 is not allowed; use a share in \[0, 1\]"):
        envs.make("MountainCar-v0", exploring_starts=1.5)
    with pytest.raises(TypeError, match="exploring_starts must be a number"):
        envs.make("MountainCar-v0", exploring_starts="half")
    with pytest.raises(ValueError, match="cannot be used with exploring_starts"):
        envs.make("MountainCar-v0", exploring_starts=0.5).reset(4, seed=0, seeding="gymnasium")
    venv = envs.make_vec("MountainCar-v0", 4, seeding="gymnasium", exploring_starts=0.5)
    with pytest.raises(ValueError, match="cannot be used with exploring_starts"):
        venv.reset(seed=0)
