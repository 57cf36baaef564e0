"""Training on environments beyond the five ports: any Gymnasium id, and torch envs users register."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference import diagnostics, envs, load_policy, runs
from rl_as_inference.algos import sac
from rl_as_inference.algos.collect import Collector
from rl_as_inference.cli import main
from rl_as_inference.envs import registry
from rl_as_inference.envs.observations import flat_observation
from rl_as_inference.resume import Checkpointer, read_train_state

# Gymnasium's own classic-control envs under ids the library has no port of: they run as
# Gymnasium's env (the "gymnasium" backend), exactly as LunarLander-v3 or Hopper-v5 would.
CLONES = {
    "test/PendulumClone-v0": ("gymnasium.envs.classic_control.pendulum:PendulumEnv", 200),
    "test/CartPoleClone-v0": ("gymnasium.envs.classic_control.cartpole:CartPoleEnv", 500),
}
QUIET = ["--no-progress", "--eval-episodes", "2"]
SAC_TINY = ["--set", "total_env_steps=400", "--set", "learning_starts=100", "--set", "hidden=[16, 16]"]
VMPO_TINY = ["--set", "total_env_steps=512", "--set", "num_envs=8", "--set", "unroll_length=16"]
VMPO_TINY += ["--set", "log_every=256", "--set", "hidden=[16]"]


@pytest.fixture(autouse=True, scope="module")
def clones():
    for env_id, (entry_point, limit) in CLONES.items():
        gym.register(env_id, entry_point=entry_point, max_episode_steps=limit)
    yield
    for env_id in CLONES:
        gym.registry.pop(env_id, None)


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlai: error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("env_id", "tiny", "algo", "policy"),
    [
        ("test/PendulumClone-v0", SAC_TINY, "sac", "TanhGaussianMLP"),
        ("test/CartPoleClone-v0", VMPO_TINY, "vmpo", "CategoricalMLP"),
    ],
)
def test_rlai_train_takes_an_unported_gymnasium_id(env_id, tiny, algo, policy, tmp_path, capsys):
    # once refused as "unknown environment; ported: ..."; without a recipe the generic default
    # for the action space runs, and the start says which
    out = tmp_path / "run"
    assert (
        main(["train", "--env", env_id, "--out", str(out), *tiny, *QUIET, "--checkpoint-every", "200"]) == 0
    )
    err = capsys.readouterr().err
    assert f"{env_id} has no shipped recipe" in err and f"actions: {algo} with its default settings" in err
    summary = json.loads((out / "eval.json").read_text())
    assert summary["algo"] == algo and summary["episodes"] == 2
    loaded = load_policy(out)
    assert loaded.env_id == env_id and type(loaded.module).__name__ == policy
    assert read_train_state(out / "train_state.pt")["env_steps"] == summary["env_steps"]
    assert main(["evaluate", str(out), "--episodes", "2", "--no-progress"]) == 0
    capsys.readouterr()
    line = _one_line_error(capsys, main(["inspect", str(out), "--out", str(tmp_path / "i")]))
    assert f"{env_id} runs only as Gymnasium's own env" in line and "envs.register" in line


def test_a_resumed_gymnasium_run_restarts_its_episodes_and_continues_the_rest(tmp_path):
    # Gymnasium's envs keep hidden state no checkpoint holds (the run could not checkpoint at
    # all): the episodes restart, seeded from the seed and step count, and the rest continues.
    config = sac.SACConfig(
        env="test/PendulumClone-v0",
        total_env_steps=600,
        learning_starts=100,
        batch_size=32,
        hidden=(16,),
        log_every=100,
    )

    class Stop(Exception):
        pass

    def stop_after_400(row):
        if row["env_steps"] >= 400:
            raise Stop

    with pytest.raises(Stop):
        sac.train(config, callback=stop_after_400, checkpointer=Checkpointer(tmp_path / "cut.pt", every=200))
    saved = read_train_state(tmp_path / "cut.pt")
    assert 200 <= saved["env_steps"] < 400  # the checkpoint at 400 would come at the next iteration
    shutil.copy(tmp_path / "cut.pt", tmp_path / "again.pt")
    results = []
    for name in ("cut.pt", "again.pt"):
        rows = []
        results.append(
            sac.train(
                config,
                callback=rows.append,
                checkpointer=Checkpointer(tmp_path / name, every=200, resume=True),
            )
        )
        assert rows[0]["env_steps"] > saved["env_steps"] and results[-1].env_steps == 600
    # the restart is seeded: two resumes from one checkpoint end bit-identical
    for key, value in results[0].policy.state_dict().items():
        assert torch.equal(value, results[1].policy.state_dict()[key]), key


def test_a_collector_restart_keeps_the_buffer_and_draws_fresh_episodes():
    collector = Collector(
        "test/PendulumClone-v0", num_envs=2, device=torch.device("cpu"), seed=3, buffer_size=64
    )
    assert collector.backend == "gymnasium"
    for _ in range(5):
        collector.step(None)
    state = collector.state_dict()
    assert state["venv"] is None
    fresh = Collector("test/PendulumClone-v0", num_envs=2, device=torch.device("cpu"), seed=3, buffer_size=64)
    fresh.load_state_dict(state)
    assert fresh.env_steps == 10 and len(fresh.buffer) == len(collector.buffer) == 10
    assert not torch.equal(fresh.obs, collector.obs)  # restarted, from another reset seed than 3's
    assert torch.equal(fresh.returns.current, torch.zeros(2))
    assert fresh.random_actions().tolist() == collector.random_actions().tolist()  # the stream continues
    # the cut episodes end at their last stored transitions: an n-step path stops there instead of
    # running on into the restarted episode, whose first observation does not follow it
    truncated = fresh.buffer.storage["truncated"][:10]
    assert truncated[8:].all() and not truncated[:8].any()
    assert not collector.buffer.storage["truncated"][:10].any()  # the saved run's own buffer is untouched
    for _ in range(3):
        fresh.step(None)
    paths = fresh.sample(256, n_step=3)
    cut = paths["path"]["truncated"]  # no other ends in 16 steps of a 200-step time limit
    crosses = cut[:2].any(0)  # paths with a step of the restarted episode after a cut one
    assert crosses.any() and (paths["last"][crosses] == cut.int().argmax(0)[crosses]).all()


def test_dynamics_algorithms_on_a_gymnasium_only_env_say_why_and_what_to_use(tmp_path, capsys):
    for algo in ("svi", "em"):
        line = _one_line_error(
            capsys,
            main(["train", "--env", "test/PendulumClone-v0", "--algo", algo, "--out", str(tmp_path / algo)]),
        )
        assert f"{algo} differentiates and re-simulates the env's dynamics" in line
        assert "use one of mpo, sac, softq, vmpo" in line and "envs.register" in line
        assert not (tmp_path / algo).exists()


def test_an_unknown_id_names_the_closest_ones(tmp_path, capsys):
    line = _one_line_error(
        capsys, main(["train", "--env", "test/PendulumClne-v0", "--out", str(tmp_path / "r")])
    )
    assert "'test/PendulumClne-v0' is not a registered Gymnasium id; closest: test/PendulumClone-v0" in line


class PixelsAndSpeed(gym.Env):
    """A Tuple observation with an image inside: not flattened for an MLP."""

    observation_space = gym.spaces.Tuple(
        (gym.spaces.Box(0, 255, (8, 8, 3), np.uint8), gym.spaces.Box(-1.0, 1.0, (1,), np.float32))
    )
    action_space = gym.spaces.Discrete(2)


def test_a_space_the_networks_cannot_take_is_named(tmp_path, capsys):
    gym.register("test/PixelsAndSpeed-v0", entry_point="tests.test_any_env:PixelsAndSpeed")
    try:
        argv = ["train", "--env", "test/PixelsAndSpeed-v0", "--algo", "vmpo", "--out", str(tmp_path / "r")]
        line = _one_line_error(capsys, main([*argv, *QUIET]))
    finally:
        gym.registry.pop("test/PixelsAndSpeed-v0")
    assert "test/PixelsAndSpeed-v0 has observation space Tuple(Box(0, 255, (8, 8, 3), uint8)" in line
    assert "an image inside one is not flattened" in line and "FlattenObservation" in line
    assert not (tmp_path / "r").exists()


def test_a_tuple_observation_is_flattened_one_hot_as_gymnasium_flattens_it():
    space = gym.make("Blackjack-v1").observation_space  # Tuple(Discrete(32), Discrete(11), Discrete(2))
    flat = flat_observation(space, (14, 3, 1))
    expected = np.zeros(45, np.float32)
    expected[[14, 32 + 3, 32 + 11 + 1]] = 1.0
    assert flat.dtype == np.float32 and np.array_equal(flat, expected)
    with pytest.raises(ValueError, match=r"observation \(40, 3, 1\) is not an element of Tuple"):
        flat_observation(space, (40, 3, 1))


def test_blackjack_trains_and_its_policy_acts_on_gymnasium_s_tuples(tmp_path, capsys):
    # Blackjack-v1 observes a Tuple of three Discretes (before: refused); collection flattens it
    out = tmp_path / "r"
    argv = ["train", "--env", "Blackjack-v1", "--algo", "vmpo", "--out", str(out), *VMPO_TINY, *QUIET]
    assert main(argv) == 0, capsys.readouterr().err
    policy = load_policy(out)
    assert policy.observation_space == gym.make("Blackjack-v1").observation_space  # Gymnasium's own
    assert policy.act((14, 3, 0)) in (0, 1)
    batch = policy.act([(14, 3, 0), (20, 10, 1), (5, 1, 0)])
    assert batch.shape == (3,) and set(batch.tolist()) <= {0, 1}
    assert batch[0] == policy.act((14, 3, 0))  # a row of a batch is the single observation's action
    with pytest.raises(ValueError, match="is neither an element of Tuple"):
        policy.act({"player": 14})
    returns = runs.evaluate(out, episodes=5)
    assert len(returns) == 5 and set(returns) <= {-1.0, 0.0, 1.0, 1.5}


def test_a_torch_env_observing_a_tuple_is_named(user_envs):
    # a torch env is stepped as it is (no wrapper flattens its tensors): its observe must be flat
    def factory(*, device=None, dtype=None):
        env = envs.make("Pendulum-v1", device=device, dtype=dtype)
        env.observation_space = gym.spaces.Tuple((gym.spaces.Box(-1.0, 1.0, (3,), np.float32),))
        return env

    envs.register("test/TuplePendulum-v0", factory)
    with pytest.raises(ValueError, match=r"test/TuplePendulum-v0 has observation space Tuple\(Box"):
        Collector("test/TuplePendulum-v0", num_envs=1, device=torch.device("cpu"), seed=0, buffer_size=10)
    with pytest.raises(ValueError, match="a torch env's observations reach the networks as its step returns"):
        Collector("test/TuplePendulum-v0", num_envs=1, device=torch.device("cpu"), seed=0, buffer_size=10)


class FlagInADict(gym.Env):
    """Dict(flag: Discrete(2), position: Box(1)); the reward is 1 where the action equals the flag,
    drawn anew each step, over 10 steps: 10 for a policy that reads the flag, 5 in expectation for
    any policy that does not."""

    observation_space = gym.spaces.Dict(
        {"flag": gym.spaces.Discrete(2), "position": gym.spaces.Box(-1.0, 1.0, (1,), np.float32)}
    )
    action_space = gym.spaces.Discrete(2)

    def _obs(self):
        self.flag = int(self.np_random.integers(2))
        return {"flag": self.flag, "position": np.zeros(1, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.flag)
        self.t += 1
        return self._obs(), reward, False, self.t >= 10, {}


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_dict_observation_is_flattened_so_the_policy_reads_each_part(vectorization, tmp_path, capsys):
    gym.register("test/FlagInADict-v0", entry_point="tests.test_any_env:FlagInADict", max_episode_steps=10)
    out = tmp_path / "r"
    argv = ["train", "--env", "test/FlagInADict-v0", "--algo", "softq", "--out", str(out), *QUIET]
    argv += ["--set", "total_env_steps=3000", "--set", "hidden=[32]", "--set", "num_envs=2"]
    try:
        assert main([*argv, "--set", f"vectorization={vectorization}"]) == 0, capsys.readouterr().err
        # the greedy policy takes the flag's action at every step: it reads the Discrete part of
        # the Dict (one-hot in the flat vector); one that could not would score 5 on average
        assert runs.evaluate(out, episodes=10) == [10.0] * 10
    finally:
        gym.registry.pop("test/FlagInADict-v0")


def test_toy_text_with_discrete_observations_trains(tmp_path, capsys):
    # FrozenLake-v1's observation is Discrete(16): the networks one-hot it
    out = tmp_path / "r"
    assert (
        main(["train", "--env", "FrozenLake-v1", "--algo", "vmpo", "--out", str(out), *VMPO_TINY, *QUIET])
        == 0
    )
    assert type(load_policy(out).module).__name__ == "CategoricalMLP"
    assert load_policy(out).act(np.int64(0)) in range(4)


class NeedsBox2D(gym.Env):
    """An env whose package is missing, as LunarLander-v3 is without Box2D."""

    def __init__(self):
        raise gym.error.DependencyNotInstalled('Box2D is not installed, run `pip install "gymnasium[box2d]"`')


@pytest.mark.parametrize("algo", [[], ["--algo", "sac"]])
def test_a_missing_optional_package_is_named_with_its_extra_and_nothing_is_written(algo, tmp_path, capsys):
    gym.register("test/NeedsBox2D-v0", entry_point="tests.test_any_env:NeedsBox2D")
    try:
        out = tmp_path / "r"
        line = _one_line_error(
            capsys, main(["train", "--env", "test/NeedsBox2D-v0", *algo, "--out", str(out)])
        )
    finally:
        gym.registry.pop("test/NeedsBox2D-v0")
    assert "test/NeedsBox2D-v0 needs a package that is not installed" in line and "gymnasium[box2d]" in line
    assert not out.exists()


class HeavyPendulum(envs.Pendulum):
    """A user's torch env: Pendulum-v1 under twice the gravity."""

    def __init__(self, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype, g=20.0)


