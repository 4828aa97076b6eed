"""The real server: ComfyUI's own loader finds the pack in custom_nodes/, and prompts run over HTTP."""

from __future__ import annotations

import json

import pytest

from devtools.workflows import CPU, EXAMPLES, GPU, resized, ui_to_api
from taptune.adapter_core import TapAdapterSet, TapConfig, save_adapter_file
from taptune.patching.model_access import model_architecture, model_sites

from .live_server import call, post_prompt, running_server, server_base, wait_for
from .refusals import assert_pack_refusal, validation_refusal


@pytest.fixture(scope="module")
def server(tmp_path_factory, sd15, sd15_checkpoint_name, base_dir):
    base = server_base(
        tmp_path_factory.mktemp("server-base"), base_dir / "models" / "checkpoints" / sd15_checkpoint_name
    )
    model = sd15[0]
    tap_set = TapAdapterSet.create(model_sites(model), TapConfig("attn2o", "ffni"), init="paper", seed=1)
    save_adapter_file(
        base / "models" / "adapters" / "taptune-demo-tap.safetensors", tap_set.to_file(base=model_architecture(model))
    )
    with running_server(base) as (port, _process):
        yield port, base


def test_loader_registers_every_node_with_descriptions_and_tooltips(server):
    port, base = server
    info = call(port, "/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("TapTune")}
    from taptune.nodes.extension import node_classes

    assert set(ours) == {cls.GET_SCHEMA().node_id for cls in node_classes()}
    for node_id, node in ours.items():
        assert node["category"].startswith("TapTune/"), node_id
        assert node["description"], node_id
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert (
        "taptune-demo-tap.safetensors" in ours["TapTuneLoadAdapter"]["input"]["required"]["adapter_name"][1]["options"]
    )
    assert "ComfyUI-TapTune" in (base / "server.log").read_text()


def test_example_workflow_runs_over_http_and_errors_do_not_stop_the_server(server, sd15_checkpoint_name):
    port, _ = server
    prompt = resized(ui_to_api(json.loads((EXAMPLES / "generate_with_adapter.json").read_text())), GPU, CPU)
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = sd15_checkpoint_name
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    bad = json.loads(json.dumps(prompt))
    for node in bad.values():
        if node["class_type"] == "TapTuneLoadAdapter":
            node["inputs"]["adapter_name"] = "missing.safetensors"
    loader_id = next(k for k, node in bad.items() if node["class_type"] == "TapTuneLoadAdapter")
    queued = post_prompt(port, bad)
    refused_early = validation_refusal(queued.get("node_errors", {}), loader_id, "adapter_name")
    if refused_early is not None:
        # Newer ComfyUI checks combo values before running: its refusal names node and input.
        assert refused_early["type"] == "value_not_in_list"
    else:
        failed = wait_for(port, queued["prompt_id"])
        assert failed["status"]["status_str"] == "error"
        error = next(m[1] for m in failed["status"]["messages"] if m[0] == "execution_error")
        assert_pack_refusal(error, "TapTuneLoadAdapter", "adapter_name", "no adapter file 'missing.safetensors'")
    done = wait_for(port, call(port, "/prompt", {"prompt": prompt})["prompt_id"])
    assert done["status"]["status_str"] == "success"
    images = [img for out in done["outputs"].values() for img in out.get("images", [])]
    assert images and images[0]["filename"].startswith("with_adapter")


def test_the_server_serves_every_nodes_help_page(server):
    import urllib.request

    from devtools.node_docs import expected_pages

    port, _ = server
    for path, text in expected_pages().items():
        url = f"http://127.0.0.1:{port}/extensions/ComfyUI-TapTune/docs/{path.parent.name}/en.md"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read().decode() == text
