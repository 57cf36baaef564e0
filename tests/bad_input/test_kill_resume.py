"""SIGKILL at any moment loses nothing: continuing the run ends exactly where an uninterrupted one ends.

``rlai train`` promises that a run killed at any moment (even with SIGKILL, which it cannot catch)
can be continued as a user would -- ``rlai train --resume DIR`` when ``DIR`` holds a training
state, else the original command again, which starts the directory over -- and that the continued
run ends with a policy bit-identical to that of an uninterrupted run, a ``metrics.csv`` with the
same rows each exactly once, and no temporary file of an atomic save left behind.

For two algorithms with different machinery (``sac``: replay buffer, target networks, learned
temperature; ``vmpo``: on-policy unrolls, duals, pi_old), a tiny run goes once uninterrupted, its
directory polled every millisecond to time its first checkpoint, its metric rows and its atomic
saves. Then, in fresh directories, the same command is killed at moments drawn from a seeded
generator out of those timings: early (before the first checkpoint, perhaps before training or
before config.toml exists), right after the first metric row (rows on disk, no checkpoint yet),
while the k-th training-state save is being written, or at a random moment of training; some
trials kill the continued run again. When a run finally completes, its directory is compared with
the uninterrupted one.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

COMMON = ["--eval-episodes", "0", "--no-progress", "--threads", "1"]
# Few thousand env steps and small networks (about 2 s of training after about 4 s of start-up);
# checkpoint intervals that leave several metric rows before the first checkpoint and several saves
# in a run, so that each kind of moment below exists.
RUNS = {
    "sac": [
        *("train", "--env", "Pendulum-v1", "--algo", "sac"),
        *("--set", "total_env_steps=2000", "--set", "learning_starts=200", "--set", "hidden=[16, 16]"),
        *("--set", "batch_size=32", "--set", "log_every=100", "--checkpoint-every", "300"),
    ],
    "vmpo": [
        *("train", "--env", "CartPole-v1", "--algo", "vmpo"),
        *("--set", "total_env_steps=8192", "--set", "num_envs=8", "--set", "hidden=[16, 16]"),
        *("--set", "updates_per_batch=4", "--set", "log_every=256", "--checkpoint-every", "2048"),
    ],
}
# The moments of the kills of each trial before a run is let finish. The first kill of a trial
# hits a fresh directory at a moment that exists in every run ("early", "first_row", "save");
# the second hits the started-over or resumed run, which may finish first.
TRIALS = (("early",), ("save", "training"), ("first_row", "save"))
TIMEOUT = 180  # seconds one command may take: many times its length, a hang is a failure
STATE = "train_state.pt"


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "rl_as_inference", *args, *COMMON]


def _continue(args: list[str], out: Path) -> list[str]:
    """What a user runs after a kill: resume if there is a training state, else start again."""
    if (out / STATE).is_file():
        return _cli(["train", "--resume", str(out)])
    return _cli([*args, "--out", str(out)])


def _temporaries(out: Path) -> list[str]:
    # atomic saves write ``.NAME.XXXX.tmp``; metrics.csv is rewritten through ``metrics.csv.tmp``
    try:
        return [name for name in os.listdir(out) if name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


@dataclass
class _Progress:
    """What a running command has done in its run directory, polled from outside."""

    out: Path
    start: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    state_at: float | None = None  # seconds to the first train_state.pt of this command
    row_at: float | None = None  # seconds to its first metric row beyond those there at its start
    last_row_at: float | None = None  # seconds to its last new metric row
    saves: int = 0  # training-state saves begun (temporaries of train_state.pt seen)

    def __post_init__(self):
        self.had_state = (self.out / STATE).is_file()
        self.old_temporaries = set(_temporaries(self.out))
        self.lines_at_start = self.lines = _line_count(self.out / "metrics.csv")
        self.size = self._metrics_size()
        self.seen: set[str] = set()

    def _metrics_size(self) -> int:
        try:
            return (self.out / "metrics.csv").stat().st_size
        except OSError:
            return -1

    def poll(self) -> None:
        self.elapsed = time.monotonic() - self.start
        for name in set(_temporaries(self.out)) - self.old_temporaries - self.seen:
            self.seen.add(name)
            self.saves += name.startswith(f".{STATE}.")
        if self.state_at is None and not self.had_state and (self.out / STATE).is_file():
            self.state_at = self.elapsed
        size = self._metrics_size()
        if size != self.size:  # read the file only when it changed
            self.size, lines = size, _line_count(self.out / "metrics.csv")
            if lines > max(self.lines, self.lines_at_start):
                self.row_at = self.elapsed if self.row_at is None else self.row_at
                self.last_row_at = self.elapsed
            self.lines = lines


def _run(command: list[str], out: Path, log: Path, kill_when=None) -> tuple[int, _Progress, str]:
    """Run ``command``, polling ``out`` every millisecond, and SIGKILL it as soon as
    ``kill_when(progress)`` holds; returns its exit status, what it did and its stderr."""
    with open(log, "w+") as err:
        progress = _Progress(out)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            progress.poll()
            if progress.elapsed > TIMEOUT:
                proc.kill()
                proc.wait()
                pytest.fail(f"{' '.join(command)} ran for more than {TIMEOUT} s")
            if kill_when is not None and kill_when(progress):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        returncode = proc.wait(timeout=TIMEOUT)
        progress.poll()
        err.seek(0)
        return returncode, progress, err.read()


def _moment(kind: str, rng: random.Random, whole: _Progress, out: Path):
    """A predicate on a run's progress: when to kill it, drawn from the uninterrupted run's timings."""
    if kind == "early":  # from the command's start to the uninterrupted run's first checkpoint
        delay = rng.uniform(0.0, whole.state_at)
        return lambda p: p.elapsed >= delay
    if kind == "first_row":  # rows on disk, the first checkpoint some env steps away
        return lambda p: p.row_at is not None
    if kind == "save":  # the k-th training-state save has begun (the last one of a run included)
        k = rng.randint(1, 2 if (out / STATE).is_file() else whole.saves)
        return lambda p: p.saves >= k
    assert kind == "training"  # after the first new metric row, up to the uninterrupted run's last
    delay = rng.uniform(0.0, whole.last_row_at - whole.row_at)
    return lambda p: p.row_at is not None and p.elapsed >= p.row_at + delay


def _rows(path: Path) -> list[dict]:
    # wall_time is the only column that depends on the clock; every other one must match exactly
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in csv.DictReader(f)]


def _policy(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(RUNS))
def test_sigkill_at_random_moments_then_continuing_ends_bit_identical(tmp_path, algo):
    args = RUNS[algo]
    whole_dir = tmp_path / "whole"
    returncode, whole, stderr = _run(
        _cli([*args, "--out", str(whole_dir)]), whole_dir, tmp_path / "whole.log"
    )
    assert returncode == 0, stderr
    # the moments below exist in this run: rows before the first checkpoint, several saves
    assert whole.row_at is not None and whole.state_at is not None and whole.row_at < whole.state_at
    assert whole.saves >= 3, whole.saves
    expected_rows, expected_policy = _rows(whole_dir / "metrics.csv"), _policy(whole_dir)
    steps = [int(row["env_steps"]) for row in expected_rows]
    assert steps == sorted(set(steps)), steps  # so equal rows below means each row exactly once

    rng = random.Random(f"kill-{algo}")  # fixed: the same moments on every run of the suite
    tally = {"attempts": 0, "landed": 0, "before the first checkpoint": 0, "during a save": 0}
    for trial, kinds in enumerate(TRIALS):
        out = tmp_path / f"trial{trial}"
        for attempt, kind in enumerate(kinds):
            command, kill_when = _continue(args, out), _moment(kind, rng, whole, out)
            log = tmp_path / f"trial{trial}-{attempt}.log"
            returncode, progress, stderr = _run(command, out, log, kill_when)
            tally["attempts"] += 1
            if attempt == 0:  # a fresh directory: that moment exists in every run
                assert returncode == -signal.SIGKILL, (trial, kind, returncode, stderr)
            if returncode == 0:  # the run ended before its moment came: continuing must still work
                continue
            assert returncode == -signal.SIGKILL, (trial, kind, stderr)
            tally["landed"] += 1
            tally["before the first checkpoint"] += not (out / STATE).is_file()
            torn = set(_temporaries(out)) - progress.old_temporaries
            tally["during a save"] += any(name.startswith(".") for name in torn)
        returncode, _, stderr = _run(_continue(args, out), out, tmp_path / f"trial{trial}-end.log")
        assert returncode == 0, (trial, stderr)

        assert _rows(out / "metrics.csv") == expected_rows, trial
        policy = _policy(out)
        assert policy.keys() == expected_policy.keys(), trial
        for name, value in expected_policy.items():
            assert torch.equal(policy[name], value), (trial, name)
        assert not _temporaries(out), (trial, _temporaries(out))  # nothing torn left by a kill in a save
    print(f"{algo}: {tally}")  # shown with pytest -s or -rP: which moments the kills hit this time
