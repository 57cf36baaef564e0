"""The ``rlai`` command line, run directories, ``load_policy`` and evaluation on Gymnasium's own env."""

from __future__ import annotations

import csv
import json
import tomllib

import gymnasium as gym
import numpy as np
import pytest

import rl_as_inference as rlai
from rl_as_inference import config as rconfig
from rl_as_inference.algos import sac
from rl_as_inference.cli import main
from rl_as_inference.replay import available_memory

TINY = ["--set", "total_env_steps=300", "--set", "learning_starts=100", "--set", "hidden=[16, 16]"]
TINY += ["--set", "batch_size=32", "--set", "log_every=100", "--eval-episodes", "3", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pendulum"
    assert (
        main(["train", "--env", "Pendulum-v1", "--algo", "sac", "--seed", "3", "--out", str(out), *TINY]) == 0
    )
    return out


def test_train_writes_a_complete_run_directory(run_dir):
    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert config["algo"] == "sac" and config["env"] == "Pendulum-v1" and config["seed"] == 3
    assert config["hidden"] == [16, 16] and config["total_env_steps"] == 300
    assert config["actor_lr"] == 3e-3  # from the shipped recipe (the dataclass default is 1e-3)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["env_steps"]) for r in rows] == [100, 200, 300]
    assert {"return", "elbo", "critic_loss", "alpha"} <= set(rows[0])
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["episodes"] == 3 and np.isfinite(summary["mean_return"])


def test_load_policy_acts_on_gymnasium_observations(run_dir):
    policy = rlai.load_policy(run_dir)
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    action = policy.act(obs)
    assert action.shape == (1,) and action.dtype == np.float32 and env.action_space.contains(action)
    env.step(action)
    batch = policy.act(np.stack([obs, obs, obs]))
    assert batch.shape == (3, 1) and np.allclose(batch, action)
    sampled = policy.act(np.stack([obs] * 200), deterministic=False)
    assert sampled.std() > 0 and env.action_space.contains(sampled[0])


def test_evaluate_is_reproducible_for_a_seed(run_dir, capsys):
    a = rlai.runs.evaluate(run_dir, episodes=3, seed=7)
    b = rlai.runs.evaluate(run_dir, episodes=3, seed=7)
    assert a == b and len(a) == 3
    s1 = rlai.runs.evaluate(run_dir, episodes=2, seed=7, stochastic=True)
    s2 = rlai.runs.evaluate(run_dir, episodes=2, seed=7, stochastic=True)
    assert s1 == s2 and s1 != a[:2]
    assert main(["evaluate", str(run_dir), "--episodes", "3", "--seed", "7"]) == 0
    assert f"3 episodes: mean return {np.mean(a):.2f}" in capsys.readouterr().out


def test_inspect_a_trained_run(run_dir, tmp_path, capsys):
    out = tmp_path / "inspect"
    assert main(["inspect", str(run_dir), "--out", str(out), "--episodes", "8", "--horizon", "20"]) == 0
    printed = capsys.readouterr().out
    assert "8 episodes of Pendulum-v1 (horizon 20" in printed
    assert "log p(O) (IS estimate)" in printed and "PSIS k-hat" in printed and "ESS (Kish)" in printed
    assert (out / "posterior.nc").is_file()
    assert all(
        (out / f"{name}.png").is_file() for name in ("elbo", "actions", "states", "returns", "weights")
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--env", "Foo-v0"],
            "env='Foo-v0' is not a registered Gymnasium id; ported ids: Acrobot-v1",
        ),
        (
            ["train", "--env", "Pendulum-v1", "--algo", "ppo"],
            "unknown algorithm 'ppo'; available: em, mpo, sac, softq, svi, vmpo",
        ),
        (
            ["train", "--env", "Pendulum-v1", "--algo", "sac", "--set", "batchsize=3"],
            "unknown key 'batchsize' for SACConfig; did you mean 'batch_size'?",
        ),
        (
            ["train", "--env", "Pendulum-v1", "--set", "batch_size=abc"],
            "batch_size must be an integer, got 'abc'",
        ),
        (["train", "--env", "Pendulum-v1", "--set", "gamma"], "--set expects key=value"),
        (
            ["train", "--env", "Pendulum-v1", "--config", "/nonexistent.toml"],
            "--config /nonexistent.toml: no such file",
        ),
        (["evaluate", "/nonexistent-run"], "is not a run directory"),
        (["evaluate", ".", "--episodes", "0"], "episodes must be an int >= 1, got 0"),
        (["train", "--env", "Pendulum-v1", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["train", "--algo", "sac"], "rlai train needs --env ID (or --resume DIR)"),
        (["train", "--resume", "/nonexistent-run"], "is not a run directory: no config.toml"),
    ],
)
def test_bad_options_give_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlai: error: ") and message in err and err.count("\n") == 1


def test_foreign_checkpoint_is_rejected(tmp_path, capsys):
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not an rl_as_inference run checkpoint" in capsys.readouterr().err


