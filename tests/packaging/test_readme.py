"""The README is a short guide whose every command and file exists (issue 20 §1, §6).

Every ``make X`` it names is a target of the Makefile, every ``python -m X`` a module of this
repository, every relative link and image a file (and every ``#anchor`` a heading of it), and
every path in backticks that starts in this repository exists. The reference pages the README
links to are checked the same way for their links.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.quality import DOC_PAGE, MARK_BEGIN, MARK_END, with_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: The reference pages made from the README's former sections (issue 20) and the guide's other links.
REFERENCE_PAGES = (
    "docs/nodes.md",
    "docs/design_space.md",
    "docs/file_format.md",
    "docs/pocket_world.md",
    "docs/benchmarks.md",
    "docs/development.md",
    "docs/compatibility.md",
)
MAX_LINES = 250


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def module_exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)}


def links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", page.read_text())


def check_links(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            problems.append(f"{page.name}: link to missing {target}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{page.name}: no heading for #{anchor} in {path.name}")
    return problems


def test_the_readme_is_a_short_guide_with_the_two_commands_first():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) < MAX_LINES, len(lines)
    first_screen = "\n".join(lines[:40])
    assert "make demo" in first_screen and "make test" in first_screen
    assert "![" in first_screen  # the picture of base vs adapted


def test_every_make_target_the_readme_names_exists():
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README.read_text()))
    assert {"demo", "test"} <= named
    assert named <= make_targets(), named - make_targets()


def test_every_module_the_readme_names_exists():
    for page in (README, *(ROOT / p for p in REFERENCE_PAGES)):
        for name in re.findall(r"python -m ([\w.]+)", page.read_text()):
            if not name.endswith("."):  # `python -m bench.<name>`: a placeholder
                assert module_exists(name), f"{page.name}: python -m {name}"


def test_every_link_of_the_readme_and_its_reference_pages_resolves():
    problems = [p for page in (README, *(ROOT / p for p in REFERENCE_PAGES)) for p in check_links(page)]
    assert not problems, "\n".join(problems)


def test_every_repository_path_in_backticks_exists():
    tops = {p.name for p in ROOT.iterdir() if not p.name.startswith(".git")} - {".demo", ".host", ".venv"}
    missing = []
    for code in re.findall(r"`([^`\n]+)`", README.read_text()):
        for word in code.split():
            named = word.split("/")[0] in tops and ("/" in word or "." in word)
            if named and not (ROOT / word.rstrip(".,;:)")).exists():
                missing.append(word)
    assert not missing, missing


def test_the_quality_table_lives_in_the_pocket_world_page():
    page = DOC_PAGE.read_text()
    assert DOC_PAGE == ROOT / "docs" / "pocket_world.md"
    assert MARK_BEGIN in page and MARK_END in page
    assert MARK_BEGIN not in README.read_text()
    replaced = with_table(page, "| new table |\n")
    assert "| new table |" in replaced and replaced.count(MARK_BEGIN) == 1
    with pytest.raises(SystemExit):
        with_table("no markers", "x")
