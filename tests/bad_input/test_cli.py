"""Bad command lines: each answers with exit code 2 and one line on stderr, ``rlai: error: ...``,
that names the flag, key or value, and writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from rl_as_inference import load_policy
from rl_as_inference.cli import main

TINY = ["--set", "total_env_steps=200", "--set", "learning_starts=100", "--set", "hidden=[16, 16]"]
QUIET = ["--eval-episodes", "0", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pendulum"
    assert main(["train", "--env", "Pendulum-v1", "--algo", "sac", "--out", str(out), *TINY, *QUIET]) == 0
    return out


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlai: error: "), err
    return lines[0]


TRAIN_CASES = [
    (["--eval-episodes", "-1"], r"eval_episodes=-1 is not allowed; use an int >= 0"),
    (["--checkpoint-every", "-5"], r"checkpoint_every=-5 is not allowed; use an int >= 0"),
    (["--threads", "0"], r"--threads must be >= 1, got 0"),
    (["--set", "env=Acrobot-v1"], r"--set env=Acrobot-v1 contradicts --env Pendulum-v1"),
    (["--seed", "3", "--set", "seed=4"], r"--set seed=4 contradicts --seed 3"),
    (["--device", "cpu", "--set", "device=auto"], r"--set device=auto contradicts --device cpu"),
    (["--set", "gamma=1.5"], r"gamma=1.5 is not allowed; use a number in \(0, 1\]"),
    (["--set", "gamma=nan"], r"gamma=nan is not allowed"),
    (["--set", "gamma=abc"], r"gamma must be a number, got 'abc'"),
    (["--set", "total_env_steps=-100"], r"total_env_steps=-100 is not allowed; use an int >= 1"),
    (["--set", "log_every=0"], r"log_every=0 is not allowed; use an int >= 1"),
    (["--set", "num_envs=0"], r"num_envs=0 is not allowed"),
    (["--set", "hidden=[64,x]"], r"hidden must be an integer, got 'x'"),
    (["--set", "gama=0.9"], r"unknown key 'gama' for SACConfig; did you mean 'gamma'\?"),
    (["--set", "gamma"], r"--set expects key=value, got 'gamma'"),
    (["--algo", "foo"], r"unknown algorithm 'foo'; available: em, mpo, sac"),
    (["--algo", "svi", "--set", "start_states=buffer"], r"start_states='buffer' is not allowed"),
]


@pytest.mark.parametrize(("extra", "message"), TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_bad_train_options_are_named(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    argv = ["train", "--env", "Pendulum-v1", "--out", str(out), *TINY, *QUIET, *extra]
    if "--algo" not in extra:
        argv += ["--algo", "sac"]
    line = _one_line_error(capsys, main(argv))
    assert re.search(message, line), line
    assert not out.exists()  # refused before anything was written


VMPO_CASES = [
    (["--set", "policy_lr=-1"], r"policy_lr=-1.0 is not allowed; use a positive finite number"),
    (["--set", "unroll_length=0"], r"unroll_length=0 is not allowed; use an int >= 1"),
    (["--set", "activation=Relu"], r"activation='Relu' is not allowed; did you mean 'ReLU'\?"),
    (["--set", "top_fraction=0"], r"top_fraction=0.0 is not allowed"),
]


@pytest.mark.parametrize(("extra", "message"), VMPO_CASES, ids=[" ".join(c[0]) for c in VMPO_CASES])
def test_bad_vmpo_options_are_named(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    argv = ["train", "--env", "CartPole-v1", "--algo", "vmpo", "--out", str(out), *QUIET, *extra]
    line = _one_line_error(capsys, main(argv))
    assert re.search(message, line), line
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA accepts --device cuda")
def test_device_cuda_without_cuda_is_named(tmp_path, capsys):
    line = _one_line_error(
        capsys,
        main(["train", "--env", "Pendulum-v1", "--device", "cuda", "--out", str(tmp_path / "r"), *QUIET]),
    )
    assert "device='cuda' is not allowed; use 'cpu' or 'auto' (CUDA is not available here)" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA accepts --device cuda")
def test_inspect_and_load_policy_on_cuda_without_cuda_name_the_device(run_dir, tmp_path, capsys):
    # The checkpoint is fine: the message is about the device, not a corrupt file.
    line = _one_line_error(
        capsys, main(["inspect", str(run_dir), "--out", str(tmp_path / "i"), "--device", "cuda"])
    )
    assert "device='cuda' but this machine has no CUDA device" in line, line
    with pytest.raises(ValueError, match="device='cuda' but this machine has no CUDA device"):
        load_policy(run_dir, device="cuda")


def test_other_commands_bad_options(run_dir, tmp_path, capsys):
    cases = [
        (["train"], "rlai train needs --env ID (or --resume DIR)"),
        (["train", "--env", "NoSuchEnv-v9"], "env='NoSuchEnv-v9' is not a registered Gymnasium id"),
        (["train", "--resume", str(run_dir), "--env", "Pendulum-v1"], "drop --env"),
        (["train", "--resume", str(tmp_path / "none")], "is not a run directory: no config.toml"),
        (["evaluate", str(tmp_path / "none")], "is not a run directory: no checkpoint.pt"),
        (["evaluate", str(run_dir), "--episodes", "0"], "episodes must be an int >= 1, got 0"),
        (["evaluate", str(run_dir), "--seed", "-1"], "seed=-1 is not allowed"),
        (
            ["inspect", str(run_dir), "--out", str(tmp_path / "i"), "--episodes", "1"],
            "episodes must be an int >= 2",
        ),
        (
            ["inspect", str(run_dir), "--out", str(tmp_path / "i"), "--horizon", "0"],
            "horizon must be an int >= 1",
        ),
        (
            ["inspect", str(run_dir), "--out", str(tmp_path / "i"), "--episodes", "1000000000"],
            "num_episodes=1000000000 needs about",
        ),
    ]
    for argv, message in cases:
        line = _one_line_error(capsys, main(argv))
        assert message in line, (argv, line)
    assert not (tmp_path / "i").exists()


def test_a_huge_inspect_request_says_how_many_fit(run_dir, tmp_path, capsys):
    main(["inspect", str(run_dir), "--out", str(tmp_path / "i"), "--episodes", "1000000000"])
    line = capsys.readouterr().err
    fit = int(line.rsplit("at most ", 1)[1].split(" episodes")[0].replace(",", ""))
    assert 1_000 < fit < 1_000_000_000, line


def test_an_out_path_through_a_file_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "run"
    line = _one_line_error(
        capsys, main(["train", "--env", "Pendulum-v1", "--algo", "sac", "--out", str(out), *TINY, *QUIET])
    )
    assert f"cannot read or write {out}" in line or f"cannot read or write {out.parent}" in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_is_named(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    out = folder / "run"
    line = _one_line_error(
        capsys, main(["train", "--env", "Pendulum-v1", "--algo", "sac", "--out", str(out), *TINY, *QUIET])
    )
    assert "Permission denied" in line and str(folder) in line, line


def test_config_file_tables_are_reported(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[sac]\nbatch_size = 32\n[mpo]\nbatch_size = 64\n")
    out = tmp_path / "run"
    argv = ["train", "--env", "Pendulum-v1", "--algo", "sac", "--config", str(path), "--out", str(out)]
    assert main([*argv, *TINY, *QUIET]) == 0
    assert (
        f"rlai: note: --config {path}: used [sac]; ignored [mpo] (another algorithm)"
        in capsys.readouterr().err
    )
    (tmp_path / "bad.toml").write_text("[sca]\nbatch_size = 32\n")
    argv[argv.index(str(path))] = str(tmp_path / "bad.toml")
    argv[argv.index(str(out))] = str(tmp_path / "run2")
    line = _one_line_error(capsys, main([*argv, *TINY, *QUIET]))
    assert "table [sca] names no algorithm" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--env", "Pendulum-v1", "--set", "gamma=1.5"],
        ["evaluate", "/nonexistent-run-dir"],
        ["train", "--env", "Pendulum-v1", "--out", "/proc/no/such/dir", "--set", "total_env_steps=10"],
    ],
    ids=["bad-value", "missing-run", "unwritable-out"],
)
def test_no_traceback_reaches_the_user(argv):
    done = subprocess.run(
        [sys.executable, "-m", "rl_as_inference", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlai: error: ") and "Traceback" not in done.stderr, (
        done.stderr
    )
