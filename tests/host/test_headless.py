"""Headless runs of job files: a job exported from the graph trains to the node's very adapter, outside the executor."""

from __future__ import annotations

import json
from pathlib import Path

import folder_paths
import pytest
import torch
from safetensors.torch import load_file, save_file

import nodes
from devtools.workflows import ksampler
from headless.train import run_job
from taptune.adapter_core.errors import TapTuneError
from taptune.nodes.export_job import TapTuneExportTrainingJob, job_root

from .job_helpers import write_image_folder


def _graph(ckpt: str, folder: str) -> dict:
    """Class images, an image folder and a tap spec feeding both the training node and the export node."""
    run = {
        "model": ["1", 0],
        "clip": ["1", 1],
        "vae": ["1", 2],
        "spec": ["4", 0],
        "instance_images": ["3", 0],
        "instance_prompt": ["3", 1],
        "class_prompt": "a photo of dog",
        "class_images": ["2", 0],
        "prior_loss_weight": 1.0,
        "steps": 3,
        "learning_rate": 3e-3,
        "batch_size": 2,
        "seed": 4,
        "resolution": 64,
        "precision": "fp32",
    }
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {
            "class_type": "TapTuneClassImages",
            "inputs": {
                **{k: run[k] for k in ("model", "clip", "vae", "class_prompt")},
                "count": 2,
                "seed": 0,
                "steps": 2,
                "cfg": 5.0,
                "width": 64,
                "height": 64,
            },
        },
        "3": {"class_type": "TapTuneLoadImageFolder", "inputs": {"folder": folder, "require_captions": True}},
        "4": {
            "class_type": "TapTuneTapSpec",
            "inputs": {"din": "attn2o", "dout": "ffni", "mid_dim": 8, "method": "relu", "scale": 1.0},
        },
        "5": {"class_type": "TapTuneDreamBoothTrain", "inputs": run},
        "6": {"class_type": "TapTuneSaveAdapter", "inputs": {"adapter": ["5", 1], "filename_prefix": "node/dog"}},
        "7": {
            "class_type": "TapTuneExportTrainingJob",
            "inputs": {**run, "ckpt_name": ckpt, "filename_prefix": "headless/dog"},
        },
    }


def _sampling(model_ref: list, ckpt_ref: str = "1") -> dict:
    return {
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks dog", "clip": [ckpt_ref, 1]}},
        "21": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": [ckpt_ref, 1]}},
        "22": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "23": ksampler(model_ref, ["20", 0], ["21", 0], ["22", 0], seed=5, steps=3, cfg=5.0),
        "24": {"class_type": "VAEDecode", "inputs": {"samples": ["23", 0], "vae": [ckpt_ref, 2]}},
        "25": {"class_type": "PreviewImage", "inputs": {"images": ["24", 0]}},
    }


def test_a_job_exported_from_the_graph_trains_headless_to_the_nodes_adapter(
    host, sd15_checkpoint_name, adapters_dir, base_dir
):
    folder = write_image_folder(base_dir / "input" / "headless_dog", 2, first_seed=10)
    for i in range(2):
        (folder / f"img_{i}.txt").write_text(f"a photo of sks dog, view {i}")
    graph = _graph(sd15_checkpoint_name, "headless_dog")
    graph.update(_sampling(["5", 0]))
    exported = host.run(graph)
    assert exported.success, exported.error() or exported.validation_error

    job_name = exported.output("7")
    assert job_name == "taptune/jobs/headless/dog_00001/job.json"
    job_file = Path(folder_paths.get_output_directory()) / job_name
    entry = json.loads(job_file.read_text())
    assert entry["format"] == "taptune-job/1" and entry["class"]["folder"] == "class"
    assert sorted(p.name for p in (job_file.parent / "instance").iterdir()) == [
        "instance_00000.png",
        "instance_00001.png",
    ]
    assert Path(entry["output"]["adapter"]) == (adapters_dir / "headless" / "dog_00001.safetensors").resolve()
    assert not Path(entry["output"]["adapter"]).exists()  # the export trains nothing

    row = run_job(job_file)
    assert row["status"] == "done" and row["steps"] == 3 and row["trainable_parameters"] > 0

    # The same job and seed: the adapter of the node, tensor for tensor, bit for bit.
    by_node = load_file(str(adapters_dir / "node" / "dog_00001.safetensors"))
    headless = load_file(row["adapter"])
    assert set(by_node) == set(headless)
    for name, tensor in by_node.items():
        assert torch.equal(tensor, headless[name]), name

    # TapTuneLoadAdapter lists the file and loads it: sampling equals sampling with the node's MODEL.
    listed = nodes.NODE_CLASS_MAPPINGS["TapTuneLoadAdapter"].INPUT_TYPES()["required"]["adapter_name"]
    assert "headless/dog_00001.safetensors" in listed[1]["options"]
    loaded = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint_name}},
        "9": {
            "class_type": "TapTuneLoadAdapter",
            "inputs": {"model": ["1", 0], "adapter_name": "headless/dog_00001.safetensors", "strength": 1.0},
        },
    }
    loaded.update(_sampling(["9", 0]))
    again = host.run(loaded)
    assert again.success, again.error()
    assert torch.equal(again.output("24"), exported.output("24"))

    # Running the job again never replaces the adapter it wrote.
    with pytest.raises(TapTuneError, match="never replaces"):
        run_job(job_file)


