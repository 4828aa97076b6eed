"""Job files (taptune-job/1) on their own: specs and settings round trip, hostile files name the field at fault.

No ComfyUI here: reading and writing a job is plain JSON, the pack's specs and TrainSettings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taptune.adapter_core import OFTConfig, OFTSpec, TapConfig, TapGroupSpec, TapSpec
from taptune.training.job_file import (
    JobFileError,
    job_to_json,
    read_job,
    settings_from_json,
    settings_to_json,
    spec_from_json,
    spec_to_json,
)
from taptune.training.settings import TrainSettings
from taptune.training.sync import SingleProcess, even_shard

SPECS = [
    TapSpec((TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=60)),)),
    TapSpec(
        (
            TapGroupSpec(TapConfig("attn1i", "attn2i", mid_dim=8, method="silu", scale=0.5), ("input.1",), "paper"),
            TapGroupSpec(TapConfig("resi", "reso", mid_dim=4)),
        ),
        learning_rate=3e-4,
    ),
    OFTSpec(OFTConfig(r=4, coft=True, eps=6e-5)),
    OFTSpec(OFTConfig(r=None, block_size=8, block_share=True, coft=False), ("to_q", "to_v"), 5, 7, 1e-5),
]


@pytest.mark.parametrize("spec", SPECS, ids=["tap", "tap two groups", "coft", "oft block_size"])
def test_a_spec_survives_its_json(spec):
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec


def test_settings_survive_their_json_and_the_paths_stay_out():
    settings = TrainSettings(
        steps=7, learning_rate=None, optimizer="sgd", gradient_checkpointing=True, seed=2**40, prior_target="base_model"
    )
    entry = json.loads(json.dumps(settings_to_json(settings)))
    assert "checkpoint_dir" not in entry and "resume_from" not in entry
    assert settings_from_json(entry, "/c", "/r") == TrainSettings(
        **{**settings.__dict__, "checkpoint_dir": "/c", "resume_from": "/r"}
    )


def _job(tmp_path: Path, **changes) -> Path:
    entry = job_to_json(
        checkpoint="/models/sd15.safetensors",
        spec=SPECS[0],
        instance_folder="instance",
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of dog",
        class_folder="class",
        settings=TrainSettings(steps=3, checkpoint_dir="checkpoints"),
        adapter="out/dog.safetensors",
    )
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            entry[section][field] = value
        elif value is None:
            del entry[section]
        else:
            entry[section] = value
    path = tmp_path / "job.json"
    path.write_text(json.dumps(entry) if not isinstance(changes.get("raw"), str) else changes["raw"])
    return path


def test_a_job_reads_back_with_paths_from_its_own_folder(tmp_path):
    job = read_job(_job(tmp_path))
    assert job.spec == SPECS[0] and job.settings.steps == 3
    assert job.instance_folder == tmp_path / "instance" and job.class_folder == tmp_path / "class"
    assert job.adapter == tmp_path / "out" / "dog.safetensors" and job.checkpoint == Path("/models/sd15.safetensors")
    assert job.settings.checkpoint_dir == str(tmp_path / "checkpoints") and job.settings.resume_from is None


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"format": "taptune-job/0"}, "format"),
        ({"spec": {"kind": "lora"}}, "spec"),
        ({"spec": {"kind": "tap", "groups": [{"config": {"din": "attn2o", "dout": "ffni", "mid_dim": -1}}]}}, "spec"),
        ({"spec": {"kind": "oft", "config": {"r": 4}, "magnitude_steps": True}}, "spec"),
        ({"settings__steps": "400"}, "steps"),
        ({"settings__gradient_checkpointing": 1}, "gradient_checkpointing"),
        ({"settings__speed": 11}, "settings"),
        ({"instance": None}, "instance"),
        ({"instance__folder": ""}, "instance"),
        ({"output": {"adapter": 5}}, "output"),
        ({"class": {"prompt": "a dog", "folder": "c", "generate": {"count": 4}}}, "class"),
        ({"class": {"prompt": "a dog", "generate": {"count": "many"}}}, "class"),
        ({"class": {"prompt": "a dog\na cat", "generate": {"count": 2}}}, "class"),
        ({"settings__prior_target": "teacher"}, "prior_target"),
    ],
    ids=[
        "format",
        "unknown kind",
        "bad tap config",
        "bool magnitude",
        "steps as text",
        "flag as number",
        "unknown setting",
        "no instance",
        "empty folder",
        "adapter not a path",
        "class twice",
        "generate count text",
        "generated from two prompts",
        "unknown prior target",
    ],
)
def test_a_hostile_job_names_the_field_at_fault(tmp_path, changes, field):
    with pytest.raises(JobFileError) as caught:
        read_job(_job(tmp_path, **changes))
    assert caught.value.input_name == field, str(caught.value)
    assert caught.value.file == str(tmp_path / "job.json")


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"format": NaN}', "[" * 10000, "\udcff"])
def test_a_job_that_is_not_json_is_refused_plainly(tmp_path, text):
    path = tmp_path / "job.json"
    path.write_text(text, errors="surrogateescape")
    with pytest.raises(JobFileError) as caught:
        read_job(path)
    assert caught.value.input_name == "format"


def test_a_missing_job_is_a_job_error(tmp_path):
    with pytest.raises(JobFileError, match="cannot be opened"):
        read_job(tmp_path / "nothing.json")


def test_the_single_process_sync_changes_nothing_and_shards_split_evenly():
    sync = SingleProcess()
    assert sync.shard(4) == slice(0, 4) and sync.average(2.5) == 2.5 and sync.writes_files
    rows = [list(range(8))[even_shard(8, rank, 4)] for rank in range(4)]
    assert rows == [[0, 1], [2, 3], [4, 5], [6, 7]]
