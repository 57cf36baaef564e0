"""``envs.make_vec`` against Gymnasium's own ``SyncVectorEnv``, autoreset semantics, tabular MDPs, bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from rl_as_inference import envs

IDS = sorted(envs.PORTED)
MODES = list(AutoresetMode)
F64 = torch.float64

# Per id: (num_envs, steps, max_episode_steps override on BOTH sides, flags that must occur).
# Goal-seeking actions make MountainCar and Acrobot episodes terminate; the overrides make
# MountainCar episodes also truncate, and Pendulum's own 200-step limit truncates within 250 steps.
RUNS = {
    "CartPole-v1": (8, 300, None, ("terminated",)),
    "Pendulum-v1": (4, 250, None, ("truncated",)),
    "MountainCar-v0": (4, 300, 130, ("terminated", "truncated")),
    "MountainCarContinuous-v0": (4, 300, 105, ("terminated", "truncated")),
    "Acrobot-v1": (4, 300, None, ("terminated",)),
}


def _actions(id: str, obs: np.ndarray, rng: np.random.Generator, space: gym.Space, n: int) -> np.ndarray:
    """Random actions (continuous ones up to 3x outside the box), mixed with energy pumping."""
    if isinstance(space, gym.spaces.Discrete):
        a = rng.integers(0, space.n, size=n)
    else:
        a = rng.uniform(-3.0, 3.0, size=(n, *space.shape)).astype(np.float32)
    pump = rng.uniform(size=n) < 0.9
    if id == "MountainCar-v0":
        a = np.where(pump, np.where(obs[:, 1] >= 0, 2, 0), a)
    elif id == "MountainCarContinuous-v0":
        push = np.sign(obs[:, 1:2] + 1e-12) * rng.uniform(0.5, 3.0, size=(n, 1))
        a = np.where(pump[:, None], push.astype(np.float32), a)
    elif id == "Acrobot-v1":
        a = np.where(pump, np.where(obs[:, 5] >= 0, 2, 0), a)
    return a


def _close(ours: torch.Tensor, theirs: np.ndarray, atol: float) -> bool:
    return np.allclose(ours.cpu().numpy(), theirs, rtol=0.0, atol=atol)


# ---------------------------------------------------------------------- against Gymnasium
@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
@pytest.mark.parametrize("id", IDS)
def test_matches_gymnasium_sync_vector_env(id, mode):
    n, steps, limit, must_see = RUNS[id]
    extra = {} if limit is None else {"max_episode_steps": limit}
    theirs = gym.make_vec(id, n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, **extra)
    ours = envs.make_vec(id, n, dtype=F64, seeding="gymnasium", autoreset_mode=mode, max_episode_steps=limit)
    assert ours.metadata["autoreset_mode"] == theirs.metadata["autoreset_mode"] == mode

    g_obs, _ = theirs.reset(seed=7)
    obs, info = ours.reset(seed=7)
    assert info == {}
    assert obs.dtype == torch.float32 and _close(obs, g_obs, 1e-6)
    rng = np.random.default_rng(7)
    seen = {"terminated": 0, "truncated": 0}
    for t in range(steps):
        a = _actions(id, g_obs, rng, theirs.single_action_space, n)
        g_obs, g_rew, g_term, g_trunc, g_info = theirs.step(a)
        obs, rew, term, trunc, info = ours.step(torch.as_tensor(a))
        assert _close(obs, g_obs, 1e-6), f"step {t}: observations differ"
        assert rew.dtype == F64 and _close(rew, g_rew, 1e-9), f"step {t}: rewards differ"
        assert np.array_equal(term.numpy(), g_term), f"step {t}: terminated differs"
        assert np.array_equal(trunc.numpy(), g_trunc), f"step {t}: truncated differs"
        seen["terminated"] += int(g_term.sum())
        seen["truncated"] += int(g_trunc.sum())
        if mode is AutoresetMode.SAME_STEP:
            g_mask = g_info.get("_final_obs", np.zeros(n, dtype=bool))
            assert np.array_equal(info["_final_obs"].numpy(), g_mask)
            assert np.array_equal(
                info["_final_info"].numpy(), g_info.get("_final_info", np.zeros(n, dtype=bool))
            )
            if g_mask.any():
                g_final = np.stack(list(g_info["final_obs"][g_mask]))
                assert _close(info["final_obs"][torch.as_tensor(g_mask)], g_final, 1e-6)
        else:
            assert info == {} and g_info == {}
        if mode is AutoresetMode.DISABLED:
            done = g_term | g_trunc
            if done.any():
                g_obs, _ = theirs.reset(options={"reset_mask": done})
                obs, _ = ours.reset(options={"reset_mask": torch.as_tensor(done)})
                assert _close(obs, g_obs, 1e-6), f"step {t}: masked reset differs"
    for flag in must_see:
        assert seen[flag] > 0, f"no episode was {flag}: the run did not exercise autoreset"
    theirs.close()
    ours.close()


@pytest.mark.parametrize("id", IDS)
def test_spaces_match_gymnasium(id):
    theirs = gym.make_vec(id, 3, vectorization_mode="sync")
    ours = envs.make_vec(id, 3)
    assert ours.num_envs == 3
    assert ours.single_observation_space == theirs.single_observation_space
    assert ours.single_action_space == theirs.single_action_space
    assert ours.observation_space == theirs.observation_space
    assert ours.action_space == theirs.action_space
    assert ours.render_mode is None
    assert ours.spec.id == id and ours.spec.max_episode_steps == gym.spec(id).max_episode_steps
    assert ours.max_episode_steps == gym.spec(id).max_episode_steps
    assert isinstance(ours, gym.vector.VectorEnv) and ours.functional is True
    assert ours.unwrapped is ours


@pytest.mark.parametrize("alias", ["SameStep", "same_step", "SAME_STEP", AutoresetMode.SAME_STEP])
def test_autoreset_mode_aliases(alias):
    venv = envs.make_vec("CartPole-v1", 2, autoreset_mode=alias)
    assert venv.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert "SameStep" in repr(venv)


def test_max_episode_steps_override_and_spec():
    venv = envs.make_vec("Pendulum-v1", 2, max_episode_steps=7)
    assert venv.max_episode_steps == 7 and venv.spec.max_episode_steps == 7
    assert gym.spec("Pendulum-v1").max_episode_steps == 200  # the registry is left untouched


# ---------------------------------------------------------------------- the user's Gymnasium loop
@pytest.mark.parametrize("id", IDS)
def test_plain_gymnasium_loop(id):
    venv = envs.make_vec(id, 5)  # float32, torch seeding: the fast default
    obs, info = venv.reset(seed=0)
    venv.action_space.seed(0)
    obs_dim = venv.single_observation_space.shape[0]
    for _ in range(60):
        action = torch.as_tensor(venv.action_space.sample())
        obs, reward, terminated, truncated, info = venv.step(action)
        assert obs.shape == (5, obs_dim) and obs.dtype == torch.float32
        assert reward.shape == (5,) and reward.dtype == torch.float32
        assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
        assert terminated.shape == truncated.shape == (5,)
        assert obs.device == reward.device == terminated.device == venv.device
    assert venv.state.shape == (5, *venv.env.state_shape)
    venv.close()
    assert venv.closed


def test_numpy_and_list_actions_equal_torch_actions():
    a, b, c = (envs.make_vec("Pendulum-v1", 3, dtype=F64) for _ in range(3))
    for v in (a, b, c):
        v.reset(seed=3)
    action = np.array([[0.5], [-1.5], [2.5]], dtype=np.float32)
    ra = a.step(torch.as_tensor(action))
    rb = b.step(action)
    for x, y in zip(ra[:4], rb[:4], strict=True):
        assert torch.equal(x, y)
    obs, *_ = c.step(action.tolist())  # a list of floats becomes a float64 action
    assert obs.shape == (3, 3) and torch.allclose(obs, ra[0])
    d = envs.make_vec("CartPole-v1", 2)
    d.reset(seed=0)
    d.step([0, 1])
    d.step(np.array([1, 1], dtype=np.int32))


# ---------------------------------------------------------------------- torch-seeded semantics
def _pure_next(venv, state, action):
    """The pure transition the vector env must have taken from ``state``."""
    return venv.env.step(state, action)


def test_next_step_autoreset_semantics_torch_seeding():
    venv = envs.make_vec("CartPole-v1", 16, dtype=F64)
    venv.reset(seed=1)
    g = torch.Generator().manual_seed(1)
    ended = torch.zeros(16, dtype=torch.bool)
    resets = 0
    for _ in range(200):
        prev_state = venv.state
        action = torch.randint(0, 2, (16,), generator=g)
        obs, reward, term, trunc, info = venv.step(action)
        pure = _pure_next(venv, prev_state, action)
        # Sub-envs that ended last step ignore the action and come back reset, reward 0, flags False.
        assert torch.all(reward[ended] == 0) and not term[ended].any() and not trunc[ended].any()
        assert torch.all(obs[ended].abs() <= 0.05)
        assert torch.all(venv.elapsed_steps[ended] == 0)
        live = ~ended
        assert torch.equal(obs[live], venv.env.observe(pure.state)[live])
        assert torch.equal(term[live], pure.terminated[live]) and torch.all(reward[live] == 1)
        resets += int(ended.sum())
        ended = term | trunc
    assert resets > 5


def test_same_step_autoreset_semantics_torch_seeding():
    venv = envs.make_vec("CartPole-v1", 16, dtype=F64, autoreset_mode="SameStep")
    venv.reset(seed=2)
    g = torch.Generator().manual_seed(2)
    resets = 0
    for _ in range(200):
        prev_state = venv.state
        action = torch.randint(0, 2, (16,), generator=g)
        obs, reward, term, trunc, info = venv.step(action)
        pure = _pure_next(venv, prev_state, action)
        done = term | trunc
        assert set(info) == {"final_obs", "_final_obs", "final_info", "_final_info"}
        assert torch.equal(info["_final_obs"], done) and torch.equal(info["_final_info"], done)
        # final_obs is the true next observation on every row; obs differs only where an env reset.
        assert torch.equal(info["final_obs"], venv.env.observe(pure.state))
        assert torch.equal(obs[~done], info["final_obs"][~done])
        assert torch.all(obs[done].abs() <= 0.05) and torch.all(venv.elapsed_steps[done] == 0)
        assert torch.equal(term, pure.terminated) and torch.all(reward == 1)
        resets += int(done.sum())
    assert resets > 5


def test_disabled_mode_requires_masked_reset():
    venv = envs.make_vec("CartPole-v1", 4, dtype=F64, autoreset_mode=AutoresetMode.DISABLED)
    venv.reset(seed=0)
    push = torch.ones(4, dtype=torch.long)
    done = torch.zeros(4, dtype=torch.bool)
    while not done.any():
        _, _, term, trunc, _ = venv.step(push)
        done = term | trunc
    with pytest.raises(RuntimeError, match="reset_mask"):
        venv.step(push)
    before = venv.state.clone()
    obs, info = venv.reset(options={"reset_mask": done})
    assert info == {}
    assert torch.equal(venv.state[~done], before[~done])
    assert torch.all(venv.state[done].abs() <= 0.05)
    assert torch.all(venv.elapsed_steps[done] == 0) and torch.all(venv.elapsed_steps[~done] > 0)
    assert torch.equal(obs, venv.env.observe(venv.state))
    # An all-False mask (e.g. ``terminated | truncated`` on a quiet step) resets nothing.
    state = venv.state
    venv.reset(options={"reset_mask": np.zeros(4, dtype=bool)})
    assert torch.equal(venv.state, state)
    venv.step(push)


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_time_limit_truncation(mode):
    venv = envs.make_vec("Pendulum-v1", 2, max_episode_steps=5, autoreset_mode=mode)
    venv.reset(seed=0)
    hits = []
    for t in range(1, 18):
        _, _, term, trunc, _ = venv.step(torch.zeros(2, 1))
        assert not term.any()
        if trunc.all():
            hits.append(t)
            if mode is AutoresetMode.DISABLED:
                venv.reset(options={"reset_mask": trunc})
        else:
            assert not trunc.any()
    # NEXT_STEP spends one step on the reset; SAME_STEP and a manual reset do not.
    assert hits == ([5, 11, 17] if mode is AutoresetMode.NEXT_STEP else [5, 10, 15])


def test_terminated_and_truncated_together():
    # A 1x2 grid: moving right from the start enters the terminal goal on the first step.
    mdp = envs.gridworld(1, 2, start=(0, 0), goal=(0, 1))
    venv = envs.make_vec(mdp, 3, max_episode_steps=1, autoreset_mode="SameStep")
    obs, _ = venv.reset(seed=0)
    assert obs.tolist() == [0, 0, 0]
    obs, reward, term, trunc, info = venv.step(torch.tensor([1, 1, 0]))
    assert term.tolist() == [True, True, False]
    assert trunc.tolist() == [True, True, True]
    assert info["final_obs"].tolist() == [1, 1, 0] and obs.tolist() == [0, 0, 0]


@pytest.mark.parametrize("id", IDS)
def test_torch_reset_draws_what_env_reset_draws(id):
    venv = envs.make_vec(id, 5, dtype=F64)
    obs, _ = venv.reset(seed=12)
    state = venv.env.reset(5, seed=12)
    assert torch.equal(venv.state, state) and torch.equal(obs, venv.env.observe(state))


def test_torch_seeding_reproduces_and_continues_the_stream():
    def run(seed, reset_twice=False):
        venv = envs.make_vec("Acrobot-v1", 6, dtype=F64)
        first, _ = venv.reset(seed=seed)
        if reset_twice:
            return first, venv.reset()[0]
        g = torch.Generator().manual_seed(0)
        out = [first]
        for _ in range(30):
            out.append(venv.step(torch.randint(0, 3, (6,), generator=g))[0])
        return torch.stack(out)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    first, second = run(5, reset_twice=True)
    assert not torch.equal(first, second)  # reset(seed=None) continues the stream


def test_observations_do_not_alias_the_state():
    venv = envs.make_vec("CartPole-v1", 3)  # float32: observe() could return the state itself
    obs, _ = venv.reset(seed=0)
    state = venv.state.clone()
    obs.add_(100.0)
    assert torch.equal(venv.state, state)
    obs, *_ = venv.step(torch.zeros(3, dtype=torch.long))
    obs.zero_()
    assert venv.state.abs().sum() > 0


def test_close_and_repr():
    venv = envs.make_vec("MountainCar-v0", 2)
    text = repr(venv)
    assert "MountainCar-v0" in text and "num_envs=2" in text and "NextStep" in text
    venv.reset(seed=0)
    venv.close()
    with pytest.raises(RuntimeError, match="closed"):
        venv.step(torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------------- tabular MDPs
def _tabular_rollout(seed: int, seeding: str = "torch", mode: str = "NextStep"):
    mdp = envs.gridworld(3, 3, slip=0.3, dtype=F64)
    venv = envs.make_vec(mdp, 32, max_episode_steps=20, seeding=seeding, autoreset_mode=mode)
    obs, _ = venv.reset(seed=seed)
    g = torch.Generator().manual_seed(123)  # the same actions for every run
    rows = [obs]
    rewards, terms, truncs = [], [], []
    for _ in range(60):
        obs, reward, term, trunc, _ = venv.step(torch.randint(0, 4, (32,), generator=g))
        rows.append(obs)
        rewards.append(reward)
        terms.append(term)
        truncs.append(trunc)
    return venv, torch.stack(rows), torch.stack(rewards), torch.stack(terms), torch.stack(truncs)


@pytest.mark.parametrize("seeding", ["torch", "gymnasium"])
def test_tabular_gridworld_with_slip(seeding):
    venv, obs, rewards, terms, truncs = _tabular_rollout(0, seeding)
    assert venv.observation_space == gym.spaces.MultiDiscrete([9] * 32)
    assert venv.action_space == gym.spaces.MultiDiscrete([4] * 32)
    assert venv.spec is None and venv.max_episode_steps == 20
    assert obs.dtype == torch.int64 and obs.shape == (61, 32)
    assert obs.min() >= 0 and obs.max() < 9
    assert rewards.dtype == F64 and terms.any() and truncs.any()
    _, obs2, rewards2, terms2, truncs2 = _tabular_rollout(0, seeding)
    assert torch.equal(obs, obs2) and torch.equal(rewards, rewards2)
    assert torch.equal(terms, terms2) and torch.equal(truncs, truncs2)
    _, obs3, *_ = _tabular_rollout(1, seeding)
    assert not torch.equal(obs, obs3)


def test_tabular_uses_the_vector_env_generator_not_the_global_one():
    global_state = torch.get_rng_state()
    _tabular_rollout(0, mode="SameStep")
    assert torch.equal(torch.get_rng_state(), global_state)


def test_tabular_without_time_limit_never_truncates():
    venv = envs.make_vec(envs.chain(4, slip=0.2), 8)
    assert venv.max_episode_steps is None and venv.spec is None
    venv.reset(seed=0)
    for _ in range(50):
        obs, _, term, trunc, _ = venv.step(torch.ones(8, dtype=torch.long))
        assert not trunc.any() and not term.any()
    obs.fill_(-1)  # tabular observations are the state indices: must be a copy
    assert venv.state.min() >= 0


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [0, -3])
def test_num_envs_value(bad):
    with pytest.raises(ValueError, match=f"num_envs must be >= 1, got {bad}"):
        envs.make_vec("CartPole-v1", bad)


@pytest.mark.parametrize("bad", [2.5, "4", True, None])
def test_num_envs_type(bad):
    with pytest.raises(TypeError, match="num_envs must be an int"):
        envs.make_vec("CartPole-v1", bad)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="autoreset_mode='sometimes'.*'NextStep', 'SameStep', 'Disabled'"):
        envs.make_vec("CartPole-v1", 2, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="seeding='numpy'.*'torch' or 'gymnasium'"):
        envs.make_vec("CartPole-v1", 2, seeding="numpy")
    with pytest.raises(ValueError, match="max_episode_steps must be >= 1"):
        envs.make_vec("CartPole-v1", 2, max_episode_steps=0)
    with pytest.raises(TypeError, match="max_episode_steps must be an int"):
        envs.make_vec("CartPole-v1", 2, max_episode_steps=1.5)
    with pytest.raises(ValueError, match="unknown environment id 'LunarLander-v3'"):
        envs.make_vec("LunarLander-v3", 2)
    with pytest.raises(TypeError, match="ported Gymnasium id .* or a FunctionalEnv"):
        envs.make_vec(gym.make("CartPole-v1"), 2)
    mdp = envs.chain(3)
    with pytest.raises(TypeError, match="only apply to an id"):
        envs.make_vec(mdp, 2, slip=0.1)
    with pytest.raises(ValueError, match="dtype=torch.float64 but chain-3 was built with torch.float32"):
        envs.make_vec(mdp, 2, dtype=F64)
    with pytest.raises(ValueError, match="lives on cpu"):
        envs.make_vec(mdp, 2, device="meta")
    envs.make_vec(mdp, 2, device="cpu", dtype=torch.float32)  # matching values are fine


def test_bad_actions():
    cart = envs.make_vec("CartPole-v1", 4)
    with pytest.raises(RuntimeError, match="reset"):
        cart.step(torch.zeros(4, dtype=torch.long))
    cart.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(4,\)"):
        cart.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(4, 1\)"):
        cart.step(torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        cart.step(torch.zeros(4))
    with pytest.raises(TypeError, match="integer tensor"):
        cart.step(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="is on meta but CartPole-v1 runs on cpu"):
        cart.step(torch.zeros(4, dtype=torch.long, device="meta"))
    # on the CPU the env's own check answers first, naming the first bad action and its sub-env
    with pytest.raises(
        ValueError, match=r"action 2 at index \(1,\) is out of range: CartPole-v1 has actions in \[0, 2\)"
    ):
        cart.step(torch.tensor([0, 2, 1, -1]))
    with pytest.raises(TypeError, match="numpy array / list of numbers"):
        cart.step(["left", "right", "left", "left"])
    with pytest.raises(TypeError, match="actions must be a torch.Tensor"):
        cart.step({"a": 1})
    pend = envs.make_vec("Pendulum-v1", 2)
    pend.reset(seed=0)
    with pytest.raises(ValueError, match=r"expects actions \[\*batch, 1\], i.e. shape \(2, 1\)"):
        pend.step(torch.zeros(2))
    with pytest.raises(TypeError, match="floating tensor"):
        pend.step(torch.zeros(2, 1, dtype=torch.long))
    pend.step(torch.zeros(2, 1, dtype=F64))  # any floating dtype is accepted


def test_bad_reset_arguments():
    venv = envs.make_vec("CartPole-v1", 3)
    with pytest.raises(RuntimeError, match="first reset"):
        venv.reset(options={"reset_mask": torch.ones(3, dtype=torch.bool)})
    venv.reset(seed=0)
    with pytest.raises(TypeError, match=r"bool torch.Tensor or numpy array of shape \(3,\); got list"):
        venv.reset(options={"reset_mask": [True, False, True]})
    with pytest.raises(TypeError, match="got dtype torch.int64"):
        venv.reset(options={"reset_mask": torch.ones(3, dtype=torch.long)})
    with pytest.raises(TypeError, match="got dtype int64"):
        venv.reset(options={"reset_mask": np.ones(3, dtype=np.int64)})
    with pytest.raises(ValueError, match=r"got shape \(2,\)"):
        venv.reset(options={"reset_mask": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"unsupported reset options \['low'\]"):
        venv.reset(options={"low": -0.1})
    with pytest.raises(TypeError, match="options must be a dict"):
        venv.reset(options=[1])
    with pytest.raises(TypeError, match="seeding='torch'"):
        venv.reset(seed=[0, 1, 2])
    gvenv = envs.make_vec("CartPole-v1", 3, seeding="gymnasium")
    with pytest.raises(ValueError, match="num_envs=3 entries, got 2"):
        gvenv.reset(seed=[0, 1])
    with pytest.raises(TypeError, match="seed must be an int"):
        gvenv.reset(seed="0")


def test_gymnasium_seeding_accepts_a_seed_list():
    theirs = gym.make_vec("CartPole-v1", 3, vectorization_mode="sync")
    ours = envs.make_vec("CartPole-v1", 3, dtype=F64, seeding="gymnasium")
    seeds = [10, None, 30]
    theirs.reset(seed=0)
    ours.reset(seed=0)
    g_obs, _ = theirs.reset(seed=seeds)
    obs, _ = ours.reset(seed=seeds)
    assert _close(obs, g_obs, 0.0)


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
@pytest.mark.parametrize("id", IDS)
def test_cuda_steps_without_host_sync(id, mode):
    venv = envs.make_vec(id, 64, device="cuda", autoreset_mode=mode, max_episode_steps=10)
    obs, _ = venv.reset(seed=0)
    g = torch.Generator(device="cuda").manual_seed(0)
    space = venv.single_action_space
    discrete = isinstance(space, gym.spaces.Discrete)

    def draw():
        if discrete:
            return torch.randint(0, int(space.n), (64,), device="cuda", generator=g)
        return torch.rand(64, *space.shape, device="cuda", generator=g) * 4 - 2

    venv.step(draw())  # warm up lazily initialized CUDA state outside the guarded region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(25):
            obs, reward, term, trunc, info = venv.step(draw())
            if mode is AutoresetMode.DISABLED:
                venv.reset(options={"reset_mask": term | trunc})
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert obs.is_cuda and reward.is_cuda and term.is_cuda and trunc.is_cuda
    assert obs.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_in_gymnasium_seeding():
    cpu = envs.make_vec("CartPole-v1", 8, dtype=F64, seeding="gymnasium")
    gpu = envs.make_vec("CartPole-v1", 8, dtype=F64, seeding="gymnasium", device="cuda")
    a, _ = cpu.reset(seed=0)
    b, _ = gpu.reset(seed=0)
    assert torch.allclose(a, b.cpu(), atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        action = torch.randint(0, 2, (8,), generator=gen)
        ra, rb = cpu.step(action), gpu.step(action.cuda())
        assert torch.allclose(ra[0], rb[0].cpu(), atol=1e-5)
        assert torch.equal(ra[2], rb[2].cpu()) and torch.equal(ra[3], rb[3].cpu())
