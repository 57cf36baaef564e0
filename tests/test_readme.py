"""The README's example runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

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
