"""Training on CUDA (marked ``gpu``: skipped where torch sees no CUDA device, as on CI).

Every algorithm of ``tests/test_resume.py`` trains, checkpoints, resumes and is evaluated on
Gymnasium observations with its networks on the GPU; ``train_run(device="auto")`` (what
``rlai train --device auto`` calls) picks CUDA. The CPU side of the same contract (bit-identical
resume, reproducible evaluation) is tested in ``test_resume.py`` and ``test_cli.py``; device runs
of this module go into ``benchmarks/RESULTS.md`` (``benchmarks/gpu_checks.sh`` runs it).
"""

from __future__ import annotations

import dataclasses
import tomllib

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_as_inference.resume import Checkpointer, read_train_state
from rl_as_inference.runs import TRAIN_STATE, LoadedPolicy, load_policy, train_run

from .test_resume import CASES, Stop

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


def _on_device_and_finite(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.device.type == DEVICE, name
        assert torch.isfinite(p).all(), name


@pytest.mark.parametrize("name", list(CASES))
def test_trains_resumes_and_acts_on_cuda(name, tmp_path):
    module, config = CASES[name]
    config = dataclasses.replace(config, device=DEVICE)
    whole = module.train(config, checkpointer=Checkpointer(tmp_path / "whole.pt", every=250))
    assert whole.env_steps >= config.total_env_steps
    _on_device_and_finite(whole.policy)

    def stop_after_500(row):
        if row["env_steps"] >= 500:
            raise Stop

    with pytest.raises(Stop):
        module.train(
            config, callback=stop_after_500, checkpointer=Checkpointer(tmp_path / "cut.pt", every=250)
        )
    saved = read_train_state(tmp_path / "cut.pt")
    assert 250 <= saved["env_steps"] < 500 + 64
    rows = []
    resumed = module.train(
        config,
        callback=rows.append,
        checkpointer=Checkpointer(tmp_path / "cut.pt", every=250, resume=True, device=DEVICE),
    )
    assert rows and rows[0]["env_steps"] > saved["env_steps"]  # continued, not started over
    # CUDA kernels need not be bit-reproducible (atomics), so parameters are not compared
    assert resumed.env_steps == whole.env_steps
    _on_device_and_finite(resumed.policy)

    policy = LoadedPolicy(resumed.policy, config.env, torch.device(DEVICE))
    env = gym.make(config.env)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        action = policy.act(obs)
        assert env.action_space.contains(action), action
        obs, *_ = env.step(action)
    env.close()


def test_seeded_stochastic_evaluation_on_cuda_is_reproducible_and_leaves_the_cuda_stream(tmp_path):
    module, config = CASES["sac"]
    trained = module.train(dataclasses.replace(config, device=DEVICE))
    policy = LoadedPolicy(trained.policy, config.env, torch.device(DEVICE))
    obs = np.zeros((64, 3), dtype=np.float32)
    obs[:, 0] = 1.0
    before = torch.cuda.get_rng_state()
    first = policy.act(obs, deterministic=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cuda.get_rng_state(), before)
    again = policy.act(obs, deterministic=False, generator=torch.Generator().manual_seed(3))
    other = policy.act(obs, deterministic=False, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_train_run_device_auto_picks_cuda_and_the_run_loads_there(tmp_path):
    run_dir = train_run(
        "CartPole-v1",
        algo="vmpo",
        device="auto",
        sets=["total_env_steps=2048", "hidden=[16]"],
        out=tmp_path / "run",
        progress=False,
        eval_episodes=2,
    )
    assert tomllib.loads((run_dir / "config.toml").read_text())["device"] == "auto"
    saved = read_train_state(run_dir / TRAIN_STATE)  # no map_location: tensors where they were saved
    weights = saved["components"]["policy"]
    assert weights and all(t.device.type == DEVICE for t in weights.values())
    policy = load_policy(run_dir, device=DEVICE)
    _on_device_and_finite(policy.module)
    assert policy.act(np.zeros(4, dtype=np.float32)) in (0, 1)
