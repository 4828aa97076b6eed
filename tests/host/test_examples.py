"""Every example workflow (UI format) converts to an API prompt and runs on a real server's /prompt.

The committed examples carry what a GPU user with SD 1.5 starts from; the test alone makes them
small (the demo's files, tiny images, a few steps) before it queues them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.demo_files import (
    POCKET_IMAGES,
    POCKET_LORA,
    POCKET_OFT,
    POCKET_TAP,
    write_demo_files,
    write_pocket_demo_files,
)
from devtools.thumbnails import read_comment, thumbnail_comment
from devtools.workflows import (
    CPU,
    EXAMPLES,
    FRONTEND_ONLY,
    GPU,
    NOTES,
    POCKET,
    example_prompts,
    example_workflows,
    resized,
    ui_to_api,
)
from taptune.patching.model_access import model_architecture

from .cpu_sized import cpu_sized
from .live_server import call, post_prompt, running_server, server_base, wait_for

WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
NAMED_IN_THE_ISSUE = {
    "dreambooth_tap_attn2o_ffni",
    "dreambooth_coft",
    "generate_with_adapter",
    "stack_adapters",
    "compare_tap_points",
    "finetune_text_image_pairs",
}


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
    expected = example_workflows(GPU)
    assert {p.stem for p in WORKFLOWS} == set(expected) == NAMED_IN_THE_ISSUE == set(NOTES)
    for path in WORKFLOWS:
        assert _host_neutral(json.loads(path.read_text())) == _host_neutral(expected[path.stem]), (
            f"{path.name} is stale: run python -m devtools.workflows"
        )


def test_each_example_has_a_thumbnail_and_a_note():
    for path in WORKFLOWS:
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{path.name} has no {thumbnail.name}: run python -m devtools.thumbnails"
        assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumbnail.name} is not a JPEG"
        # An image the example's CPU variant saved, from the graph as it is now (not a picture of the wiring).
        assert read_comment(thumbnail) == thumbnail_comment(path.stem), (
            f"{thumbnail.name} does not come from the current graph: run python -m devtools.thumbnails"
        )
        notes = [n for n in json.loads(path.read_text())["nodes"] if n["type"] == "Note"]
        assert len(notes) == 1 and "Change:" in notes[0]["widgets_values"][0], path.name


def test_the_cpu_variant_is_the_same_graph_with_the_demo_files():
    """`make demo`'s variants come from the same source: only file names and sizes differ."""
    for stem, gpu in example_prompts(GPU).items():
        cpu = example_prompts(CPU)[stem]
        assert resized(gpu, GPU, CPU).keys() == cpu.keys()
        for key, node in resized(gpu, GPU, CPU).items():
            assert node["class_type"] == cpu[key]["class_type"]
            assert node["inputs"].keys() == cpu[key]["inputs"].keys()
        assert any(v == CPU.checkpoint for node in cpu.values() for v in node["inputs"].values())


def test_the_demo_variant_is_the_same_graph_on_the_pocket_model():
    """`make demo`'s variants: the checkpoint loader becomes TapTunePocketModel, files and prompts the pocket's."""
    for stem, gpu in example_prompts(GPU).items():
        pocket = example_prompts(POCKET)[stem]
        moved = resized(gpu, GPU, POCKET)
        assert moved.keys() == pocket.keys()
        for key, node in moved.items():
            assert node["class_type"] == pocket[key]["class_type"]
            assert node["inputs"].keys() == pocket[key]["inputs"].keys()
        types = [node["class_type"] for node in pocket.values()]
        assert "TapTunePocketModel" in types and "CheckpointLoaderSimple" not in types
        texts = [node["inputs"]["text"] for node in pocket.values() if node["class_type"] == "CLIPTextEncode"]
        assert "a photo of sks dog on the beach" not in texts and POCKET.sample_prompt in texts


@pytest.fixture(scope="module")
def example_server(tmp_path_factory, sd15, sd15_checkpoint_name, base_dir):
    import comfy.model_management

    base = server_base(
        tmp_path_factory.mktemp("examples-base"), base_dir / "models" / "checkpoints" / sd15_checkpoint_name
    )
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    write_demo_files(base, model.model.diffusion_model, model_architecture(model), image_size=64)
    with running_server(base) as (port, _process):
        yield port, base


