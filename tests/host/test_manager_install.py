"""Installed the way ComfyUI-Manager installs it: the real Manager's command line, offline.

``comfyui-manager`` from PyPI (in ``.host/manager-site``, put there by ``make test``) runs
``cm-cli install`` on a local git URL into a fresh copy of ComfyUI: it clones the repository
into ``custom_nodes/``, installs ``requirements.txt`` and would run an ``install.py``. That
ComfyUI is then started and must list every node of the pack with no import error in its log.
The repository installed is a snapshot of this working tree (what git would commit), so the
test checks the files as they are, not the last commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from devtools.comfy_host import COMFY_DIR, ROOT

from .live_server import call, running_server

MANAGER_SITE = ROOT / ".host" / "manager-site"
PACK_FOLDER = "ComfyUI-TapTune"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def snapshot_repository(target: Path) -> Path:
    """A bare git repository ``target`` holding this working tree's files (tracked and new, not ignored)."""
    work = target.parent / "snapshot"
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    _git("init", "-q", cwd=work)
    _git("add", "-A", cwd=work)
    _git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "-m", "snapshot", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(target), cwd=target.parent)
    return target


def fresh_comfyui(target: Path) -> Path:
    """A copy of the host's ComfyUI with no custom nodes, models or user data."""
    top_level = {".git", "custom_nodes", "models", "input", "output", "temp", "user", "tests", "tests-unit"}

    def left_out(folder: str, names: list[str]) -> set[str]:
        skipped = {"__pycache__"} & set(names)
        return skipped | (top_level & set(names) if Path(folder) == COMFY_DIR else set())

    shutil.copytree(COMFY_DIR, target, ignore=left_out)
    (target / "custom_nodes").mkdir()  # ComfyUI's own layout; the Manager clones into it
    return target


def test_the_manager_installs_the_pack_and_comfyui_loads_every_node(tmp_path):
    assert (MANAGER_SITE / "cm_cli").is_dir(), (
        "ComfyUI-Manager is not installed in .host/manager-site: `make test` (make manager) installs it from PyPI"
    )
    repository = snapshot_repository(tmp_path / f"{PACK_FOLDER}.git")
    comfy = fresh_comfyui(tmp_path / "ComfyUI")
    installed = subprocess.run(
        [sys.executable, "-m", "cm_cli", "install", f"file://localhost{repository}"],
        env={**os.environ, "COMFYUI_PATH": str(comfy), "PYTHONPATH": str(MANAGER_SITE)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = installed.stdout + installed.stderr
    assert installed.returncode == 0 and "Installation was successful" in output, output[-3000:]
    pack = comfy / "custom_nodes" / PACK_FOLDER
    assert (pack / "__init__.py").is_file() and (pack / ".git").is_dir(), sorted(p.name for p in pack.parent.iterdir())
    assert _git("status", "--porcelain", cwd=pack) == "", "the Manager's clone is the snapshot, unchanged"

    with running_server(comfy, comfy_dir=comfy) as (port, _process):
        listed = {name for name in call(port, "/object_info") if name.startswith("TapTune")}
    from taptune.nodes.extension import node_classes

    assert listed == {cls.GET_SCHEMA().node_id for cls in node_classes()}
    # ComfyUI's own optional nodes may fail to import here (no torchaudio); only the pack's lines count.
    log = (comfy / "server.log").read_text()
    pack_lines = [line for line in log.splitlines() if PACK_FOLDER in line or "taptune" in line.lower()]
    assert any(line.strip().endswith(f"custom_nodes/{PACK_FOLDER}") for line in pack_lines), pack_lines
    assert not [line for line in pack_lines if any(w in line.lower() for w in ("import failed", "error", "traceback"))]
