"""What the Comfy Registry would publish, and whether its scanner would flag any of it.

``comfy node publish`` (comfy-cli) zips the files ``git ls-files`` lists, minus the patterns of
``.comfyignore`` (gitignore syntax), plus ``[tool.comfy] includes``. The Registry's scanner then
flags, in *any* shipped file (code, docs, JSON), subprocess use, environment reads, network
calls, dynamic execution and some URLs (raw GitHub content); a flagged version is never offered
as the latest. This test builds the same list (untracked files not ignored by git count too,
so a new file is checked before it is committed) and scans it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pathspec
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]

#: The scanner's rule families (as publishers have reported them), as text patterns.
FLAGGED = {
    "subprocess": re.compile(r"\bsubprocess\b"),
    "os.system / popen": re.compile(r"\bos\.(system|popen|exec\w*|spawn\w*)\s*\("),
    "environment read": re.compile(r"\bos\.environ\b|\bgetenv\s*\("),
    "network (urllib/requests/http)": re.compile(
        r"\burllib\.request\b|\brequests\.(get|post|put|request)\s*\(|\bhttp\.client\b"
    ),
    "network (sockets)": re.compile(r"\bsocket\.socket\s*\(|\baiohttp\.ClientSession\b"),
    "dynamic execution": re.compile(r"(?<![\w.])(eval|exec)\s*\(|\.eval\s*\(|__import__\s*\("),
    "raw GitHub content URL": re.compile(r"raw\.githubusercontent\.com"),
}


def published_files() -> list[str]:
    """The files an archive built by ``comfy node publish`` from this tree would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ignore_file = ROOT / ".comfyignore"
    spec = pathspec.PathSpec.from_lines("gitwildmatch", ignore_file.read_text().splitlines())
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = set(config["tool"]["comfy"].get("includes", []))
    files = [f for f in listed if (ROOT / f).is_file() and (not spec.match_file(f) or f in includes)]
    return sorted(set(files) | {f for f in includes if (ROOT / f).is_file()})


def test_the_archive_holds_the_pack_and_nothing_for_development():
    files = published_files()
    for needed in ("__init__.py", "nodes/extension.py", "adapter_core/registry.py", "LICENSE", "pyproject.toml"):
        assert needed in files
    assert any(f.startswith("example_workflows/") and f.endswith(".json") for f in files)
    for left_out in ("tests/", "devtools/", "bench/", "headless/", ".ci/", "Makefile"):
        assert not any(f.startswith(left_out) for f in files), left_out


def test_no_published_file_holds_what_the_scanner_flags():
    findings = []
    for name in published_files():
        data = (ROOT / name).read_bytes()
        if b"\x00" in data[:8192]:  # binary (weights, images): the scanner's text rules do not apply
            continue
        text = data.decode("utf-8", errors="replace")
        for rule, pattern in FLAGGED.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                findings.append(f"{name}:{line}: {rule}: {match.group(0)!r}")
    assert not findings, "\n".join(findings)


@pytest.mark.parametrize(
    "text,rule",
    [
        ("import subprocess", "subprocess"),
        ("x = os.environ['HOME']", "environment read"),
        ("urllib.request.urlopen(u)", "network (urllib/requests/http)"),
        ("model.eval()", "dynamic execution"),
        ("https://raw.githubusercontent.com/a/b", "raw GitHub content URL"),
    ],
)
def test_the_patterns_catch_what_they_are_for(text, rule):
    assert FLAGGED[rule].search(text)


def test_pyproject_has_what_the_registry_asks_for():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = config["project"], config["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", project["name"])
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (ROOT / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert any(c.startswith("License ::") for c in project["classifiers"])
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert isinstance(comfy["includes"], list)
    assert comfy["requires-comfyui"].startswith(">=0.3.75") and "<" not in comfy["requires-comfyui"]
    # The icon ships with the pack and is square.
    from PIL import Image

    assert comfy["Icon"].startswith(project["urls"]["Repository"] + "/")
    icon_file = re.search(r"/blob/main/([^?]+)", comfy["Icon"]).group(1)
    icon = ROOT / icon_file
    assert icon_file in published_files()
    with Image.open(icon) as picture:
        assert picture.size[0] == picture.size[1] >= 128