def test_registered_torch_envs_are_built_everywhere(user_envs, tmp_path):
    envs.register("test/HeavyPendulum-v0", HeavyPendulum, max_episode_steps=50)
    env = envs.make("test/HeavyPendulum-v0")
    assert isinstance(env, HeavyPendulum) and env.g == 20.0 and env.max_episode_steps == 50
    assert "test/HeavyPendulum-v0" in envs.registered_ids()
    venv = envs.make_vec("test/HeavyPendulum-v0", 3)
    venv.reset(seed=0)
    truncated = [venv.step(torch.zeros(3, 1))[3] for _ in range(50)]
    assert truncated[-1].all() and not truncated[-2].any()  # the registered time limit
    collector = Collector(
        "test/HeavyPendulum-v0", num_envs=2, device=torch.device("cpu"), seed=0, buffer_size=8
    )
    assert collector.backend == "functional"  # a torch env: re-simulation and svi are open to it
    out = runs.train_run(
        "test/HeavyPendulum-v0",
        algo="svi",
        sets=["total_env_steps=300", "learning_starts=100", "hidden=[16]", "horizon=2"],
        out=tmp_path / "svi",
        progress=False,
        eval_episodes=2,  # on the torch env behind Gymnasium's API, with its time limit
    )
    assert json.loads((out / "eval.json").read_text())["episodes"] == 2
    assert read_train_state(out / "train_state.pt")["env_steps"] == 300
    idata = diagnostics.from_run(out, num_episodes=4, seed=0, horizon=5)  # re-simulated in the torch env
    assert idata.posterior.attrs["env"] == "test/HeavyPendulum-v0"


