"""The planning and vector-env benchmark scripts run end to end at a tiny size, and their
per-method settings reach the planner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import planning as planning_benchmark  # noqa: E402


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_planning_benchmark_runs_every_method_with_its_settings(tmp_path):
    out = tmp_path / "plan.json"
    stdout = _run(
        "planning.py",
        *("--samples", "16", "--horizon", "3", "--episodes", "1", "--ours-only", "--batch", "4"),
        *("--methods", "mppi", "cem", "svi", "smc", "--set", "iterations=1", "--json", str(out)),
    )
    figures = json.loads(out.read_text())
    assert [row["library"] for row in figures["episodes"]] == [
        "ours mppi",
        "ours cem",
        "ours svi",
        "ours smc",
    ]
    for row in figures["episodes"]:
        # a Pendulum-v1 episode is 200 steps of reward in [-16.3, 0]
        assert -16.3 * 200 <= row["mean"] <= 0 and row["episodes"] == 1 and row["ms_per_command"] > 0
    assert figures["batch"]["envs"] == 4 and set(figures["batch"]["floor_ms"]) == {
        "torch.rand",
        "erfinv",
        "one multiply",
    }
    # the settings printed are the script's per method with the override applied
    assert "- ours svi: {'alpha': 0.1, 'noise_std': 0.7, 'lr': 0.3, 'iterations': 1}" in stdout


def test_planning_settings_overrides_and_their_errors():
    parser_args = planning_benchmark.argparse.Namespace(alpha=0.5, noise_std=None, sets=["target_ess=0.1"])
    settings = planning_benchmark.method_settings("mppi", parser_args)
    assert settings == {"alpha": 0.5, "noise_std": 0.7, "target_ess": 0.1}
    assert planning_benchmark.METHOD_SETTINGS["mppi"]["alpha"] == 0.1  # the table itself unchanged
    for bad, message in [("iterations", "use KEY=VALUE"), ("lr=fast", "VALUE must be a Python literal")]:
        args = planning_benchmark.argparse.Namespace(alpha=None, noise_std=None, sets=[bad])
        with pytest.raises(SystemExit, match=message):
            planning_benchmark.method_settings("svi", args)


def test_the_vector_backend_benchmark_times_gymnasiums_envs():
    stdout = _run(
        "vector_backends.py",
        *(
            "--envs",
            "CartPole-v1",
            "--num-envs",
            "2",
            "--backends",
            "sync",
            "--seconds",
            "0.2",
            "--repeats",
            "1",
        ),
    )
    row = next(line for line in stdout.splitlines() if line.startswith("| CartPole-v1 | 2 |"))
    assert float(row.split("|")[3].replace(",", "")) > 100  # env steps per second
