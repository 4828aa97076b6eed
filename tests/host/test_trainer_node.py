"""The trainer a person can read (issue 20 §2, §3), through ComfyUI's real executor.

Few widgets on TapTuneDreamBoothTrain, the rest on TapTune Training Settings; the learning rate a
visible choice; the values a run used in its text and its file; the loss for ComfyUI's own
Plot Loss Graph (stock ``LossGraphNode``); numbered adapters while training (bounded); Cancel
that stops the prompt after writing a resumable checkpoint and a loadable adapter.
"""

from __future__ import annotations

import json
import re

import comfy.model_management
import pytest
from safetensors import safe_open

import nodes
from taptune.nodes.train import LEARNING_RATES, LR_SPEC, MOVED, learning_rate_value, training_settings
from taptune.nodes.training_settings import settings_defaults

from .test_training_workflow import dog_folder, sampling, training_graph  # noqa: F401  (dog_folder: a fixture)

FOLDER = "dog"  # what the dog_folder fixture makes

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widgets(node_type: str) -> list[str]:
    spec = nodes.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
    return [
        name
        for section in ("required", "optional")
        for name, value in spec.get(section, {}).items()
        if isinstance(value[0], list) or value[0] in WIDGET_TYPES
    ]


def test_the_trainer_shows_what_most_runs_change_and_the_settings_node_the_rest():
    trainer = _widgets("TapTuneDreamBoothTrain")
    # The widgets of 0.1.0-0.3.0 up to resolution, in their order (saved workflows match them by position).
    assert trainer == [
        "instance_prompt",
        "class_prompt",
        "prior_loss_weight",
        "steps",
        "learning_rate",
        "batch_size",
        "seed",
        "resolution",
    ]
    inputs = nodes.NODE_CLASS_MAPPINGS["TapTuneDreamBoothTrain"].INPUT_TYPES()
    assert "settings" in inputs["optional"] and len(inputs["required"]) + len(inputs["optional"]) <= 15
    settings = set(_widgets("TapTuneTrainingSettings"))
    assert set(MOVED) <= settings and {"save_every", "keep_last"} <= settings


def test_the_learning_rate_is_a_visible_choice_and_old_numbers_still_work():
    options = nodes.NODE_CLASS_MAPPINGS["TapTuneDreamBoothTrain"].INPUT_TYPES()["required"]["learning_rate"]
    choices = options[0] if isinstance(options[0], list) else options[1]["options"]
    assert choices == list(LEARNING_RATES) and options[1]["default"] == LR_SPEC and "1e-4" in LR_SPEC
    assert learning_rate_value(LR_SPEC) is None and learning_rate_value("2e-3") == 2e-3
    assert learning_rate_value(0.0) is None and learning_rate_value(3e-3) == 3e-3  # workflows before 0.4
    train = nodes.NODE_CLASS_MAPPINGS["TapTuneDreamBoothTrain"]
    assert train.validate_inputs(learning_rate=[0.0]) is True
    assert "is not one of" in train.validate_inputs(learning_rate=["fast please"])


def test_moved_inputs_of_an_old_prompt_are_honoured_unless_settings_are_connected():
    values = {"steps": 10, "learning_rate": LR_SPEC}
    settings, _ = training_settings(values, legacy={"checkpoint_every": 5, "validation_every": 2})
    assert settings.checkpoint_every == 5 and settings.validation_every == 2
    connected = {**values, "settings": settings_defaults()}
    settings, _ = training_settings(connected, legacy={"checkpoint_every": 5})
    assert settings.checkpoint_every == 0


