"""The how-to pages under docs/ run as written and do what they say."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pyro
import pytest
import torch

from rl_as_inference import envs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def test_the_functional_env_how_to_runs_checks_and_learns(user_envs, capsys):
    (block,) = _python_blocks("functional_env.md")
    namespace: dict = {}
    with warnings.catch_warnings():  # Gymnasium's checker warns about the unbounded observation box
        warnings.simplefilter("ignore", UserWarning)
        exec(compile(block, str(DOCS / "functional_env.md"), "exec"), namespace)  # noqa: S102 (our own page)
    result = namespace["result"]
    first, last = sum(result.returns[:5]) / 5, sum(result.returns[-5:]) / 5
    # seeded: about -15 at the start and -4 after 60 steps (a random policy sits near -15)
    assert last > first + 5, (first, last)
    assert "after SVI" in capsys.readouterr().out
    env = envs.make("howto/NoisyCart-v0")
    assert env.stochastic and env.differentiable and env.max_episode_steps == 50


def test_a_stochastic_env_draws_its_transitions_from_the_given_generator(user_envs):
    (block,) = _python_blocks("functional_env.md")
    namespace: dict = {}
    exec(compile(block.split("envs.register(")[0], "how-to", "exec"), namespace)  # noqa: S102 (the class only)
    env = namespace["NoisyCart"]()
    state, action = env.reset(4, seed=0), torch.full((4, 1), 0.5)
    draws = [env.step(state, action, generator=torch.Generator().manual_seed(3)).state for _ in range(2)]
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    torch.manual_seed(11)
    before = torch.rand(1)
    torch.manual_seed(11)
    env.step(state, action, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.rand(1), before)  # the caller's global stream is left as it was
    other = env.step(state, action, generator=torch.Generator().manual_seed(4)).state
    assert not torch.equal(other, draws[0])
    # a given next state is used as is: the reward and termination of that transition
    given = state + 1.0
    assert torch.equal(env.step(state, action, next_state=given).state, given)
    # the vector env's reset seed fixes its transitions
    envs.register("howto/NoisyCart-v0", namespace["NoisyCart"])
    runs = []
    for _ in range(2):
        vec = envs.make_vec("howto/NoisyCart-v0", 3)
        vec.reset(seed=5)
        runs.append(vec.step(torch.zeros(3, 1))[0])
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_a_deterministic_env_refuses_a_next_state():
    env = envs.make("Pendulum-v1")
    state = env.reset(2, seed=0)
    with pytest.raises(ValueError, match="deterministic dynamics .* takes no next_state"):
        env.step(state, torch.zeros(2, 1), next_state=state)


def test_the_planning_page_runs_and_swings_the_pendulum_up():
    (block,) = _python_blocks("planning.md")
    namespace: dict = {}
    exec(compile(block, str(DOCS / "planning.md"), "exec"), namespace)  # noqa: S102 (our own page)
    # seeded: -140.7 over the 8 episodes here; zero torque from these starts scores -989.3
    assert float(namespace["total"].mean()) > -250, namespace["total"]
    assert namespace["mpc"].diagnostics()["ess"].shape == (200, 8)


def test_the_first_model_of_getting_started_runs_and_learns(capsys):
    (block,) = _python_blocks("getting_started.md")
    pyro.clear_param_store()
    namespace: dict = {}
    exec(compile(block, str(DOCS / "getting_started.md"), "exec"), namespace)  # noqa: S102 (our own page)
    result = namespace["result"]
    assert len(result.elbo) == 200
    first, last = sum(result.returns[:10]) / 10, sum(result.returns[-10:]) / 10
    # seeded: the mean 50-step return of the first ten steps is about -304, of the last ten -247
    assert last > first + 30, (first, last)
    out = capsys.readouterr().out
    assert out.startswith("ELBO ") and "return " in out, out


def test_the_enumeration_how_to_reaches_the_exact_optimum(capsys):
    (block,) = [b for b in _python_blocks("custom_model.md") if "TraceEnum_ELBO" in b]
    exec(compile(block, str(DOCS / "custom_model.md"), "exec"), {})  # noqa: S102 (our own page)
    reached, best = map(float, capsys.readouterr().out.split())
    # exact gradients: Adam converges; float32 tables round the ELBO at ~1e-6
    assert abs(reached - best) < 1e-3, (reached, best)


# The pages whose python blocks the suite executes: a new page with one must get its test here
# (the distributed page's block runs under torchrun in test_distributed.py).
TESTED_PAGES = {
    "custom_model.md",
    "distributed.md",
    "environments.md",
    "functional_env.md",
    "getting_started.md",
    "planning.md",
}


def test_the_environments_page_registers_a_variant_that_builds_with_its_arguments():
    import gymnasium as gym

    (block,) = _python_blocks("environments.md")
    try:
        exec(compile(block, str(DOCS / "environments.md"), "exec"), {})  # noqa: S102 (our own page)
        env = gym.make("myenvs/FrozenLakeDry-v1")
        assert env.spec.kwargs["is_slippery"] is False and env.spec.max_episode_steps == 100
        assert len(env.unwrapped.P[0][0]) == 1  # one next state per action: it does not slip
        env.close()
    finally:
        gym.registry.pop("myenvs/FrozenLakeDry-v1", None)


def test_every_python_block_on_a_docs_page_is_executed_by_a_test():
    with_blocks = {p.name for p in DOCS.glob("*.md") if _python_blocks(p.name)}
    assert with_blocks == TESTED_PAGES, with_blocks ^ TESTED_PAGES


def test_the_algorithms_table_says_what_each_registration_says():
    from rl_as_inference.algos import REGISTRY

    rows = {}
    for line in (DOCS / "algorithms.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 4 and cells[0] != "`--algo`":
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(REGISTRY), set(rows) ^ set(REGISTRY)
    for name, algo in REGISTRY.items():
        spaces, dynamics = rows[name][-2], rows[name][-1]
        assert {s.strip() for s in spaces.split(",")} == set(algo.action_spaces), (name, spaces)
        assert dynamics.startswith("yes") == algo.needs_dynamics, (name, dynamics)
