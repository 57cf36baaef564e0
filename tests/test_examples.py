"""The example scripts run as users run them and print numbers that say they work.

Each script runs in a child process from the repository root (``python examples/NAME.py --small``),
as its docstring tells users to, at the small size its ``--small`` flag selects. The assertions
would fail if an example were wrong: training must beat the untrained or zero-force policy, SVI
must end near the exact optimum, the inspection must write data that ArviZ reads.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import arviz as az
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds; each runs in under 15 s on a 2-CPU machine, this leaves room for a busy one
NUMBER = r"(-?[\d.]+(?:e[-+]?\d+)?|-?inf|nan)"


def run_example(name: str, *args: str) -> str:
    """Run examples/NAME with --small and ARGS from the repository root; its stdout."""
    cmd = [sys.executable, f"examples/{name}", "--small", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def numbers(pattern: str, text: str) -> list[float]:
    """The numbers that NUMBER-marked groups of ``pattern`` (with ``{}`` for each) match in ``text``."""
    match = re.search(pattern.format(*[NUMBER] * pattern.count("{}")), text)
    assert match is not None, f"no line matching {pattern!r} in:\n{text}"
    return [float(g) for g in match.groups()]


@pytest.fixture(scope="module")
def exact_vs_svi() -> str:
    return run_example("exact_vs_svi.py")


def test_a_custom_trajectory_model_trains_and_its_policy_improves():
    out = run_example("train_custom_model.py")
    elbo_before, elbo_after = numbers(r"ELBO per episode: {} -> {}", out)
    return_before, return_after = numbers(r"return at m = 1: {} -> {}", out)
    # Seed 0 at this size: ELBO -158.4 -> -148.1 and return -179.5 -> -161.3. The return is that of
    # the policy's mode on the library's Pendulum-v1 (mass 1) from fixed starts, so it has no
    # sampling noise: an untrained or wrongly trained policy does not move it by 10.
    assert elbo_after > elbo_before
    assert return_after > return_before + 10
    (median,) = numbers(r"q\(m\): median {}", out)
    assert 0 < median < 2  # q(m) stays a positive mass near the prior's (median 1, log-sd 0.3)


def test_a_registered_functional_env_trains_by_svi_past_zero_force(tmp_path):
    out = run_example("custom_env.py", "--out", str(tmp_path))
    zero, trained = numbers(r"zero force {}, svi {}", out)
    # Zero force scores -400 (the mass sits 2 units from the goal); a hand-tuned PD controller about
    # -60. Seed 0 at this size reaches -66, and a policy that had learned little (4k env steps)
    # scored -502, below zero force: beating it by 200 needs a policy that steers to the goal.
    assert trained > zero + 200
    assert 'env = "mypkg/PointMass-v0"' in (tmp_path / "point-mass-svi-20000" / "config.toml").read_text()


def test_svi_on_a_gridworld_ends_near_the_exact_optimum(exact_vs_svi):
    out = exact_vs_svi
    log_evidence, best = numbers(r"log p\(O\) = {}, max ELBO = {}", out)
    (uniform,) = numbers(r"ELBO of the uniform policy = {}", out)
    svi, gap = numbers(r"exact ELBO of SVI's policy = {}, gap to the optimum = {}", out)
    tv, tv_uniform = numbers(r"weighted by q\*'s visits: {} \(the uniform policy: {}\)", out)
    assert log_evidence > best > uniform  # slippery: the evidence is optimistic, the ELBO is not
    assert gap == pytest.approx(best - svi, abs=1e-3) and gap > -1e-9  # nothing beats the optimum
    # The tolerance: over seeds 0-4 at this size the exact gap was 0.19-0.82 nats (0.34 for seed 0;
    # the seeds that end worst committed early to one of the two routes round the walls). 1 nat
    # covers that spread, so a Pyro or torch upgrade that changes the draws does not fail it, and is
    # under a fifth of the uniform policy's 5.37 nats: a learner that stalls does not pass.
    assert gap < 1.0
    # The same for the policies: 0.04-0.13 over seeds 0-4, against 0.63 for the uniform policy.
    assert tv < 0.2 and tv < tv_uniform / 3


def test_an_example_prints_the_same_numbers_on_every_run(exact_vs_svi):
    # seeded through fit(seed=...), on one torch thread: a second run is bit-identical
    assert run_example("exact_vs_svi.py") == exact_vs_svi


def test_the_inspection_writes_netcdf_that_arviz_reads_and_a_number_for_k_hat(tmp_path):
    out = run_example("inspect_a_run.py", "--out", str(tmp_path))
    (k_hat,) = numbers(r"PSIS k-hat: {}", out)
    assert not math.isnan(k_hat)
    idata = az.from_netcdf(str(tmp_path / "posterior.nc"))
    assert dict(idata.posterior["return"].sizes) == {"chain": 1, "draw": 64}
    # the printed k-hat, recomputed from the stored log weights, is the one stored with them
    assert float(idata.sample_stats["pareto_k"]) == pytest.approx(k_hat, abs=1e-4)
    assert (tmp_path / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "pendulum-svi-2000" / "checkpoint.pt").is_file()
