"""The nodes' help pages (``web/docs/<NodeID>/en.md``) are what their schemas say, and the server serves them."""

from __future__ import annotations

import re

from devtools.node_docs import DOCS, NO_INPUTS, expected_pages


def test_every_help_page_is_current():
    pages = expected_pages()
    committed = set(DOCS.glob("*/en.md"))
    assert committed == set(pages), "run python -m devtools.node_docs"
    for path, text in pages.items():
        assert path.read_text() == text, f"{path.parent.name}'s help page is stale: run python -m devtools.node_docs"


def test_every_input_of_every_node_is_documented_with_a_tooltip():
    for path, text in expected_pages().items():
        inputs = re.findall(r"^- \*\*(\w+)\*\*: (.*)$", text.split("## Outputs")[0], flags=re.MULTILINE)
        assert inputs or NO_INPUTS in text, path  # a node without inputs says so
        for name, line in inputs:
            assert line.rstrip().endswith((".", ")")) and len(line.split(". ", 1)) == 2, (path.parent.name, name)


def test_every_help_page_says_when_to_use_the_node_and_what_to_connect():
    for path, text in expected_pages().items():
        assert "## When to use it" in text and "## What to connect" in text, path.parent.name