def test_config_file_and_type_coercion(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[sac]\ngamma = 0.95\nalpha = 0.2\nhidden = [32]\n")
    cfg = rconfig.build_config(
        sac.SACConfig, "Pendulum-v1", "sac", file=path, sets=["alpha=none", "tau=0.01"]
    )
    assert cfg.gamma == 0.95 and cfg.alpha is None and cfg.hidden == (32,) and cfg.tau == 0.01
    assert cfg.total_env_steps == 8000  # recipe value survives
    path.write_text("gamma = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        rconfig.build_config(sac.SACConfig, "Pendulum-v1", "sac", file=path)
    assert "Pendulum-v1" in rconfig.recipe_ids()


def test_demo_rollout_part_runs(capsys):
    from rl_as_inference import demo

    demo.main(["--no-train", "--num-envs", "64", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "energy controller" in out and "Gymnasium's own Pendulum-v1" in out


def test_default_algorithm_comes_from_the_recipe(tmp_path):
    out = tmp_path / "svi"
    argv = ["train", "--env", "Pendulum-v1", "--out", str(out), "--set", "horizon=2", *TINY]
    assert main(argv) == 0
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["algo"] == "svi" and config["horizon"] == 2 and config["start_states"] == "rollout"
    assert rlai.load_policy(out).act(np.zeros(3, dtype=np.float32)).shape == (1,)


def test_mpo_trains_from_the_command_line_and_its_policy_loads(tmp_path):
    out = tmp_path / "mpo"
    argv = [
        "train",
        "--env",
        "Pendulum-v1",
        "--algo",
        "mpo",
        "--out",
        str(out),
        "--set",
        "num_samples=4",
        *TINY,
    ]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {"temperature", "kl_q_rel", "kl_mean_rel", "alpha_mean"} <= set(rows[0])
    policy = rlai.load_policy(out)
    assert policy.module.state_dependent_std and policy.act(np.zeros(3, dtype=np.float32)).shape == (1,)


def test_a_killed_run_resumes_to_bit_identical_parameters(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    args = ["--env", "Pendulum-v1", "--algo", "sac", "--seed", "1", "--checkpoint-every", "400"]
    args += ["--set", "total_env_steps=3000", *TINY[2:]]  # TINY's budget replaced by 3000 steps
    whole = tmp_path / "whole"
    assert main(["train", *args, "--out", str(whole)]) == 0
    cut = tmp_path / "cut"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_as_inference.cli", "train", *args, "--out", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (cut / "train_state.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: only what is on disk survives
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (cut / "checkpoint.pt").exists()
    # starting over in the same directory would overwrite the run: refused with a hint
    assert main(["train", *args, "--out", str(cut)]) == 2
    assert f"--resume {cut}" in capsys.readouterr().err
    assert main(["train", "--resume", str(cut), "--eval-episodes", "3", "--no-progress"]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(cut / "checkpoint.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a = list(csv.DictReader((whole / "metrics.csv").open()))
    rows_b = list(csv.DictReader((cut / "metrics.csv").open()))
    assert [r["env_steps"] for r in rows_b] == [r["env_steps"] for r in rows_a]  # no gap, no repeat
    assert [r["critic_loss"] for r in rows_b] == [r["critic_loss"] for r in rows_a]
    summary = capsys.readouterr().out
    assert "sac Pendulum-v1: 3000 env steps in" in summary and "over 3 episodes" in summary
    assert main(["train", "--resume", str(cut), "--seed", "2"]) == 2
    assert "--resume continues a run with its own config; drop --seed" in capsys.readouterr().err


def test_every_env_has_a_recipe_whose_tables_resolve():
    from rl_as_inference import envs, runs

    # `rlai train --env ID` has a recipe for every port, and for the Gymnasium tasks tuned here
    assert set(envs.PORTED) <= set(rconfig.recipe_ids())
    assert {"InvertedPendulum-v5", "InvertedDoublePendulum-v5"} <= set(rconfig.recipe_ids())
    for env_id in rconfig.recipe_ids():
        recipe = rconfig.load_recipe(env_id)
        assert recipe["default_algo"] in runs.ALGORITHMS, env_id
        for algo in (name for name, table in recipe.items() if isinstance(table, dict)):
            config_cls, _ = runs.ALGORITHMS[algo]  # a table named after an unknown algorithm fails here
            config = rconfig.build_config(config_cls, env_id, algo, sets=[f"env={env_id}"])
            assert config.env == env_id
            # exploring starts only where the env declares a state box (make raises otherwise)
            if envs.has_torch_env(env_id):
                envs.make(env_id, exploring_starts=getattr(config, "exploring_starts", 0.0))
            else:  # Gymnasium's own env: only what needs no dynamics
                assert not runs.REGISTRY[algo].needs_dynamics and config.exploring_starts == 0, env_id


@pytest.mark.skipif(available_memory("cpu") is None, reason="the free memory is known on Linux only")
def test_a_replay_buffer_too_large_for_the_machine_is_a_one_line_error(tmp_path, capsys):
    # 10^12 Pendulum-v1 transitions are terabytes: refused before anything is allocated or trained
    argv = ["train", "--env", "Pendulum-v1", "--algo", "sac", "--set", "buffer_size=1000000000000"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlai: error: sac on Pendulum-v1: a replay buffer of capacity 1,000,000,000,000")
    assert "lower buffer_size" in err and err.count("\n") == 1