def test_module_colon_factory_registers_the_factory(user_envs, tmp_path):
    out = runs.train_run(
        "tests.test_any_env:HeavyPendulum",
        algo="sac",
        sets=["total_env_steps=200", "learning_starts=100", "hidden=[16]"],
        out=tmp_path / "r",
        progress=False,
        eval_episodes=0,
    )
    assert "HeavyPendulum" in envs.registered_ids()
    assert 'env = "HeavyPendulum"' in (out / "config.toml").read_text()


def test_an_entry_point_adds_ids(user_envs, monkeypatch):
    point = EntryPoint(
        name="test/EntryPendulum-v0", value="tests.test_any_env:HeavyPendulum", group=envs.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [point] if group == envs.ENTRY_POINT_GROUP else []
    )
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert isinstance(envs.make("test/EntryPendulum-v0"), HeavyPendulum)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (
            ("Pendulum-v1", HeavyPendulum),
            ValueError,
            "'Pendulum-v1' is a ported environment and cannot be replaced",
        ),
        (("a:b", HeavyPendulum), ValueError, "env id 'a:b' is not allowed"),
        (("test/X-v0", 3), TypeError, "factory for 'test/X-v0' must be callable"),
    ],
)
def test_bad_registrations_are_named(user_envs, args, error, message):
    with pytest.raises(error, match=message):
        envs.register(*args)


