"""The logged-metrics page (docs/metrics.md) names exactly the columns each algorithm writes.

Every algorithm trains for a few hundred env steps through the command line's own entry point,
once per setting that changes its columns (Box or Discrete actions, MPO's action penalization,
segment SVI's two kinds of start states); the header of each ``metrics.csv`` is compared with the
table of the algorithm's section. A column whose description starts with a qualifier ("Box actions
only.") must appear in exactly the runs with that setting, every other column in all of them.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest

from rl_as_inference.algos import REGISTRY
from rl_as_inference.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
COMMON_HEADING = "Columns every algorithm logs"
# the qualifiers a description may start with, and the run setting each one names
QUALIFIERS = {
    "Box actions only.": "Box",
    "Discrete actions only.": "Discrete",
    "Only with `action_penalization = true`.": "penalty",
}

SHORT = ["--set", "total_env_steps=300", "--set", "hidden=[16, 16]", "--set", "log_every=100"]
SHORT += ["--eval-episodes", "0", "--no-progress"]
REPLAY = ["--set", "learning_starts=100", "--set", "batch_size=32"]  # off-policy learners
ON_POLICY = ["--set", "num_envs=4", "--set", "unroll_length=25"]  # vmpo: 100 steps a batch

# algorithm: [(env, the settings the run has, its extra arguments)]
RUNS = {
    "sac": [("Pendulum-v1", set(), REPLAY)],
    "svi": [
        ("Pendulum-v1", set(), ["--set", "start_states=replay", "--set", "reward_scale=1", *REPLAY]),
        ("Pendulum-v1", set(), ["--set", "start_states=rollout", "--set", "num_envs=4"]),
    ],
    "em": [("Pendulum-v1", set(), REPLAY)],
    "mpo": [
        ("Pendulum-v1", {"Box"}, ["--set", "num_samples=4", *REPLAY]),
        (
            "Pendulum-v1",
            {"Box", "penalty"},
            ["--set", "num_samples=4", "--set", "action_penalization=true", *REPLAY],
        ),
        ("CartPole-v1", {"Discrete"}, REPLAY),
    ],
    "vmpo": [("Pendulum-v1", {"Box"}, ON_POLICY), ("CartPole-v1", {"Discrete"}, ON_POLICY)],
    "softq": [("CartPole-v1", set(), REPLAY)],
}


def _tables() -> dict[str, dict[str, str]]:
    """{section: {column: its description}} of every table row under a ``##`` heading: an
    algorithm's section by the name in backticks that opens its heading, else by the heading."""
    tables: dict[str, dict[str, str]] = {}
    section = None
    for line in PAGE.read_text().splitlines():
        heading = re.match(r"^## (.*)$", line)
        if heading:
            name = re.match(r"`(\w+)`", heading.group(1))
            section = name.group(1) if name else heading.group(1).strip()
            tables[section] = {}
        elif section is not None and line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            tables[section][cells[0].strip("`")] = cells[1]
    return tables


def _tag(description: str) -> str | None:
    return next((tag for text, tag in QUALIFIERS.items() if description.startswith(text)), None)


def _header_and_rows(out: Path) -> tuple[list[str], list[dict]]:
    with (out / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_the_page_has_a_section_for_every_algorithm_and_one_for_the_common_columns():
    tables = _tables()
    assert set(RUNS) == set(REGISTRY)
    assert set(REGISTRY) | {COMMON_HEADING} <= set(tables), set(tables)
    assert list(tables[COMMON_HEADING]) == ["env_steps", "wall_time", "return"]
    assert "```python" not in PAGE.read_text()  # a python block would be executed by the docs tests


@pytest.mark.parametrize("algo", sorted(RUNS))
def test_every_logged_column_is_documented_and_every_documented_one_logged(algo, tmp_path):
    tables = _tables()
    common, documented = list(tables[COMMON_HEADING]), tables[algo]
    assert not set(common) & set(documented), "a common column documented again"
    seen: set[str] = set()
    for i, (env, tags, extra) in enumerate(RUNS[algo]):
        out = tmp_path / str(i)
        argv = ["train", "--env", env, "--algo", algo, "--out", str(out), *SHORT, *extra]
        assert main(argv) == 0
        header, rows = _header_and_rows(out)
        assert rows, f"{algo} {env} {extra}: no metric row"
        assert header[:3] == common, header
        logged = set(header[3:])
        assert not logged - set(documented), f"{algo} {env} {extra}: undocumented {logged - set(documented)}"
        expected = {c for c, d in documented.items() if _tag(d) is None or _tag(d) in tags}
        assert logged == expected, f"{algo} {env} {tags}: logged {sorted(logged)}, page {sorted(expected)}"
        seen |= logged
        if algo in ("svi", "em"):  # the page: kl is NaN under maxent (svi's default), finite for em
            kl = [float(r["kl"]) for r in rows]
            assert all(math.isnan(v) for v in kl) if algo == "svi" else all(math.isfinite(v) for v in kl)
    assert seen == set(documented), f"{algo}: documented but never logged {set(documented) - seen}"
