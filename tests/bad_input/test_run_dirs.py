"""Run directories as untrusted input: opening one runs no code from it, every corrupt or tampered
file is named in one ValueError, and a run that stopped early is never mixed with the next one.

The trust model under test: a run directory may hold only data. ``load_policy``, ``evaluate``,
``diagnostics.from_run`` and ``rlai train --resume`` read its files with ``weights_only=True``,
check every env id against the registry (no ``module:`` prefix, which would make Gymnasium import
a module) and rebuild networks from a fixed set of classes and activations.
"""

from __future__ import annotations

import csv
import os
import re
import stat
import sys

import pytest
import torch

from rl_as_inference import diagnostics, runs
from rl_as_inference.cli import main
from rl_as_inference.runs import load_policy

TINY = ["total_env_steps=300", "learning_starts=100", "hidden=[16, 16]", "batch_size=32", "log_every=100"]


def _train(out, *, steps: int = 300, every: int = 0, **kw):
    sets = [s for s in TINY if not s.startswith("total_env_steps")] + [f"total_env_steps={steps}"]
    return runs.train_run(
        "Pendulum-v1",
        algo="sac",
        sets=sets,
        out=out,
        progress=False,
        eval_episodes=0,
        checkpoint_every=every,
        **kw,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs") / "pendulum")


def _tampered(trained, tmp_path, change) -> os.PathLike:
    """A copy of the trained run whose checkpoint.pt got ``change(state)`` applied."""
    out = tmp_path / "tampered"
    out.mkdir()
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    change(state)
    torch.save(state, out / "checkpoint.pt")
    (out / "config.toml").write_text((trained / "config.toml").read_text())
    return out


# --- a checkpoint cannot make the library import code --------------------------------------------

EVIL = """
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")
import gymnasium as gym
gym.register(id="Evil-v0", entry_point="gymnasium.envs.classic_control:PendulumEnv")
"""


@pytest.mark.parametrize(
    "opener",
    [
        lambda d: load_policy(d),
        lambda d: runs.evaluate(d, episodes=1),
        lambda d: diagnostics.from_run(d, num_episodes=2),
    ],
    ids=["load_policy", "evaluate", "from_run"],
)
@pytest.mark.parametrize("env", ["evilmod:Evil-v0", "evilmod:Pendulum-v1"])
def test_a_checkpoint_naming_a_module_imports_nothing(trained, tmp_path, monkeypatch, opener, env):
    run = _tampered(trained, tmp_path, lambda s: s.update(env=env))
    (run / "evilmod.py").write_text(EVIL)
    # opened from inside the directory, where `import evilmod` would find the file
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))
    with pytest.raises(ValueError, match=r"env='evilmod:.*names a module to import"):
        opener(run)
    assert not (run / "MARKER").exists()
    assert "evilmod" not in sys.modules


def test_the_cli_refuses_a_checkpoint_naming_a_module(trained, tmp_path, monkeypatch, capsys):
    run = _tampered(trained, tmp_path, lambda s: s.update(env="evilmod:Evil-v0"))
    (run / "evilmod.py").write_text(EVIL)
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))
    for argv in (["evaluate", "."], ["inspect", ".", "--out", str(tmp_path / "inspect")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "evilmod:Evil-v0" in err, err
    assert not (run / "MARKER").exists()


def test_a_config_naming_a_module_imports_nothing_on_resume(tmp_path, monkeypatch):
    run = _train(tmp_path / "run", steps=200)
    text = (run / "config.toml").read_text().replace('env = "Pendulum-v1"', 'env = "evilmod:Evil-v0"')
    (run / "config.toml").write_text(text)
    (run / "evilmod.py").write_text(EVIL)
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))
    with pytest.raises(ValueError, match=r"config.toml: env='evilmod:Evil-v0' names a module"):
        runs.resume_run(run, progress=False, eval_episodes=0)
    assert not (run / "MARKER").exists()


# --- tampered or corrupt checkpoints: one ValueError naming the entry ------------------------------


