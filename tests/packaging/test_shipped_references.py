"""What a shipped node tells a user names only what a Registry install has (issue 20 §5).

The published archive leaves out ``devtools/``, ``headless/``, ``bench/`` and ``tests/``
(``.comfyignore``). A message, tooltip, description or help page of a shipped file that
sends the user to one of them must say, in the same text, that it is not part of the
published pack (and where it is). Docstrings and comments are for developers and are not
checked; every other string literal of shipped Python code is, and every shipped help page.
"""

from __future__ import annotations

import ast
import re

from .test_publishing import ROOT, published_files

#: Folders of the repository the published archive leaves out.
UNPUBLISHED = ("devtools", "headless", "bench", "tests")
REFERENCE = re.compile(r"\b(?:python -m |torchrun [^`]*-m )?(" + "|".join(UNPUBLISHED) + r")[./]\w+")
SAYS_SO = "not part of the published pack"


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(p.value if isinstance(p, ast.Constant) else "{…}" for p in node.values)
    return None


def user_texts() -> list[tuple[str, str]]:
    """(where, text) of every non-docstring string literal of shipped Python code and every shipped help page."""
    texts = []
    for name in published_files():
        path = ROOT / name
        if name.endswith(".py"):
            tree = ast.parse(path.read_text())
            skip = _docstrings(tree)
            parts_of_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
            for node in ast.walk(tree):
                text = _literal_text(node)
                if text is not None and id(node) not in skip and id(node) not in parts_of_fstrings:
                    texts.append((f"{name}:{node.lineno}", text))
        elif name.startswith("web/docs/") and name.endswith(".md"):
            texts.append((name, path.read_text()))
    return texts


def test_no_shipped_message_sends_a_user_to_unpublished_code():
    bad = [
        f"{where}: {match.group(0)!r}"
        for where, text in user_texts()
        for match in REFERENCE.finditer(text)
        if SAYS_SO not in text
    ]
    assert not bad, "\n".join(bad)


def test_the_export_node_says_where_the_launcher_is():
    texts = [text for where, text in user_texts() if where.startswith("nodes/export_job.py")]
    telling = [t for t in texts if "headless.train" in t]
    assert len(telling) >= 2  # the node's description and its result message
    assert all(SAYS_SO in t and "source repository" in t for t in telling)


def test_the_check_finds_a_reference():
    assert REFERENCE.search("train it with `python -m devtools.train_pocket`")
    assert REFERENCE.search("see headless/train.py")
    assert not REFERENCE.search("the pack's pocket/weights/ folder")
