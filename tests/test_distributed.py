"""Data-parallel SVI on torch.distributed (gloo, two processes on this machine, under ``torchrun``).

Each test launches tests/distributed_worker.py with ``python -m torch.distributed.run --standalone``
as a user would, bounded by a timeout, and checks what the ranks wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from rl_as_inference import distributed as dp
from rl_as_inference.elbo import TrajectoryELBO

from . import distributed_worker as worker

WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH_TIMEOUT_S = 180  # a launch takes ~8 s here; the bound only stops a hang


def torchrun(
    mode: str, out: Path, *args: str, nproc: int = 2, timeout_s: int = 60
) -> subprocess.CompletedProcess:
    env = dict(os.environ, RLAI_DIST_TIMEOUT=str(timeout_s), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        mode,
        str(out),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[:6000]


def test_ranks_that_start_apart_hold_identical_parameters_after_every_step(tmp_path):
    ok(torchrun("identical", tmp_path, "3"))
    record = json.loads((tmp_path / "rank0.json").read_text())
    before, after = record["before"], record["after"]
    assert before[0] != before[1]  # the ranks really created different parameters
    assert after[0] == after[1]  # bit-identical checksums (float64 sums of identical float32 tensors)
    assert after[0] != before[0]


def emulate_two_ranks(steps: int, average_baseline: bool = True) -> dict[str, torch.Tensor]:
    """What one process computes from the same N = 2 x EPISODES_PER_RANK episodes: rank r's episodes
    are drawn from the stream of seed rank_seed(SEED, r); the gradient of the mean ELBO over all N
    episodes is the mean of the two halves' gradients, and the running baseline is updated with the
    mean of the two halves' per-step means (it is linear in the batch mean). With
    ``average_baseline=False`` each half keeps its own baseline instead (ranks whose ELBO did not
    reduce its statistics)."""
    pyro.clear_param_store()
    model, guide = worker.tabular_task()
    losses = [TrajectoryELBO(), TrajectoryELBO()]
    pyro.set_rng_seed(worker.SEED)
    with torch.no_grad():  # fit's first trace, which creates the parameters
        trace = pyro.poutine.trace(guide).get_trace(worker.EPISODES_PER_RANK)
        pyro.poutine.replay(model, trace=trace)(worker.EPISODES_PER_RANK)
    streams = []
    for r in range(2):
        pyro.set_rng_seed(dp.rank_seed(worker.SEED, r))
        streams.append(torch.get_rng_state())
    store = pyro.get_param_store()
    params = [store._params[n] for n in sorted(store)]
    for _ in range(steps):
        grads = []
        for r in range(2):
            torch.set_rng_state(streams[r])
            for p in params:
                p.grad = None
            losses[r].loss_and_grads(model, guide, worker.EPISODES_PER_RANK)
            streams[r] = torch.get_rng_state()
            grads.append([p.grad.clone() for p in params])
        if average_baseline:
            states = [loss.state_dict() for loss in losses]
            mean = {"running": (states[0]["running"] + states[1]["running"]) / 2}
            for loss in losses:
                loss.load_state_dict(mean | {"running_weight": states[0]["running_weight"]})
        with torch.no_grad():
            for p, g0, g1 in zip(params, *grads, strict=True):
                p -= worker.SGD_LR * (g0 + g1) / 2
    return {n: store._params[n].detach().clone() for n in store}


def test_two_ranks_of_half_the_episodes_take_the_step_of_one_process_with_all_of_them(tmp_path):
    ok(torchrun("equivalence", tmp_path, "3"))
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    expected = emulate_two_ranks(3)
    assert rank0.keys() == rank1.keys() == expected.keys()
    for name in expected:
        assert torch.equal(rank0[name], rank1[name])
        # float32 sums in a different order (all-reduce vs here): a few ulps of logits of size ~1
        torch.testing.assert_close(rank0[name], expected[name], rtol=1e-5, atol=1e-6)
    # and the baseline averaging matters: without it (each half's own baseline) the result differs
    alone = emulate_two_ranks(3, average_baseline=False)
    assert any(not torch.allclose(rank0[n], alone[n], atol=1e-4) for n in expected)


def test_v_mpo_on_two_ranks_selects_and_weights_the_top_half_of_the_whole_batch(tmp_path):
    # each rank holds half of a 16-state batch; the averaged gradients equal those of one process
    # with all 16 (the top 8 by advantage over both halves, one softmax, one temperature dual)
    ok(torchrun("vmpo", tmp_path))
    two = torch.load(tmp_path / "vmpo.pt")
    one = worker.vmpo_gradients(*worker.vmpo_batch())
    for a, b in zip(two, one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float32 sums in another order


def test_an_algorithm_trained_from_a_script_under_torchrun_is_data_parallel(tmp_path):
    # sac.train(config) with num_envs=4 on two ranks: 2 envs each, the 600-step budget counted over
    # both, and the same policy on both ranks at the end
    ok(torchrun("train", tmp_path))
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["num_envs"] == [2, 2]
    assert record["env_steps"] == 600 and record["rows"] == [200, 400, 600]
    assert record["policy"][0] == record["policy"][1]


def test_a_resumed_distributed_fit_ends_where_an_uninterrupted_one_does(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir()
    parts.mkdir()
    ok(torchrun("checkpoint", whole, "4"))
    ok(torchrun("checkpoint", parts, "2"))
    ok(torchrun("checkpoint", parts, "4"))  # resumes from parts/fit.pt at step 2
    for r in range(2):
        a, b = torch.load(whole / f"final{r}.pt"), torch.load(parts / f"final{r}.pt")
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert json.loads((whole / "history.json").read_text()) == json.loads(
        (parts / "history.json").read_text()
    )
    # another world size is refused, naming both
    proc = torchrun("checkpoint", parts, "6", nproc=1)
    assert proc.returncode != 0
    assert "world size 2" in proc.stderr and "this one has 1" in proc.stderr


def test_a_rank_that_fails_makes_the_other_exit_instead_of_hanging(tmp_path):
    proc = torchrun("fail", tmp_path)  # the timeout of the launch turns a hang into a failure here
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr


def test_a_rank_that_stalls_makes_the_others_collective_time_out_with_a_message(tmp_path):
    # rank 1 sleeps 120 s; rank 0's next collective gives up after the 5 s timeout
    proc = torchrun("stall", tmp_path, timeout_s=5)
    assert proc.returncode != 0
    assert "DistributedError: rank 0 of 2: all_reduce failed" in proc.stderr, proc.stderr[-3000:]


def test_fit_distributed_without_a_process_group_says_how_to_launch():
    pyro.clear_param_store()
    model, guide = worker.tabular_task()
    if dp.launched_by_torchrun():
        pytest.skip("this process was itself launched by torchrun")
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        import rl_as_inference as rlai

        rlai.fit(model, guide, num_steps=1, num_episodes=2, progress=False, distributed=True)


def test_distributed_optim_outside_a_process_group_is_the_wrapped_optimizer():
    pyro.clear_param_store()
    model, guide = worker.tabular_task()
    import rl_as_inference as rlai

    pyro.set_rng_seed(0)
    plain = rlai.fit(
        model, guide, num_steps=3, num_episodes=4, optim=pyro.optim.Adam({"lr": 0.1}), progress=False
    )
    a = {n: v.detach().clone() for n, v in pyro.get_param_store().items()}
    pyro.clear_param_store()
    model, guide = worker.tabular_task()
    pyro.set_rng_seed(0)
    wrapped = rlai.fit(
        model,
        guide,
        num_steps=3,
        num_episodes=4,
        optim=dp.DistributedOptim(pyro.optim.Adam({"lr": 0.1})),
        progress=False,
    )
    b = {n: v.detach().clone() for n, v in pyro.get_param_store().items()}
    assert plain.elbo == wrapped.elbo
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(TypeError, match="pyro.optim"):
        dp.DistributedOptim(torch.optim.Adam([torch.zeros(1, requires_grad=True)]))


def test_the_distributed_page_and_example_run_under_torchrun(tmp_path):
    page = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", page, re.S)
    script = tmp_path / "page.py"
    script.write_text(block.replace("num_steps=150", "num_steps=3"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*launch, str(script)], capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env
    )
    ok(proc)
    example = Path(__file__).resolve().parents[1] / "examples" / "distributed_fit.py"
    two = subprocess.run(
        [*launch, str(example), "3"], capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env
    )
    ok(two)
    one = subprocess.run(
        [sys.executable, str(example), "3"], capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    ok(one)
    assert re.search(r"^2 process\(es\): mean 50-step return \S+ -> \S+ in \S+ s$", two.stdout, re.M), (
        two.stdout
    )
    assert re.search(r"^1 process\(es\): mean 50-step return", one.stdout, re.M), one.stdout