def _export_inputs(sd15, checkpoint: str, **changes) -> dict:
    model, clip, vae = sd15
    values = {
        "ckpt_name": checkpoint,
        "model": model,
        "clip": clip,
        "vae": vae,
        "spec": nodes.NODE_CLASS_MAPPINGS["TapTuneTapSpec"].execute("attn2o", "ffni", 4, "relu", 1.0).result[0],
        "instance_images": torch.rand(1, 64, 64, 3),
        "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of dog",
        "prior_loss_weight": 0.0,
        "steps": 2,
        "learning_rate": 1e-3,
        "batch_size": 1,
        "seed": 0,
        "filename_prefix": "hostile/job",
        **changes,
    }
    return {k: [v] for k, v in values.items()}  # is_input_list: every input arrives as a list


@pytest.mark.parametrize(
    "changes,input_name",
    [
        ({"ckpt_name": "../../../etc/passwd"}, "ckpt_name"),
        ({"ckpt_name": "other.safetensors"}, "ckpt_name"),
        ({"filename_prefix": "../../outside"}, "filename_prefix"),
        ({"filename_prefix": "a\x00b"}, "filename_prefix"),
        ({"steps": float("nan")}, "steps"),
        ({"instance_prompt": 7}, "instance_prompt"),
        ({"prior_loss_weight": 1.0}, "class_images"),
        ({"spec": "not a spec"}, "spec"),
        ({"model": "@patched"}, "model"),
    ],
    ids=[
        "ckpt outside",
        "ckpt of other weights",
        "prefix outside",
        "prefix NUL",
        "steps NaN",
        "prompt not text",
        "no class images",
        "spec not a spec",
        "patched model",
    ],
)
def test_hostile_export_inputs_are_the_nodes_errors_and_write_nothing(
    sd15, sd15_checkpoint_name, base_dir, adapters_dir, changes, input_name
):
    first = next(iter(sd15[0].model.diffusion_model.named_parameters()))
    other = base_dir / "models" / "checkpoints" / "other.safetensors"
    save_file({f"model.diffusion_model.{first[0]}": torch.zeros_like(first[1])}, str(other))
    if changes.get("model") == "@patched":
        patched = sd15[0].clone()
        patched.add_object_patch("diffusion_model.out", torch.nn.Identity())
        changes = {"model": patched}
    before = sorted(job_root().rglob("*")) if job_root().exists() else []
    with pytest.raises(TapTuneError) as caught:
        TapTuneExportTrainingJob.execute(**_export_inputs(sd15, sd15_checkpoint_name, **changes))
    assert caught.value.input_name == input_name, str(caught.value)
    assert f"TapTuneExportTrainingJob: input '{input_name}'" in str(caught.value)
    assert str(base_dir) not in str(caught.value)  # never a server path
    assert (sorted(job_root().rglob("*")) if job_root().exists() else []) == before
    assert not (base_dir / "outside_00001").exists() and list(adapters_dir.rglob("*.safetensors")) == []
