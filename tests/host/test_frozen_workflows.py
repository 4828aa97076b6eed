"""Workflows saved with earlier versions keep loading: frozen copies of each release's examples.

``frozen_workflows/<version>/`` holds the example workflows as that version shipped them, never
edited. Each must still convert to an API prompt the way the front end does, name only
registered nodes, and pass ComfyUI's validation with this version's nodes (on the test
checkpoint and the demo adapters; nothing runs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import nodes
from devtools.comfy_host import ROOT
from devtools.workflows import CPU, EXAMPLES, GPU, resized, ui_to_api

FROZEN_ROOT = Path(__file__).parent / "frozen_workflows"
FROZEN = sorted(FROZEN_ROOT.glob("*/*.json"))
# A regex, not tomllib: the pack supports Python 3.10.
PACK_VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def test_every_release_has_frozen_examples():
    versions = {path.parent.name for path in FROZEN}
    assert {"0.1.0", PACK_VERSION} <= versions
    assert len([p for p in FROZEN if p.parent.name == "0.1.0"]) >= 5
    # This version's examples, frozen as shipped (a new version adds its folder beside them).
    for example in EXAMPLES.glob("*.json"):
        frozen = FROZEN_ROOT / PACK_VERSION / example.name
        assert frozen.is_file(), f"copy {example.name} to {frozen.parent} when releasing {PACK_VERSION}"
        assert json.loads(frozen.read_text())["nodes"], frozen


@pytest.mark.parametrize("path", FROZEN, ids=[f"{p.parent.name}/{p.stem}" for p in FROZEN])
def test_a_frozen_workflow_still_loads_converts_and_validates(path, host, sd15_checkpoint_name, demo_files):
    prompt = resized(ui_to_api(json.loads(path.read_text())), GPU, CPU)
    assert prompt
    for node in prompt.values():
        assert node["class_type"] in nodes.NODE_CLASS_MAPPINGS, node["class_type"]
        if node["inputs"].get("ckpt_name") == CPU.checkpoint:
            node["inputs"]["ckpt_name"] = sd15_checkpoint_name
    valid, error, node_errors = host.validate(prompt)
    assert valid, (error, node_errors)
    assert not node_errors
