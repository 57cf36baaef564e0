"""SIGKILL at random moments loses at most the steps since the last checkpoint, and resuming ends
exactly where an uninterrupted run ends.

For two algorithms with different machinery (``sac``: replay buffer, target networks, learned
temperature; ``vmpo``: on-policy unrolls, duals, pi_old), ``rlai train`` runs once uninterrupted
and then, in a second directory, is killed with SIGKILL after delays drawn from a seeded generator
(some before the first checkpoint or before training starts at all, some during or after a
resume) and continued each time as a user would: ``rlai train --resume DIR`` when the directory
holds a training state, else the original command again (which starts the directory over). When
a run finally completes, its policy is bit-identical to the uninterrupted one, its ``metrics.csv``
has the same rows (every column but the wall clock) each exactly once, and no temporary file of
an atomic save is left behind.
"""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

COMMON = ["--eval-episodes", "0", "--no-progress", "--threads", "1"]
RUNS = {
    "sac": [
        *("train", "--env", "Pendulum-v1", "--algo", "sac"),
        *("--set", "total_env_steps=2000", "--set", "learning_starts=200", "--set", "hidden=[16, 16]"),
        *("--set", "batch_size=32", "--set", "log_every=100", "--checkpoint-every", "300"),
    ],
    "vmpo": [
        *("train", "--env", "CartPole-v1", "--algo", "vmpo"),
        *("--set", "total_env_steps=16384", "--set", "num_envs=8", "--set", "hidden=[16, 16]"),
        *("--set", "log_every=512", "--checkpoint-every", "2048"),
    ],
}
KILLS_PER_TRIAL = {"sac": [1, 2, 2], "vmpo": [1, 2, 2]}  # kills before a run is let finish


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "rl_as_inference", *args, *COMMON]


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in csv.DictReader(f)]


def _policy(run) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"]


def _continue(args: list[str], out) -> list[str]:
    if (out / "train_state.pt").is_file():
        return _cli(["train", "--resume", str(out)])
    return _cli([*args, "--out", str(out)])


def _grows(path):
    """A predicate: ``path`` has more lines than it has now (a new metric row was logged)."""

    def lines() -> int:
        try:
            return path.read_bytes().count(b"\n")
        except OSError:
            return 0

    now = lines()
    return lambda: lines() > now or (now and not path.exists())


def _kill_after(command: list[str], delay: float, once=None) -> int:
    """Start ``command`` and SIGKILL it ``delay`` seconds after it starts (or after ``once()``
    first holds, polled every 10 ms), unless it ends first."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while once is not None and not once() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return proc.returncode


@pytest.mark.parametrize("algo", sorted(RUNS))
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(tmp_path, algo):
    args = RUNS[algo]
    whole = tmp_path / "whole"
    began = time.monotonic()
    done = subprocess.run(_cli([*args, "--out", str(whole)]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    duration = time.monotonic() - began  # interpreter start, imports, training and the final save
    seconds = float(done.stdout.split(" env steps in ")[1].split(" s")[0])  # the training loop alone
    expected_rows, expected_policy = _rows(whole / "metrics.csv"), _policy(whole)
    rng = random.Random(f"kill-{algo}")  # fixed: the same moments on every run of the suite
    for trial, kills in enumerate(KILLS_PER_TRIAL[algo]):
        out = tmp_path / f"trial{trial}"
        for _ in range(kills):
            if rng.random() < 0.5:  # any moment: before training starts, before a checkpoint, ...
                _kill_after(_continue(args, out), rng.uniform(0.3, duration))
            else:  # a moment of training, once this process has logged a metric row
                command = _continue(args, out)  # before the start over or resume rewrites the file
                _kill_after(command, rng.uniform(0, seconds), once=_grows(out / "metrics.csv"))
        finished = subprocess.run(_continue(args, out), capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, (trial, finished.stderr)
        assert _rows(out / "metrics.csv") == expected_rows, trial
        policy = _policy(out)
        assert policy.keys() == expected_policy.keys()
        for name, value in expected_policy.items():
            assert torch.equal(policy[name], value), (trial, name)
        assert not list(out.glob(".*.tmp")), trial  # no torn temporary left by a kill inside a save