def _set_policy(key, value):
    return lambda s: s["policy"].update({key: value})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(env="NoSuchEnv-v9"), r"env='NoSuchEnv-v9' is not a registered Gymnasium id"),
        (lambda s: s.update(env=42), r"env=42 is not an environment id"),
        (_set_policy("class", "os.system"), r"policy class='os.system' is not allowed"),
        (_set_policy("activation", "exec"), r"activation='exec' is not allowed"),
        (_set_policy("activation", "relu"), r"activation='relu' is not allowed; did you mean 'ReLU'"),
        (_set_policy("hidden", [16, -1]), r"hidden=\[16, -1\] is not allowed"),
        (_set_policy("hidden", [32, 32]), r"weights do not fit a TanhGaussianMLP for Pendulum-v1"),
        (_set_policy("rescale_obs", "yes"), r"rescale_obs='yes' is not allowed"),
        (
            lambda s: s.update(policy="TanhGaussianMLP"),
            r"policy='TanhGaussianMLP' is not a policy description",
        ),
        (lambda s: s.update(env="CartPole-v1"), r"TanhGaussianMLP does not fit CartPole-v1's spaces"),
        (lambda s: s.pop("state_dict"), r"state_dict is missing"),
        (lambda s: s.update(format="something/1"), r"is not an rl_as_inference run checkpoint"),
    ],
)
def test_a_tampered_checkpoint_is_named(trained, tmp_path, change, message):
    run = _tampered(trained, tmp_path, change)
    with pytest.raises(ValueError, match=message):
        load_policy(run)


@pytest.mark.parametrize(
    "content",
    [b"", b"random bytes " * 40, os.urandom(2048), b"PK\x03\x04" + os.urandom(100)],
    ids=["empty", "text", "random", "torn-zip"],
)
@pytest.mark.parametrize("name", ["checkpoint.pt", "train_state.pt"])
def test_corrupt_files_never_pass_on_torchs_advice(trained, tmp_path, capsys, content, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text((trained / "config.toml").read_text())
    (run / name).write_bytes(content)
    argv = ["evaluate", str(run)] if name == "checkpoint.pt" else ["train", "--resume", str(run)]
    assert main([*argv, "--no-progress"] if name != "checkpoint.pt" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{name} is not a readable" in err and "corrupt, or not written by rl_as_inference" in err
    assert "weights_only" not in err  # torch's advice to turn it off would let the file run code


# --- resume under another config ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        ("num_envs = 4", "num_envs = 2", r"num_envs 4 -> 2"),
        ('env = "Pendulum-v1"', 'env = "MountainCarContinuous-v0"', r"env 'Pendulum-v1' -> 'Mountain"),
        ("hidden = [16, 16]", "hidden = [32, 32]", r"hidden \[16, 16\] -> \[32, 32\]"),
    ],
)
def test_resume_under_another_config_is_refused(tmp_path, capsys, line, replacement, message):
    run = _train(tmp_path / "run", steps=200, every=100)
    text = (run / "config.toml").read_text()
    assert line in text, text
    (run / "config.toml").write_text(text.replace(line, replacement))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written under another config" in err
    assert re.search(message, err), err


def test_resume_may_extend_the_run(tmp_path):
    run = _train(tmp_path / "run", steps=200, every=100)
    text = (run / "config.toml").read_text().replace("total_env_steps = 200", "total_env_steps = 300")
    (run / "config.toml").write_text(text)
    runs.resume_run(run, progress=False, eval_episodes=0)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["env_steps"] == 300


def test_a_state_from_another_run_directory_is_refused(tmp_path):
    a = _train(tmp_path / "a", steps=200, every=100)
    b = runs.train_run(
        "Acrobot-v1",
        algo="softq",
        sets=["total_env_steps=200", "learning_starts=100", "hidden=[16, 16]", "batch_size=32"],
        out=tmp_path / "b",
        progress=False,
        eval_episodes=0,
    )
    (b / "train_state.pt").write_bytes((a / "train_state.pt").read_bytes())
    with pytest.raises(ValueError, match="holds a sac run, not softq|written under another config"):
        runs.resume_run(b, progress=False, eval_episodes=0)


# --- restarts: never two runs in one directory ----------------------------------------------------