def test_every_node_type_of_every_example_is_registered(example_server):
    port, _ = example_server
    registered = set(call(port, "/object_info"))
    for path in WORKFLOWS:
        types = {node["type"] for node in json.loads(path.read_text())["nodes"]}
        assert types - FRONTEND_ONLY <= registered, (path.name, types - FRONTEND_ONLY - registered)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_runs_on_the_server(example_server, sd15_checkpoint_name, path):
    port, base = example_server
    prompt = ui_to_api(json.loads(path.read_text()))
    assert prompt == example_prompts(GPU)[path.stem]  # the UI form round-trips to the same prompt
    # The same graph, only smaller: the demo's files on the test checkpoint, tiny images, a few steps.
    prompt = cpu_sized(resized(prompt, GPU, CPU))
    for node in prompt.values():
        if node["inputs"].get("ckpt_name") == CPU.checkpoint:
            node["inputs"]["ckpt_name"] = sd15_checkpoint_name
    _run_and_check(port, base, prompt)


def _run_and_check(port, base, prompt):
    """Queue ``prompt``: it succeeds, its images exist, and each Save Adapter node wrote one new file."""
    adapters_before = set((base / "models" / "adapters").rglob("*.safetensors"))
    queued = post_prompt(port, prompt)
    assert "prompt_id" in queued, queued
    done = wait_for(port, queued["prompt_id"], limit=600)
    errors = [m[1] for m in done["status"]["messages"] if m[0] == "execution_error"]
    assert done["status"]["status_str"] == "success" and not errors, errors
    images = [image for output in done["outputs"].values() for image in output.get("images", [])]
    assert images and all((base / image["type"] / image["subfolder"] / image["filename"]).is_file() for image in images)
    saves = [node for node in prompt.values() if node["class_type"] == "TapTuneSaveAdapter"]
    written = set((base / "models" / "adapters").rglob("*.safetensors")) - adapters_before
    # Numbered step adapters (save_every) go to taptune/steps/; each Save Adapter node wrote one file besides.
    steps = {path for path in written if "steps" in path.parent.parts}
    assert len(written - steps) == len(saves), written


@pytest.fixture(scope="module")
def pocket_demo_files(example_server):
    """What `make demo` makes for its variants: the subject's photos, two adapters trained on them, a LoRA."""
    _, base = example_server
    written = write_pocket_demo_files(base)
    assert set(written) == {POCKET_IMAGES, POCKET_LORA, POCKET_TAP, POCKET_OFT}
    assert write_pocket_demo_files(base) == []  # kept, not made again
    return base


@pytest.mark.parametrize("stem", sorted(NAMED_IN_THE_ISSUE))
def test_the_demo_variant_runs_on_the_pocket_model(example_server, pocket_demo_files, stem):
    port, base = example_server
    prompt = ui_to_api(example_workflows(POCKET)[stem])
    assert prompt == example_prompts(POCKET)[stem]  # what the Workflows sidebar holds round-trips
    _run_and_check(port, base, cpu_sized(prompt))


#: A training workflow saved by each release before the trainer moved its less-used inputs to
#: TapTune Training Settings (0.4.0): they load with the widget values the trainer still has, in
#: their saved positions, and run with the settings' defaults for the rest (docs/decisions.md).
FROZEN_TRAINING = {
    "0.1.0": "train_dreambooth_tap.json",
    "0.2.0": "dreambooth_tap_attn2o_ffni.json",
}


@pytest.mark.parametrize("version", sorted(FROZEN_TRAINING))
def test_a_frozen_training_workflow_still_runs(example_server, sd15_checkpoint_name, version):
    port, base = example_server
    frozen = Path(__file__).parent / "frozen_workflows" / version / FROZEN_TRAINING[version]
    prompt = cpu_sized(resized(ui_to_api(json.loads(frozen.read_text())), GPU, CPU))
    for node in prompt.values():
        if node["inputs"].get("ckpt_name") == CPU.checkpoint:
            node["inputs"]["ckpt_name"] = sd15_checkpoint_name
    trainer = next(node for node in prompt.values() if node["class_type"] == "TapTuneDreamBoothTrain")
    assert trainer["inputs"]["learning_rate"] == 0.0  # saved as a number: the spec's rate, still accepted
    _run_and_check(port, base, prompt)
