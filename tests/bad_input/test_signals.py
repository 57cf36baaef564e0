"""SIGINT, SIGTERM and SIGHUP during training save the state, say where in one line, and exit with
128 + the signal's number; the saved state resumes to the same parameters as a run never stopped.

In process, a training callback raises the signal itself (``signal.raise_signal``), so the moment is
exact; in subprocesses, ``rlai train`` and a ``fit`` script get the signal from outside once their
first metric rows (or checkpoints) are on disk, as a user's Ctrl-C or a cluster's SIGTERM would.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import rl_as_inference as rlai
from rl_as_inference import envs, guides, models, runs, signals
from rl_as_inference.algos import sac, softq
from rl_as_inference.resume import Checkpointer

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
IDS = [s.name for s in SIGNALS]


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler (KeyboardInterrupt) for each test, as in an interactive process.

    A process started in the background by a non-interactive shell (``cmd &``) inherits SIGINT
    ignored, and Python then leaves it ignored: the in-process tests here raise SIGINT and expect
    its usual effect, so they install the handler they assume and put the inherited one back."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def _raise_at(env_steps: int, signum: int):
    def callback(row):
        if row["env_steps"] == env_steps:
            signal.raise_signal(signum)

    return callback


@pytest.mark.parametrize("signum", SIGNALS, ids=IDS)
@pytest.mark.parametrize(
    ("module", "config"),
    [
        (
            sac,
            sac.SACConfig(
                total_env_steps=400, learning_starts=100, hidden=(16, 16), batch_size=32, log_every=100
            ),
        ),
        (
            softq,
            softq.SoftQConfig(
                env="CartPole-v1", total_env_steps=400, learning_starts=100, hidden=(16, 16), log_every=100
            ),
        ),
    ],
    ids=["sac", "softq"],
)
def test_a_signal_saves_the_state_and_resume_ends_bit_identical(tmp_path, module, config, signum):
    whole = module.train(config)
    path = tmp_path / "train_state.pt"
    with signals.deferred_signals(), pytest.raises(signals.TrainingInterrupted) as info:
        module.train(config, callback=_raise_at(200, signum), checkpointer=Checkpointer(path, every=0))
    stop = info.value
    assert stop.code == 128 + signum and stop.signum == signum and stop.path == path
    assert stop.env_steps >= 200  # saved at the loop's next look, after the row at 200
    assert torch.load(path, weights_only=True)["env_steps"] == stop.env_steps
    resumed = module.train(config, checkpointer=Checkpointer(path, resume=True))
    for a, b in zip(whole.policy.state_dict().values(), resumed.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the handlers are gone again: Python's own SIGINT handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_deferred_signals_a_signal_keeps_its_effect():
    config = sac.SACConfig(total_env_steps=300, learning_starts=100, hidden=(16, 16), log_every=100)
    with pytest.raises(KeyboardInterrupt):
        sac.train(config, callback=_raise_at(200, signal.SIGINT))


def test_a_signal_after_the_last_look_is_not_lost():
    with pytest.raises(KeyboardInterrupt), signals.deferred_signals():
        signal.raise_signal(signal.SIGINT)
        assert signals.pending() == signal.SIGINT  # recorded, not acted upon, inside the block


def test_fit_with_a_checkpoint_saves_on_a_signal(tmp_path):
    mdp = envs.random_mdp(4, 2, seed=0)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3)
    guide = guides.TabularGuide(mdp, horizon=3)
    path = tmp_path / "fit.pt"

    def stop_at_5(step, stats):
        if step == 4:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(signals.TrainingInterrupted) as info:
        rlai.fit(
            model,
            guide,
            num_steps=20,
            num_episodes=8,
            seed=0,
            progress=False,
            callbacks=[stop_at_5],
            checkpoint=path,
        )
    assert info.value.code == 143 and info.value.env_steps == 5 and "SVI steps" in str(info.value)
    assert torch.load(path, weights_only=True)["step"] == 5


# --- from outside, as a user or a scheduler sends them ------------------------------------------

TRAIN = [
    "train",
    "--env",
    "Pendulum-v1",
    "--algo",
    "sac",
    "--set",
    "total_env_steps=1000000",
    "--set",
    "learning_starts=100",
    "--set",
    "hidden=[16, 16]",
    "--set",
    "log_every=100",
    "--checkpoint-every",
    "0",  # only the signal writes a training state
    "--eval-episodes",
    "0",
    "--no-progress",
]


def _rows(path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _wait_for(predicate, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"exited early with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out")
        time.sleep(0.1)


@pytest.mark.parametrize("signum", SIGNALS, ids=IDS)
def test_rlai_train_saves_on_a_signal_and_says_how_to_resume(tmp_path, signum):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_as_inference", *TRAIN, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: len(_rows(out / "metrics.csv")) >= 2, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    state = torch.load(out / "train_state.pt", weights_only=True)
    steps = state["env_steps"]
    assert lines[0] == (
        f"rlai: {signum.name}: saved {out / 'train_state.pt'} at {steps} env steps; "
        f"resume with: rlai train --resume {out}"
    )
    assert steps >= int(_rows(out / "metrics.csv")[-1]["env_steps"])  # no logged row is lost
    # the saved state continues: a short extension finishes the run
    text = (
        (out / "config.toml")
        .read_text()
        .replace("total_env_steps = 1000000", f"total_env_steps = {steps + 100}")
    )
    (out / "config.toml").write_text(text)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rl_as_inference",
            "train",
            "--resume",
            str(out),
            "--eval-episodes",
            "0",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["env_steps"] == steps + 100


FIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import rl_as_inference as rlai
    from rl_as_inference import envs, guides, models

    mdp = envs.random_mdp(4, 2, seed=0)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3)
    guide = guides.TabularGuide(mdp, horizon=3)
    rlai.fit(model, guide, num_steps=10**9, num_episodes=8, progress=False, checkpoint=sys.argv[1],
             checkpoint_every=50)
    """
)


def test_a_fit_script_saves_on_sigterm(tmp_path):
    script, path = tmp_path / "fit_script.py", tmp_path / "fit.pt"
    script.write_text(FIT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stderr=subprocess.PIPE, text=True)
    _wait_for(path.is_file, proc)
    first = torch.load(path, weights_only=True)["step"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    # TrainingInterrupted is a SystemExit: an uncaught one exits with its code and no traceback
    assert proc.returncode == 143 and "Traceback" not in err, err
    line = err.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("rl_as_inference.fit: SIGTERM: saved "), err
    assert line[0].endswith(f"resume with fit(..., checkpoint={str(path)!r}, resume=True)"), err
    assert torch.load(path, weights_only=True)["step"] >= first


def test_the_second_signal_stops_a_stuck_run():
    code = textwrap.dedent(
        """
        import signal, time
        from rl_as_inference import signals
        with signals.deferred_signals():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # the loop never looked: the second one acts
            time.sleep(30)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGTERM


def test_training_interrupted_reads_as_one_line(tmp_path):
    stop = signals.TrainingInterrupted(signal.SIGTERM, tmp_path / "train_state.pt", 1200)
    assert str(stop) == f"SIGTERM: saved {tmp_path / 'train_state.pt'} at 1200 env steps"
    assert isinstance(stop, SystemExit) and stop.code == 143
    assert runs.TRAIN_STATE == "train_state.pt"