def test_a_second_registration_needs_override(user_envs):
    envs.register("test/Twice-v0", HeavyPendulum)
    with pytest.raises(ValueError, match="'test/Twice-v0' is already registered; pass override=True"):
        envs.register("test/Twice-v0", HeavyPendulum)
    envs.register("test/Twice-v0", HeavyPendulum, override=True)


@pytest.mark.parametrize(
    ("env_id", "algo", "message"),
    [
        (
            "CartPole-v1",
            "sac",
            r"sac takes Box actions, and CartPole-v1 has Discrete\(2\); use one of mpo, softq, vmpo",
        ),
        ("test/CartPoleClone-v0", "svi", r"svi takes Box actions, .* use one of mpo, softq, vmpo"),
        (
            "Pendulum-v1",
            "softq",
            r"softq takes Discrete actions, and Pendulum-v1 has Box.*use one of em, mpo, sac, svi, vmpo",
        ),
    ],
)
def test_an_action_space_the_algorithm_cannot_take_names_those_that_can(
    env_id, algo, message, tmp_path, capsys
):
    out = tmp_path / "r"
    line = _one_line_error(capsys, main(["train", "--env", env_id, "--algo", algo, "--out", str(out)]))
    assert re.search(message, line), line
    assert not out.exists()


def test_the_worked_example_trains_by_svi_from_the_command_line(user_envs, tmp_path, capsys, monkeypatch):
    # examples/point_mass.py, a user's differentiable task: `module:Factory` typed on the command
    # line imports it from the working directory. Its observation is its state, which handed the
    # actor's graph to the rollout critic's regression (a second backward) until the critic's
    # inputs were detached.
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "pm"
    argv = ["train", "--env", "examples.point_mass:PointMass", "--algo", "svi", "--out", str(out)]
    argv += ["--config", "examples/point_mass.toml", "--set", "total_env_steps=640", "--set", "log_every=320"]
    assert main([*argv, "--no-progress", "--eval-episodes", "2"]) == 0
    assert "2 episodes of the torch env" in capsys.readouterr().out
    assert 'env = "PointMass"' in (out / "config.toml").read_text()
    assert envs.make("PointMass").max_episode_steps == 100  # the class's own time limit
    assert "examples/PointMass-v0" in envs.registered_ids()  # registered by the module's import


