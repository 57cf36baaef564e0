"""The README's example runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pyro

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_learns():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 (our own README)
    result = namespace["result"]
    assert len(result.elbo) == 300
    first, last = sum(result.returns[:20]) / 20, sum(result.returns[-20:]) / 20
    assert last > first + 50, (first, last)  # seeded: the 50-step return improves by ~150
    assert namespace["svi"].loss is not None


def test_readme_example_gives_the_same_numbers_on_every_run(capsys):
    # Network construction included: two runs of the example (3 SVI steps each) print the same.
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[:1]
    short = block.replace("num_steps=300", "num_steps=3")
    assert short != block
    printed = []
    for _ in range(2):
        pyro.clear_param_store()  # as in a fresh process: the store would carry the trained weights
        exec(compile(short, str(README), "exec"), {})  # noqa: S102 (our own README)
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and printed[0], printed