@pytest.mark.usefixtures("dog_folder")
def test_the_run_reports_what_it_used_and_the_stock_loss_graph_draws_its_loss(host, sd15_checkpoint_name, adapters_dir):
    prompt = training_graph(sd15_checkpoint_name, FOLDER, steps=3)
    prompt["8"] = {"class_type": "LossGraphNode", "inputs": {"loss": ["5", 3], "filename_prefix": "test/loss"}}
    result = host.run(prompt)
    assert result.success, result.error() or result.validation_error
    loss_map = result.output("5", 3)
    assert len(loss_map["loss"]) == 3
    assert result.ui["outputs"]["8"]["images"]  # ComfyUI's own node drew it
    summary = result.output("5", 4)
    assert re.search(r"3 steps at learning rate 0\.003, batch 1 x 1 accumulation, float32, [\d,]+ trainable", summary)
    assert summary in result.ui["outputs"]["5"]["text"]
    with safe_open(str(adapters_dir / "test/dog_00001.safetensors"), framework="pt") as f:
        run = json.loads(f.metadata()["taptune"])["run"]
    assert run["learning_rate"] == 3e-3 and run["steps"] == 3 and run["batch_size"] == 1
    assert run["precision"] == "float32" and run["trainable_parameters"] > 0


def _steps_folder(adapters_dir):
    return adapters_dir / "taptune" / "steps"


@pytest.mark.usefixtures("dog_folder")
def test_save_every_writes_numbered_adapters_that_load_and_keeps_the_last_k(host, sd15_checkpoint_name, adapters_dir):
    before = set(_steps_folder(adapters_dir).glob("*.safetensors"))
    prompt = training_graph(sd15_checkpoint_name, FOLDER, steps=5, validation_every=0)
    prompt["30"] = {"class_type": "TapTuneTrainingSettings", "inputs": {**settings_defaults(), "save_every": 1}}
    prompt["30"]["inputs"]["keep_last"] = 2
    prompt["5"]["inputs"]["settings"] = ["30", 0]
    result = host.run(prompt)
    assert result.success, result.error() or result.validation_error
    written = sorted(set(_steps_folder(adapters_dir).glob("*.safetensors")) - before)
    assert [p.name[-22:] for p in written] == ["_step00003.safetensors", "_step00004.safetensors"]
    name = written[-1].relative_to(adapters_dir).as_posix()
    listed = nodes.NODE_CLASS_MAPPINGS["TapTuneLoadAdapter"].INPUT_TYPES()["required"]["adapter_name"]
    assert name in (listed[0] if isinstance(listed[0], list) else listed[1]["options"])
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint_name}},
        "2": {"class_type": "TapTuneLoadAdapter", "inputs": {"model": ["1", 0], "adapter_name": name, "strength": 1.0}},
    }
    graph.update(sampling(["2", 0], "1"))
    loaded = host.run(graph)
    assert loaded.success, loaded.error()


@pytest.mark.usefixtures("dog_folder")
def test_cancel_stops_the_prompt_after_writing_a_checkpoint_and_an_adapter(
    host, sd15_checkpoint_name, adapters_dir, base_dir
):
    before = set(_steps_folder(adapters_dir).glob("*.safetensors"))
    saved_before = set((adapters_dir / "test").glob("dog_*.safetensors"))

    def press_cancel(node_id, value, total):
        if node_id == "5" and value == 2:
            comfy.model_management.interrupt_current_processing(True)

    host.on_progress = press_cancel
    try:
        result = host.run(training_graph(sd15_checkpoint_name, FOLDER, steps=20, validation_every=0))
    finally:
        host.on_progress = None
    assert not result.success
    assert any(event == "execution_interrupted" for event, _ in result.status)
    # The rest of the prompt did not run: no Save Adapter file, no sample.
    assert set((adapters_dir / "test").glob("dog_*.safetensors")) == saved_before
    written = sorted(set(_steps_folder(adapters_dir).glob("*.safetensors")) - before)
    assert len(written) == 1 and written[0].name.endswith("_step00002.safetensors")
    with safe_open(str(written[0]), framework="pt") as f:
        header = json.loads(f.metadata()["taptune"])
    assert header["steps"] == 2 and header["cancelled_at_step"] == 2
    checkpoints = sorted((base_dir / "output" / "taptune" / "checkpoints").rglob("step_000002.ckpt"))
    assert checkpoints, "no resumable checkpoint of the last completed step"
    # The next prompt runs normally.
    again = host.run(training_graph(sd15_checkpoint_name, FOLDER, steps=2, validation_every=0))
    assert again.success, again.error()


@pytest.mark.parametrize("name", sorted(settings_defaults()))
def test_every_setting_has_a_visible_default(name):
    assert settings_defaults()[name] is not None
