"""The documentation holds together: links resolve, the README's picture exists, the README installs what
CI installs, and the job-file reference names every key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from dydiff_earth.jobs import JobConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Linked ahead of time: written on another branch.
PENDING = {ROOT / "docs" / "scaling.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [m for m in LINK.findall(text) if not re.match(r"[a-z]+:", m) and not m.startswith("#")]


def test_relative_links_resolve() -> None:
    assert len(PAGES) >= 9
    broken = []
    for page in PAGES:
        for link in _links(page):
            target = (page.parent / link.split("#")[0]).resolve()
            if not target.exists() and target not in PENDING:
                broken.append(f"{page.relative_to(ROOT)} -> {link}")
    assert not broken, broken


def test_readme_shows_a_map_that_exists() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert images, "the README shows no picture"
    for image in images:
        data = (ROOT / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, image


def test_readme_installs_what_ci_installs() -> None:
    # .ci/run installs "exactly as the README says": the same extras, so the README's install runs the tests.
    pattern = re.compile(r"pip install (?:-q )?-e '\.\[([a-z,]+)\]'")
    readme = pattern.findall((ROOT / "README.md").read_text())
    ci = pattern.findall((ROOT / ".ci" / "run").read_text())
    assert readme and ci and set(readme) == set(ci), (readme, ci)
    assert "notebooks" in ci[0].split(","), "the notebook tests need nbclient and ipykernel"


def test_job_reference_names_every_key() -> None:
    text = (ROOT / "docs" / "jobs.md").read_text()
    missing = [f.name for f in dataclasses.fields(JobConfig) if f"| `{f.name}` |" not in text]
    assert not missing, f"docs/jobs.md lacks job-file keys {missing}"
