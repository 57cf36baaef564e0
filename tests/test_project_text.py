"""The project speaks of itself alone, and its internal links lead somewhere.

Every tracked text file is read: none may point to paths outside the repository, name work items
by number or speak of work periods (the words are assembled here so that this file passes its own
check). Every relative Markdown link of the README, the docs, the benchmark results, the examples'
README and the notebooks' text cells must name a file of the repository, and a link to a section
(``page.md#section``) a heading of that page.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

OUTSIDE = re.compile(r"\.\./" + "shared")
NUMBERED_ITEM = re.compile(r"\b" + "issue" + r"s?\s*#?\s*\d+", re.I)
WORK_PERIOD = re.compile(r"\b" + "sess" + r"ions?\b", re.I)


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / name for name in out.splitlines() if (ROOT / name).is_file()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # a binary file


@pytest.mark.parametrize(
    "pattern, what",
    [
        (OUTSIDE, "a path outside the repository"),
        (NUMBERED_ITEM, "a numbered work item"),
        (WORK_PERIOD, "a work period"),
    ],
    ids=["outside", "numbered", "period"],
)
def test_no_tracked_file_speaks_of_what_is_not_the_project(pattern, what):
    hits = []
    for path in _tracked():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, f"{what} in:\n" + "\n".join(hits)


def _markdown_sources() -> list[tuple[Path, str]]:
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md", ROOT / "examples" / "README.md"]
    pages += sorted((ROOT / "docs").glob("*.md"))
    out = [(p, p.read_text()) for p in pages if p.is_file()]
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        out.append((notebook, text))
    return out


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """A heading's anchor as GitHub and MyST write it: lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _broken_links(sources: list[tuple[Path, str]]) -> list[str]:
    broken = []
    for source, text in sources:
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are code
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # an external address (checked by no test: the tests run offline)
            path, _, section = target.partition("#")
            resolved = (source.parent / path).resolve()
            if not resolved.exists():
                broken.append(f"{source.name}: {target}")
            elif section and resolved.suffix == ".md":
                headings = re.findall(r"^#+\s+(.*)$", resolved.read_text(), re.M)
                if section not in {_anchor(h) for h in headings}:
                    broken.append(f"{source.name}: {target} (no such section)")
    return broken


def test_every_internal_link_names_a_file_and_section_that_exist():
    broken = _broken_links(_markdown_sources())
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_finds_a_missing_file_and_a_missing_section(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Somewhere\n[a](missing.md) [b](page.md#nowhere) [c](page.md#somewhere) [d](https://x.org)\n"
    )
    assert _broken_links([(page, page.read_text())]) == [
        "page.md: missing.md",
        "page.md: page.md#nowhere (no such section)",
    ]
    assert _anchor("The `svi` algorithm: segments") == "the-svi-algorithm-segments"
