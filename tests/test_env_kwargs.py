"""Constructor arguments of an env (``env_kwargs``): from --set, a --config file and Python, through
training, the run's files, load_policy, evaluation and resume; refused arguments in one line."""

from __future__ import annotations

import json
import tomllib

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference import load_policy, runs
from rl_as_inference.algos import sac, softq
from rl_as_inference.algos.collect import Collector
from rl_as_inference.cli import main
from rl_as_inference.config import build_config, run_env_kwargs, to_toml
from rl_as_inference.resume import read_train_state

QUIET = ["--no-progress"]
# soft Q-learning learns FrozenLake-v1 without slipping in a few thousand steps (every evaluation
# episode then reaches the goal: the env and the greedy policy are both deterministic)
SOFTQ_SHORT = ["--algo", "softq", "--set", "total_env_steps=3000", "--set", "hidden=[32]"]


class _EitherActions(gym.Env):
    """A one-step env whose action space is chosen by a constructor argument, as LunarLander-v3's
    ``continuous``: the spaces, and the algorithm chosen by them, must be read with the arguments."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

    def __init__(self, continuous: bool = False):
        self.action_space = (
            gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32) if continuous else gym.spaces.Discrete(2)
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), 0.0, True, False, {}


@pytest.fixture(autouse=True, scope="module")
def either_actions():
    gym.register("test/EitherActions-v0", entry_point=_EitherActions, max_episode_steps=10)
    yield
    gym.registry.pop("test/EitherActions-v0", None)


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlai: error: "), lines
    return lines[0]


# ---------------------------------------------------------------------- how a run is given them
def test_env_kwargs_from_set_in_both_forms_and_from_a_config_file(tmp_path):
    dotted = [
        "env_kwargs.is_slippery=false",
        "env_kwargs.map_name=8x8",
        "env_kwargs.reward_schedule=[1, 0, 0]",
    ]
    config = build_config(softq.SoftQConfig, "FrozenLake-v1", "softq", sets=dotted)
    # TOML values where the text is one, the bare word otherwise
    assert config.env_kwargs == {"is_slippery": False, "map_name": "8x8", "reward_schedule": [1, 0, 0]}
    inline = build_config(
        softq.SoftQConfig, "FrozenLake-v1", "softq", sets=["env_kwargs={is_slippery = false}"]
    )
    assert inline.env_kwargs == {"is_slippery": False}
    file = tmp_path / "run.toml"
    file.write_text('[env_kwargs]\nmap_name = "8x8"\n\n[softq]\nhidden = [32]\n')
    # a top-level [env_kwargs] table is the run's, not an algorithm's; --set adds to it
    both = build_config(
        softq.SoftQConfig, "FrozenLake-v1", "softq", file=file, sets=["env_kwargs.is_slippery=false"]
    )
    assert both.env_kwargs == {"map_name": "8x8", "is_slippery": False} and both.hidden == (32,)
    assert run_env_kwargs(file, ["env_kwargs.is_slippery=false"]) == both.env_kwargs
    assert softq.SoftQConfig().env_kwargs == {}  # the default: the registered constructor arguments
    # the resolved config file of a run holds them as an inline table that TOML reads back
    assert tomllib.loads(to_toml({"env_kwargs": both.env_kwargs}))["env_kwargs"] == both.env_kwargs


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["env_kwargs=3"], "env_kwargs must be a table such as {is_slippery = false}, got '3'"),
        (["env_kwargs.1x=2"], "--set env_kwargs.1x: '1x' is not a keyword argument name"),
        (["env_kwargs={1 = 2}"], "env_kwargs={'1': 2} is not allowed; use a table of keyword arguments"),
    ],
)
def test_bad_env_kwargs_are_named(sets, message):
    with pytest.raises(ValueError) as info:
        build_config(softq.SoftQConfig, "FrozenLake-v1", "softq", sets=sets)
    assert message in str(info.value)


def test_env_kwargs_inside_an_algorithm_table_is_refused(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text("[softq.env_kwargs]\nis_slippery = false\n")
    with pytest.raises(ValueError, match=r"\[softq\] sets env_kwargs, which belongs to the run"):
        build_config(softq.SoftQConfig, "FrozenLake-v1", "softq", file=file)


# ---------------------------------------------------------------------- where the env is built
def test_a_torch_port_gets_the_arguments_it_models():
    config = sac.SACConfig(env="Pendulum-v1", env_kwargs={"g": 2.0})
    data = Collector.for_config(config, torch.device("cpu"), "sac")
    assert data.backend == "functional" and data.env.g == 2.0
    assert runs.gymnasium_env("Pendulum-v1", {"g": 2.0}).unwrapped.g == 2.0  # evaluation's env


def test_arguments_a_port_does_not_model_are_refused_before_the_run_starts(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--env",
        "CartPole-v1",
        "--set",
        "env_kwargs.sutton_barto_reward=true",
        "--out",
        str(out),
    ]
    line = _one_line_error(capsys, main([*args, *QUIET]))
    assert "env_kwargs sutton_barto_reward=True: the torch env of CartPole-v1 does not take them" in line
    assert "set backend = 'gymnasium'" in line
    assert not out.exists()
    line = _one_line_error(
        capsys, main(["train", "--env", "FrozenLake-v1", "--set", "env_kwargs.bogus=1", "--out", str(out)])
    )
    assert "env_kwargs bogus=1: Gymnasium's FrozenLake-v1 does not take them" in line
    assert not out.exists()


def test_an_id_with_only_a_torch_env_is_built_once_before_the_run_and_refuses_by_name(
    user_envs, tmp_path, capsys, monkeypatch
):
    from rl_as_inference import envs
    from rl_as_inference.envs.pendulum import Pendulum

    gravities = []

    def factory(*, device=None, dtype=None, g: float = 10.0):
        gravities.append(g)
        return Pendulum(device=device, dtype=dtype, g=g)

    envs.register("test/LowGravity-v0", factory)

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(runs, "_run", started)
    out = tmp_path / "run"
    argv = ["train", "--env", "test/LowGravity-v0", "--algo", "sac", "--out", str(out), *QUIET]
    with pytest.raises(Started):
        main([*argv, "--set", "env_kwargs.g=3.0"])
    assert gravities == [3.0]  # the spaces probe alone: before, the arguments' check built it again
    line = _one_line_error(capsys, main([*argv, "--set", "env_kwargs.bogus=1"]))
    assert "env_kwargs bogus=1: the torch env of test/LowGravity-v0 does not take them" in line
    assert "backend" not in line  # Gymnasium has no env of that id to fall back on
    assert not (out / "train_state.pt").exists()


def test_gymnasium_s_own_env_gets_every_argument_it_takes():
    config = sac.SACConfig(env="CartPole-v1", backend="gymnasium", env_kwargs={"sutton_barto_reward": True})
    data = Collector.for_config(config, torch.device("cpu"), "sac", discrete=True)
    try:
        data.step(None)
        # the Sutton-Barto reward is 0 on every step that does not end the episode (1 otherwise)
        assert float(data.buffer.storage["reward"][0]) == 0.0
    finally:
        data.close()


def test_the_spaces_and_the_algorithm_chosen_by_them_follow_the_arguments(tmp_path, capsys):
    for continuous, algo in ((False, "vmpo"), (True, "sac")):
        out = tmp_path / str(continuous)
        sets = ["--set", f"env_kwargs.continuous={str(continuous).lower()}", "--set", "total_env_steps=64"]
        sets += ["--set", "hidden=[8]", "--set", "log_every=32"]
        sets += ["--set", "unroll_length=8"] if algo == "vmpo" else ["--set", "learning_starts=32"]
        code = main(
            [
                "train",
                "--env",
                "test/EitherActions-v0",
                "--out",
                str(out),
                *sets,
                *QUIET,
                "--eval-episodes",
                "1",
            ]
        )
        assert code == 0, capsys.readouterr().err
        assert json.loads((out / "eval.json").read_text())["algo"] == algo
        assert isinstance(load_policy(out).action_space, gym.spaces.Box) == continuous


# ---------------------------------------------------------------------- the run's files
def test_a_run_with_arguments_trains_saves_evaluates_and_resumes_with_them(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--env",
            "FrozenLake-v1",
            *SOFTQ_SHORT,
            "--set",
            "env_kwargs.is_slippery=false",
            "--out",
            str(out),
        ]
        + [*QUIET, "--eval-episodes", "20", "--checkpoint-every", "1000"]
    )
    assert code == 0, capsys.readouterr().err
    assert tomllib.loads((out / "config.toml").read_text())["env_kwargs"] == {"is_slippery": False}
    assert read_train_state(out / "train_state.pt")["meta"]["config"]["env_kwargs"] == {"is_slippery": False}
    policy = load_policy(out)
    assert policy.env_kwargs == {"is_slippery": False}
    # evaluated on the env it learned: without slipping every episode reaches the goal; the same
    # greedy policy on the registered (slippery) FrozenLake-v1 does not
    assert json.loads((out / "eval.json").read_text())["mean_return"] == 1.0
    assert runs.evaluate(out, episodes=20, seed=0) == [1.0] * 20
    slippery = runs.LoadedPolicy(policy.module, "FrozenLake-v1", policy.device)
    assert np.mean(runs.episode_returns(slippery, episodes=20, seed=0)) < 1.0
    # a resume rebuilds the config, arguments included, from config.toml (checked against the
    # training state's record) and evaluates on the same env again
    (out / "checkpoint.pt").unlink()
    (out / "eval.json").unlink()
    assert main(["train", "--resume", str(out), *QUIET, "--eval-episodes", "20"]) == 0, (
        capsys.readouterr().err
    )
    assert load_policy(out).env_kwargs == {"is_slippery": False}
    assert json.loads((out / "eval.json").read_text())["mean_return"] == 1.0


def test_a_checkpoint_whose_env_kwargs_are_not_a_table_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", "--env", "FrozenLake-v1", *SOFTQ_SHORT, "--set", "total_env_steps=1200", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["env_kwargs"] == {}
    state["env_kwargs"] = "is_slippery=False"
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint.pt: env_kwargs='is_slippery=False' is not allowed"):
        load_policy(out)


def test_a_recipe_whose_algorithm_does_not_take_the_arguments_actions_gives_way(
    tmp_path, capsys, monkeypatch
):
    # LunarLander-v3's recipe is written for its Discrete actions; with continuous=True its default
    # algorithm cannot run, so the generic default for a Box runs, and the start says why
    import rl_as_inference.config as config_module

    monkeypatch.setattr(config_module, "load_recipe", lambda env_id: {"default_algo": "softq"})
    out = tmp_path / "run"
    sets = ["--set", "env_kwargs.continuous=true", "--set", "total_env_steps=64", "--set", "hidden=[8]"]
    sets += ["--set", "learning_starts=32", "--set", "log_every=32"]
    code = main(
        ["train", "--env", "test/EitherActions-v0", "--out", str(out), *sets, *QUIET, "--eval-episodes", "1"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "test/EitherActions-v0's recipe runs softq, which does not take this env's Box" in err
    assert "Box actions: sac with its default settings" in err
    assert json.loads((out / "eval.json").read_text())["algo"] == "sac"


def test_inspect_rebuilds_the_torch_env_with_the_run_s_arguments(tmp_path, capsys):
    # inspection re-simulates in the torch env: with arguments only Gymnasium's own env takes,
    # it says so in one line instead of a TypeError
    out = tmp_path / "run"
    sets = [
        "--set",
        "env_kwargs.sutton_barto_reward=true",
        "--set",
        "backend=gymnasium",
        "--set",
        "hidden=[8]",
    ]
    sets += ["--set", "total_env_steps=256", "--set", "num_envs=4", "--set", "unroll_length=16"]
    code = main(
        [
            "train",
            "--env",
            "CartPole-v1",
            "--algo",
            "vmpo",
            "--out",
            str(out),
            *sets,
            *QUIET,
            "--eval-episodes",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    line = _one_line_error(
        capsys, main(["inspect", str(out), "--out", str(tmp_path / "i"), "--episodes", "2"])
    )
    assert "env_kwargs sutton_barto_reward=True: the torch env of CartPole-v1 does not take them" in line
