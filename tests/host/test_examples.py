"""Every example workflow (UI format) converts to an API prompt and runs in the real executor."""

from __future__ import annotations

import json

import pytest

from devtools.workflows import DEMO_CHECKPOINT, EXAMPLES, api_to_ui, example_prompts, ui_to_api

from .cpu_sized import cpu_sized

WORKFLOWS = sorted(EXAMPLES.glob("*.json"))


def _host_neutral(workflow: dict) -> dict:
    """``workflow`` without the unlinked outputs of stock nodes.

    Stock node definitions change between ComfyUI versions (newer ones give ``SaveImage`` and
    ``PreviewImage`` outputs); an unlinked output slot of a stock node carries nothing of the
    example, and the front end rebuilds slots from the running ComfyUI's definitions anyway.
    """
    workflow = json.loads(json.dumps(workflow))
    for node in workflow["nodes"]:
        if not node["type"].startswith("TapTune"):
            node["outputs"] = [slot for slot in node.get("outputs", []) if slot.get("links")]
    return workflow


def test_committed_examples_are_current():
    """example_workflows/ is what `python -m devtools.workflows` generates."""
    expected = {stem: api_to_ui(prompt, stem) for stem, prompt in example_prompts().items()}
    assert {p.stem for p in WORKFLOWS} == set(expected)
    for path in WORKFLOWS:
        assert _host_neutral(json.loads(path.read_text())) == _host_neutral(expected[path.stem]), (
            f"{path.name} is stale: run python -m devtools.workflows"
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_runs(path, host, sd15, sd15_checkpoint_name, adapters_dir, demo_files):
    prompt = ui_to_api(json.loads(path.read_text()))
    assert prompt == example_prompts()[path.stem]  # the UI form round-trips to the same prompt
    # The same graph, only smaller: CPU-sized images and a few steps.
    prompt = cpu_sized(prompt)
    for node in prompt.values():
        if node["inputs"].get("ckpt_name") == DEMO_CHECKPOINT:
            node["inputs"]["ckpt_name"] = sd15_checkpoint_name
    result = host.run(prompt)
    assert result.success, result.error() or result.validation_error
    assert any(out.get("images") for out in result.ui["outputs"].values())
