"""``rlai train --nproc 2``: the training loops data-parallel on two gloo processes of this machine,
launched as a user launches them (``rlai train --nproc K`` execs torchrun), each bounded by a timeout."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

RUN_TIMEOUT_S = 600  # the bound stops a hang; the runs below take 10-60 s here


def rlai(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rl_as_inference", *args], capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def rows(run: Path) -> list[dict]:
    """metrics.csv without the wall-clock column (the one thing a resumed run cannot repeat)."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]


def evaluation(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize(
    ("env", "threshold"),
    [("CartPole-v1", 475.0), ("Pendulum-v1", -200.0)],
    ids=["cartpole-vmpo", "pendulum-svi"],
)
def test_the_default_recipe_on_two_processes_reaches_the_threshold(tmp_path, env, threshold):
    # the recipes' own algorithms (vmpo, svi) and budgets; num_envs split 2 ways, the batch kept
    run = tmp_path / "run"
    ok(rlai("train", "--nproc", "2", "--env", env, "--out", str(run), "--no-progress"))
    result = evaluation(run)
    # 100 episodes of Gymnasium's own env, deterministic actions, as for the single-process recipe
    assert result["episodes"] == 100
    assert result["mean_return"] >= threshold, result
    steps = [int(r["env_steps"]) for r in rows(run)]
    assert steps == sorted(steps) and steps[-1] == result["env_steps"]  # env steps over both ranks


SAC = [
    "train", "--env", "Pendulum-v1", "--algo", "sac", "--set", "total_env_steps=3000",
    "--set", "learning_starts=400", "--set", "num_envs=4", "--set", "hidden=[32,32]",
    "--set", "log_every=500", "--checkpoint-every", "800", "--no-progress", "--eval-episodes", "0",
]  # fmt: skip


def test_a_distributed_run_stopped_by_sigterm_resumes_to_the_parameters_of_an_uninterrupted_one(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    ok(rlai(*SAC, "--nproc", "2", "--out", str(whole)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_as_inference", *SAC, "--nproc", "2", "--out", str(parts)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (parts / "train_state.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "rlai: SIGTERM: saved" in err, err[-3000:]
    state = torch.load(parts / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["other_ranks"]) == 1
    # the ranks hold bit-identical networks and optimizer states, and their own replay buffers
    mine, other = state["components"], state["other_ranks"][0]["components"]
    for name in ("policy", "critic"):
        assert all(torch.equal(mine[name][k], other[name][k]) for k in mine[name])
    assert torch.equal(mine["critic_opt"]["state"][0]["exp_avg"], other["critic_opt"]["state"][0]["exp_avg"])
    assert not torch.equal(
        mine["data"]["buffer"]["storage"]["obs"], other["data"]["buffer"]["storage"]["obs"]
    )
    assert 0 < state["env_steps"] < 3000
    # the other number of processes is refused, naming both
    refused = rlai("train", "--resume", str(parts), "--no-progress", "--eval-episodes", "0")
    assert refused.returncode == 2
    assert "on 2 process(es), this one has 1" in refused.stderr and "--nproc 2" in refused.stderr
    ok(rlai("train", "--nproc", "2", "--resume", str(parts), "--no-progress", "--eval-episodes", "0"))
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(parts / "checkpoint.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows(whole) == rows(parts)


def test_a_size_that_does_not_split_over_the_processes_is_one_line_naming_it(tmp_path):
    proc = rlai(
        "train", "--nproc", "2", "--env", "CartPole-v1", "--set", "num_envs=5", "--out", str(tmp_path / "r")
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rlai")]
    assert errors == [
        "rlai: error: num_envs=5 does not split over 2 processes: use a multiple of 2 (each process takes num_envs / 2)"
    ]
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_nproc_must_be_positive():
    proc = rlai("train", "--nproc", "0", "--env", "CartPole-v1")
    assert proc.returncode == 2 and "--nproc must be >= 1, got 0" in proc.stderr