def test_svi_refuses_the_gymnasium_backend(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--env", "Pendulum-v1", "--algo", "svi", "--set", "backend=gymnasium", "--out", str(out)]
    line = _one_line_error(capsys, main(argv))
    assert "backend='gymnasium' but svi differentiates and re-simulates the dynamics" in line
    assert not out.exists()


def test_async_vectorization_collects_what_sync_does():
    # one subprocess per env (Gymnasium's AsyncVectorEnv): the same seeds give the same transitions
    cpu = torch.device("cpu")
    kwargs = {"num_envs": 2, "device": cpu, "seed": 1, "buffer_size": 16, "backend": "gymnasium"}
    sync = Collector("Pendulum-v1", **kwargs)
    parallel = Collector("Pendulum-v1", vectorization="async", **kwargs)
    try:
        for _ in range(4):
            sync.step(None)
            parallel.step(None)
        for key in ("obs", "action", "reward", "next_obs"):
            torch.testing.assert_close(parallel.buffer.storage[key][:8], sync.buffer.storage[key][:8])
    finally:
        sync.close()
        parallel.close()
    with pytest.raises(
        ValueError, match="vectorization='threads' is not allowed; use one of 'sync', 'async'"
    ):
        sac.SACConfig(vectorization="threads")


class NanAtThree(gym.Env):
    """Returns a NaN reward on its third step: a broken user env."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), (math.nan if self.t == 3 else 0.0), False, False, {}


def test_a_nan_from_a_gymnasium_env_is_named_with_the_step(tmp_path, capsys):
    gym.register("test/NanAtThree-v0", entry_point="tests.test_any_env:NanAtThree", max_episode_steps=10)
    try:
        venv = envs.from_gymnasium("test/NanAtThree-v0", 2)
        venv.reset(seed=0)
        venv.step(torch.zeros(2, 1))
        venv.step(torch.zeros(2, 1))
        with pytest.raises(
            ValueError, match=r"test/NanAtThree-v0 returned a non-finite reward at step 3 .*sub-env 0"
        ):
            venv.step(torch.full((2, 1), 0.5))
        argv = ["train", "--env", "test/NanAtThree-v0", "--algo", "sac", "--out", str(tmp_path / "r"), *QUIET]
        line = _one_line_error(capsys, main(argv))
        assert "returned a non-finite reward at step 3" in line
    finally:
        gym.registry.pop("test/NanAtThree-v0")


def _train_a_module_registered_run(out: Path, *flags: str) -> None:
    """A tiny sac run on ``tests.test_any_env:HeavyPendulum``, its id then forgotten as in a new process."""
    argv = ["train", "--env", "tests.test_any_env:HeavyPendulum", "--algo", "sac", "--out", str(out)]
    argv += ["--set", "total_env_steps=200", "--set", "learning_starts=100", "--set", "hidden=[16]"]
    assert main([*argv, "--no-progress", "--eval-episodes", "0", *flags]) == 0
    registry._REGISTERED.pop("HeavyPendulum")


def test_a_run_on_a_module_registered_id_resumes_with_the_module_typed_again(user_envs, tmp_path, capsys):
    # The run's files never name a module to import: a fresh process does not know the id, and
    # the user types --env module:ID with --resume to import it again.
    out = tmp_path / "r"
    _train_a_module_registered_run(out, "--checkpoint-every", "100")
    capsys.readouterr()
    line = _one_line_error(capsys, main(["train", "--resume", str(out), "--no-progress"]))
    assert "env='HeavyPendulum' is not a registered Gymnasium id" in line and "also with --resume" in line
    resume = ["train", "--resume", str(out), "--env", "tests.test_any_env:HeavyPendulum", "--no-progress"]
    assert main([*resume, "--eval-episodes", "0"]) == 0
    line = _one_line_error(capsys, main(["train", "--resume", str(out), "--env", "HeavyPendulum"]))
    assert "drop --env" in line


def test_mujoco_tasks_without_a_recipe_take_the_mujoco_defaults():
    from rl_as_inference import config as rconfig

    mujoco_ids = [
        i for i, s in gym.registry.items() if str(s.entry_point).startswith("gymnasium.envs.mujoco.")
    ]
    assert {"Hopper-v5", "InvertedPendulum-v5", "HalfCheetah-v5"} <= set(mujoco_ids)
    own = set(rconfig.recipe_ids())  # a recipe of its own (InvertedPendulum-v5) comes first
    for env_id in mujoco_ids:
        assert rconfig.recipe_family(env_id) == (None if env_id in own else "mujoco"), env_id
    assert rconfig.load_recipe("InvertedPendulum-v5")["default_algo"] == "vmpo"
    for env_id in ("Pendulum-v1", "LunarLander-v3", "FrozenLake-v1", "test/PendulumClone-v0"):
        assert rconfig.recipe_family(env_id) is None, env_id
    recipe = rconfig.load_recipe("HalfCheetah-v5")
    assert recipe["default_algo"] == "sac"
    for algo in (name for name, table in recipe.items() if isinstance(table, dict)):
        config_cls, _ = runs.ALGORITHMS[algo]
        config = rconfig.build_config(config_cls, "HalfCheetah-v5", algo, sets=["env=HalfCheetah-v5"])
        assert config.total_env_steps == 1_000_000, algo
    sac_cls = runs.ALGORITHMS["sac"][0]
    sac_config = rconfig.build_config(sac_cls, "HalfCheetah-v5", "sac", sets=["env=HalfCheetah-v5"])
    assert (sac_config.learning_starts, sac_config.actor_lr, sac_config.buffer_size) == (
        10_000,
        3e-4,
        1_000_000,
    )
    # Hopper-v5 has a recipe of its own: the family's tables, SAC smaller and faster
    assert rconfig.recipe_family("Hopper-v5") is None
    hopper = rconfig.build_config(sac_cls, "Hopper-v5", "sac", sets=["env=Hopper-v5"])
    assert (hopper.hidden, hopper.num_envs, hopper.actor_lr, hopper.learning_starts) == (
        (128, 128),
        2,
        1e-3,
        10_000,
    )
    # and MPO with the settings measured on it at 100k steps (the family's warm-up and buffer kept)
    mpo_cls = runs.ALGORITHMS["mpo"][0]
    mpo = rconfig.build_config(mpo_cls, "Hopper-v5", "mpo", sets=["env=Hopper-v5"])
    assert (mpo.hidden, mpo.num_envs, mpo.twin_critic, mpo.action_penalization) == ((64, 64), 4, False, True)
    assert (mpo.learning_starts, mpo.buffer_size) == (10_000, 1_000_000)
    assert set(rconfig.load_recipe("Hopper-v5")) == set(rconfig.load_recipe("HalfCheetah-v5"))


def test_a_mujoco_task_trains_from_the_command_line_with_its_defaults_named(tmp_path, capsys):
    pytest.importorskip("mujoco")  # the dev extra installs it (gymnasium[mujoco])
    out = tmp_path / "run"
    tiny = ["--set", "total_env_steps=600", "--set", "learning_starts=300", "--set", "hidden=[16]"]
    tiny += ["--set", "batch_size=32", "--set", "log_every=300", "--set", "normalize_obs=true"]
    assert main(["train", "--env", "Reacher-v5", "--out", str(out), *tiny, *QUIET]) == 0
    err = capsys.readouterr().err
    assert "Reacher-v5 has no recipe of its own; sac with the mujoco defaults" in err
    config = (out / "config.toml").read_text()
    assert "buffer_size = 1000000" in config and "normalize_obs = true" in config
    loaded = load_policy(out)
    assert loaded.module.encoder.normalizer.count.item() == 601
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == 2 and summary["env_steps"] == 600


class Pixels(gym.Env):
    """An env with image observations, as CarRacing-v3's (here 8x8x3 bytes)."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((8, 8, 3), np.uint8), {}

    def step(self, action):
        return np.zeros((8, 8, 3), np.uint8), 0.0, False, False, {}


@pytest.mark.parametrize("algo", ["sac", "mpo", "vmpo"])
def test_image_observations_are_named_before_anything_is_allocated(algo, tmp_path, capsys):
    gym.register("test/Pixels-v0", entry_point="tests.test_any_env:Pixels", max_episode_steps=10)
    try:
        out = tmp_path / "r"
        line = _one_line_error(
            capsys, main(["train", "--env", "test/Pixels-v0", "--algo", algo, "--out", str(out)])
        )
        with pytest.raises(ValueError, match=r"no convolutional encoder for images"):
            Collector("test/Pixels-v0", num_envs=1, device=torch.device("cpu"), seed=0, buffer_size=10)
    finally:
        gym.registry.pop("test/Pixels-v0")
    assert "test/Pixels-v0 has observation space Box(0, 255, (8, 8, 3), uint8)" in line
    assert "no convolutional encoder for images" in line and "FlattenObservation" in line
    assert not out.exists()


class Countdown(gym.Env):
    """A user's Gymnasium env class, never registered: a 1-D walk that ends after 5 steps."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.x = 0, np.zeros(1, np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.t += 1
        self.x = np.clip(self.x + np.asarray(action, np.float32), -10, 10)
        return self.x.copy(), float(self.x[0]), self.t >= 5, False, {}


def test_a_gymnasium_env_class_typed_as_module_and_name_trains_as_gymnasiums_env(tmp_path, capsys):
    out = tmp_path / "r"
    tiny = ["--set", "total_env_steps=300", "--set", "learning_starts=100", "--set", "hidden=[8]"]
    tiny += ["--set", "batch_size=16", "--set", "log_every=100"]
    try:
        argv = ["train", "--env", "tests.test_any_env:Countdown", "--algo", "sac", "--out", str(out)]
        assert main([*argv, *tiny, *QUIET]) == 0
        assert gym.spec("Countdown").entry_point is Countdown  # registered with Gymnasium, as it is
    finally:
        gym.registry.pop("Countdown", None)
    assert "episodes of Gymnasium's env" in capsys.readouterr().out
    assert 'env = "Countdown"' in (out / "config.toml").read_text()


class UnboundedActions(gym.Env):
    """A user's env whose action box is all of R (as custom envs often declare it)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(2, np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.x = self.x + 0.1
        return self.x.copy(), -float(np.square(action).sum()), False, False, {}


@pytest.fixture
def unbounded_actions():
    gym.register("test/Unbounded-v0", entry_point="tests.test_any_env:UnboundedActions", max_episode_steps=20)
    yield "test/Unbounded-v0"
    gym.registry.pop("test/Unbounded-v0")


@pytest.mark.parametrize("algo", ["sac", "mpo"])
def test_an_unbounded_action_box_is_refused_by_the_squashing_algorithms(
    unbounded_actions, algo, tmp_path, capsys
):
    # before: sac named its policy class only, mpo's uniform warm-up handed the env NaN actions
    out = tmp_path / "r"
    line = _one_line_error(
        capsys, main(["train", "--env", unbounded_actions, "--algo", algo, "--out", str(out)])
    )
    assert f"{algo} needs a bounded action box" in line and "Box(-inf, inf, (1,), float32); use vmpo" in line
    assert not out.exists()


def test_an_unbounded_action_box_without_a_recipe_trains_vmpo(unbounded_actions, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--env", unbounded_actions, "--out", str(out), "--set", "total_env_steps=512", *QUIET]
    assert main(argv) == 0
    assert "Box (unbounded) actions: vmpo with its default settings" in capsys.readouterr().err
    assert "vmpo" in (out / "config.toml").read_text()


class OffsetActions(gym.Env):
    """Discrete(3, start=-1): the env takes -1, 0 and 1 (and refuses 2); the reward is the action."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(3, start=-1)
    seen: set[int] = set()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        OffsetActions.seen.add(int(action))
        self.t += 1
        return np.zeros(1, np.float32), float(action), False, self.t >= 10, {}


@pytest.mark.parametrize("algo", ["vmpo", "mpo", "softq"])
def test_discrete_actions_with_a_start_reach_the_env_shifted(algo, tmp_path, capsys):
    # the policies choose indices 0..n-1: before, index 2 reached the env as 2, outside [-1, 2)
    gym.register("OffsetActions-v0", entry_point="tests.test_any_env:OffsetActions", max_episode_steps=10)
    OffsetActions.seen = set()
    out = tmp_path / "r"
    tiny = ["--set", "total_env_steps=3000", "--set", "log_every=1000"]
    if algo != "vmpo":
        tiny += ["--set", "learning_starts=200", "--set", "batch_size=32"]
    try:
        argv = ["train", "--env", "OffsetActions-v0", "--algo", algo, "--out", str(out), *tiny]
        assert main([*argv, "--no-progress", "--eval-episodes", "0"]) == 0
        assert OffsetActions.seen == {-1, 0, 1}  # every action of the space, nothing outside it
        policy = load_policy(out)
        actions = policy.act(np.zeros((4, 1), np.float32))
        assert actions.min() >= -1 and actions.max() <= 1
        # the reward is the action: all three algorithms learn to take +1, the space's last
        assert runs.evaluate(out, episodes=2) == [10.0, 10.0]
    finally:
        gym.registry.pop("OffsetActions-v0")


class _ConstantAction(torch.nn.Module):
    """A stand-in policy whose mode is ``value`` at every observation (a Gaussian's mean can leave
    the box)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.full((obs.shape[0], 1), self.value)

    def mode(self, d: torch.Tensor) -> torch.Tensor:
        return d


@pytest.mark.parametrize("value, expected", [(5.0, 2.0), (-5.0, -2.0), (0.5, 0.5)])
def test_a_loaded_policy_hands_gymnasium_box_actions_clipped_into_the_box(value, expected):
    policy = runs.LoadedPolicy(_ConstantAction(value), "Pendulum-v1", torch.device("cpu"))
    one, batch = policy.act(np.zeros(3, np.float32)), policy.act(np.zeros((4, 3), np.float32))
    assert one.dtype == np.float32 and one.tolist() == [expected]  # Pendulum-v1's torque is in [-2, 2]
    assert batch.shape == (4, 1) and (batch == expected).all()


def test_evaluate_imports_the_module_of_a_module_registered_run(user_envs, tmp_path, capsys):
    out = tmp_path / "r"
    _train_a_module_registered_run(out)
    capsys.readouterr()
    line = _one_line_error(capsys, main(["evaluate", str(out), "--episodes", "1"]))
    assert "env='HeavyPendulum' is not a registered Gymnasium id" in line and "evaluate and inspect" in line
    evaluate = ["evaluate", str(out), "--episodes", "1", "--env", "tests.test_any_env:HeavyPendulum"]
    assert main([*evaluate, "--no-progress"]) == 0
    assert "1 episodes: mean return" in capsys.readouterr().out
    line = _one_line_error(capsys, main(["evaluate", str(out), "--env", "HeavyPendulum"]))
    assert "--env only imports the module that registers it, given as module:ID" in line


class Balanced(gym.Env):
    """An env without a time limit whose episodes never end: its evaluation must end anyway."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 1.0, False, False, {}


def test_evaluation_cuts_the_episodes_of_an_env_without_a_time_limit(tmp_path, capsys):
    # before, the evaluation at the end of a run looped forever
    gym.register("Balanced-v0", entry_point="tests.test_any_env:Balanced")
    try:
        out = tmp_path / "r"
        tiny = ["--set", "total_env_steps=200", "--set", "learning_starts=100", "--set", "hidden=[8]"]
        argv = ["train", "--env", "Balanced-v0", "--algo", "sac", "--out", str(out), *tiny]
        assert main([*argv, "--set", "batch_size=16", "--no-progress", "--eval-episodes", "2"]) == 0
        assert (
            "Balanced-v0 has no time limit; evaluation episodes stop after 1000 steps"
            in capsys.readouterr().err
        )
        assert runs.evaluate(out, episodes=2) == [1000.0, 1000.0]
    finally:
        gym.registry.pop("Balanced-v0")


def test_an_env_with_constructor_arguments_is_a_registered_variant_typed_with_its_module(tmp_path, capsys):
    # gymnasium.register(id, entry_point, kwargs=...) in a module of the user's: trained, then
    # evaluated with the module typed again; FrozenLake without slipping is solved deterministically
    out = tmp_path / "r"
    variant = "tests.env_variant:test/FrozenLakeDry-v1"
    tiny = ["--set", "total_env_steps=20000", "--set", "num_envs=16", "--set", "log_every=10000"]
    try:
        assert main(["train", "--env", variant, "--algo", "vmpo", "--out", str(out), *tiny, *QUIET]) == 0
        assert gym.spec("test/FrozenLakeDry-v1").kwargs["is_slippery"] is False
        gym.registry.pop("test/FrozenLakeDry-v1")  # as in a new process: neither id nor module known
        sys.modules.pop("tests.env_variant")
        capsys.readouterr()
        assert main(["evaluate", str(out), "--episodes", "3", "--env", variant, "--no-progress"]) == 0
        assert "3 episodes: mean return 1.00 +- 0.00" in capsys.readouterr().out
    finally:
        gym.registry.pop("test/FrozenLakeDry-v1", None)