def test_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path, capsys):
    out = tmp_path / "run"

    def stop(row):
        if row["env_steps"] >= 200:
            raise KeyboardInterrupt  # a kill after some rows, before any training state

    with pytest.raises(KeyboardInterrupt):
        _stopped_run(out, stop)
    assert (out / "config.toml").exists() and not (out / "train_state.pt").exists()
    with open(out / "metrics.csv") as f:
        assert [r["env_steps"] for r in csv.DictReader(f)] == ["100", "200"]
    (out / ".train_state.pt.abc123.tmp").write_bytes(b"torn")  # a kill inside an atomic save
    _train(out)
    assert "stopped before its first checkpoint; starting it over" in capsys.readouterr().err
    with open(out / "metrics.csv") as f:
        assert [r["env_steps"] for r in csv.DictReader(f)] == ["100", "200", "300"]
    assert not list(out.glob(".*.tmp"))


def _stopped_run(out, stop):
    """``train_run`` whose metric log raises ``stop``'s exception, as a kill would end it."""
    original = runs._MetricLog.__call__

    def log_then_stop(self, row):
        original(self, row)
        stop(row)

    runs._MetricLog.__call__ = log_then_stop
    try:
        _train(out, every=0)
    finally:
        runs._MetricLog.__call__ = original


def test_resume_without_a_training_state_says_how_to_start_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text('algo = "sac"\nenv = "Pendulum-v1"\n')
    with pytest.raises(ValueError, match=r"no train_state.pt: .*start it over with rlai train --out"):
        runs.resume_run(out, progress=False, eval_episodes=0)


def test_resume_removes_stale_temporaries(tmp_path):
    run = _train(tmp_path / "run", steps=200, every=100)
    (run / ".train_state.pt.x1y2.tmp").write_bytes(b"torn")
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"torn")
    text = (run / "config.toml").read_text().replace("total_env_steps = 200", "total_env_steps = 300")
    (run / "config.toml").write_text(text)
    runs.resume_run(run, progress=False, eval_episodes=0)
    assert not list(run.glob(".*.tmp"))


def test_run_files_get_the_permissions_of_ordinary_files(tmp_path):
    old = os.umask(0o022)
    try:
        run = _train(tmp_path / "run", steps=200, every=100)
    finally:
        os.umask(old)
    for name in ("config.toml", "metrics.csv", "train_state.pt", "checkpoint.pt", "eval.json"):
        if (run / name).exists():
            assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name  # mkstemp alone gives 0o600


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"eval_episodes": -1}, r"eval_episodes=-1 is not allowed; use an int >= 0"),
        ({"sets": ["env=Acrobot-v1"]}, r"--set env=Acrobot-v1 contradicts --env Pendulum-v1"),
        ({"sets": ["seed=4"], "seed": 3}, r"--set seed=4 contradicts --seed 3"),
    ],
)
def test_train_run_names_a_bad_request(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        runs.train_run("Pendulum-v1", algo="sac", out=tmp_path / "run", progress=False, **kw)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_evaluate_names_a_bad_seed(trained):
    with pytest.raises(ValueError, match=r"seed=-1 is not allowed"):
        runs.evaluate(trained, episodes=1, seed=-1)


def test_a_full_disk_is_one_line_and_keeps_the_previous_state(tmp_path, monkeypatch, capsys):
    import errno

    from rl_as_inference import checkpoint

    out = tmp_path / "run"
    saves = []
    real_save = checkpoint.torch.save

    def save_until_full(obj, f):
        saves.append(obj.get("env_steps"))
        if len(saves) > 1:  # the disk fills up after the first training-state checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "train_state.pt"))
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    argv = ["train", "--env", "Pendulum-v1", "--algo", "sac", "--out", str(out), "--checkpoint-every", "100"]
    sets = [a for s in TINY for a in ("--set", s)]
    assert main([*argv, *sets, "--eval-episodes", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rlai: error: cannot read or write {out / 'train_state.pt'}: No space left on device"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    state = torch.load(out / "train_state.pt", weights_only=True)  # the previous checkpoint is intact
    assert state["env_steps"] == saves[0] and not list(out.glob(".*.tmp"))


def test_evaluate_shows_progress_when_asked(trained, capsys):
    runs.evaluate(trained, episodes=2, progress=True)
    err = capsys.readouterr().err
    assert "evaluate Pendulum-v1" in err and "2/2" in err and "episode" in err
