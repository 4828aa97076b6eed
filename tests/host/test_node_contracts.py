"""The documented contract of every node: an API prompt with only those inputs validates and runs.

Node IDs and the inputs the README's node table names are a public contract; every input added
later must have a default and be optional, so that a script or a shared API workflow written
against the contract keeps running. For each node this builds the smallest API prompt that
gives the node exactly its contract inputs (and its consumers only theirs), runs it through
ComfyUI's executor, and checks the schema: every required input is in the contract.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nodes
from devtools.demo_files import DEMO_IMAGES, DEMO_OFT, DEMO_TAP
from devtools.foreign_files import official_oft_dreambooth_state
from devtools.workflows import ksampler

from .test_official_import import write_official_folder

#: Each node's contract inputs, with values for the smallest run ("@x" links to the shared nodes below).
CONTRACT: dict[str, dict[str, object]] = {
    "TapTuneLoadAdapter": {"model": "@model", "adapter_name": DEMO_TAP, "strength": 0.5},
    "TapTuneAdapterInfo": {"adapter_name": DEMO_TAP},
    "TapTuneTapSpec": {"din": "attn2o", "dout": "ffni", "mid_dim": 4, "method": "relu", "scale": 1.0},
    "TapTuneOFTSpec": {"r": 4, "eps": 6e-5, "coft": True, "block_share": False},
    "TapTuneLoRASpec": {"rank": 2, "alpha": 2.0, "targets": "attention", "init": "kaiming", "learning_rate": 1e-4},
    "TapTuneClassImages": {
        "model": "@model",
        "clip": "@clip",
        "vae": "@vae",
        "class_prompt": "a photo of a dog",
        "count": 1,
        "seed": 3,
    },
    "TapTuneLoadImageFolder": {"folder": DEMO_IMAGES},
    "TapTuneDreamBoothTrain": {
        "model": "@model",
        "clip": "@clip",
        "vae": "@vae",
        "spec": "@spec",
        "instance_images": "@images",
        "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of a dog",
        "prior_loss_weight": 0.0,
        "steps": 1,
        "learning_rate": 1e-4,
        "batch_size": 1,
        "seed": 0,
    },
    "TapTuneSaveAdapter": {"adapter": "@adapter", "filename_prefix": "contract/adapter"},
    "TapTuneTrainingSettings": {},  # every input has a default (0.4.0)
    "TapTuneExportTrainingJob": {
        "ckpt_name": "CHECKPOINT",  # the test checkpoint's name, filled in by contract_prompt
        "model": "@model",
        "clip": "@clip",
        "vae": "@vae",
        "spec": "@spec",
        "instance_images": "@images",
        "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of a dog",
        "prior_loss_weight": 0.0,
        "steps": 1,
        "learning_rate": 1e-4,
        "batch_size": 1,
        "seed": 0,
    },
    "TapTuneImportOfficialAdapters": {
        "directory": "contract_official",
        "config": "",
        "filename_prefix": "contract/tap",
    },
    "TapTuneImportOFT": {
        "source": "contract_oft/pytorch_lora_weights.bin",
        "filename_prefix": "contract/oft",
        "layers_per_block": 1,
    },
    "TapTuneExportOFTAsLoRA": {
        "model": "@model",
        "adapter_name": DEMO_OFT,
        "strength": 1.0,
        "filename_prefix": "contract/lora",
        "dtype": "fp16",
    },
    "TapTuneImageGrid": {"images": "@images", "labels": "first\nsecond"},
    "TapTunePocketModel": {},
}

OUTPUT_OF = {"@model": ("ckpt", 0), "@clip": ("ckpt", 1), "@vae": ("ckpt", 2)}


def _shared(checkpoint: str) -> dict[str, dict]:
    """The stock loader and the pack nodes other contracts link to, each with its contract only."""

    def pack(node_id: str) -> dict:
        return {"class_type": node_id, "inputs": _inputs(node_id)}

    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "spec": pack("TapTuneTapSpec"),
        "images": pack("TapTuneLoadImageFolder"),
        "train": pack("TapTuneDreamBoothTrain"),
    }


def _inputs(node_id: str) -> dict:
    links = {**OUTPUT_OF, "@spec": ("spec", 0), "@images": ("images", 0), "@adapter": ("train", 1)}
    return {
        name: list(links[value]) if isinstance(value, str) and value.startswith("@") else value
        for name, value in CONTRACT[node_id].items()
    }


def _consumers(node_id: str, outputs: list[str]) -> dict[str, dict]:
    """Stock output nodes so that a node without UI output still runs (ComfyUI runs only what feeds an output)."""
    graph: dict[str, dict] = {}
    # A node that loads its own model (the pocket model) is sampled with its own CLIP and VAE.
    clip = [node_id, outputs.index("CLIP")] if "CLIP" in outputs else ["ckpt", 1]
    vae = [node_id, outputs.index("VAE")] if "VAE" in outputs else ["ckpt", 2]
    for index, kind in enumerate(outputs):
        if kind == "IMAGE":
            graph[f"preview{index}"] = {"class_type": "PreviewImage", "inputs": {"images": [node_id, index]}}
        elif kind == "MODEL":
            graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": clip}}
            graph["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
            graph["sample"] = ksampler(
                [node_id, index], ["pos", 0], ["pos", 0], ["latent", 0], seed=0, steps=1, cfg=1.0
            )
            graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": vae}}
            graph[f"preview{index}"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
        elif kind == "TAPTUNE_TRAINING_SETTINGS":
            train = dict(_inputs("TapTuneDreamBoothTrain"), settings=[node_id, index])
            graph["train"] = {"class_type": "TapTuneDreamBoothTrain", "inputs": train}
            graph["save"] = {"class_type": "TapTuneSaveAdapter", "inputs": _inputs("TapTuneSaveAdapter")}
        elif kind == "TAPTUNE_SPEC":
            train = dict(_inputs("TapTuneDreamBoothTrain"), spec=[node_id, index])
            graph["train"] = {"class_type": "TapTuneDreamBoothTrain", "inputs": train}
            graph["save"] = {"class_type": "TapTuneSaveAdapter", "inputs": _inputs("TapTuneSaveAdapter")}
    return graph


def contract_prompt(node_id: str, checkpoint: str) -> dict[str, dict]:
    """The smallest API prompt that runs ``node_id`` with its contract inputs only."""
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    prompt = _shared(checkpoint)
    prompt["node"] = {"class_type": node_id, "inputs": _inputs(node_id)}
    if prompt["node"]["inputs"].get("ckpt_name") == "CHECKPOINT":
        prompt["node"]["inputs"]["ckpt_name"] = checkpoint
    if not getattr(cls, "OUTPUT_NODE", False):
        prompt.update(_consumers("node", list(cls.RETURN_TYPES)))
    # Keep only what the node and its consumers reach (ComfyUI would run unreachable outputs too).
    needed, stack = set(), ["node"] + [k for k in prompt if k.startswith(("preview", "save"))]
    while stack:
        key = stack.pop()
        if key in needed:
            continue
        needed.add(key)
        stack += [v[0] for v in prompt[key]["inputs"].values() if isinstance(v, list)]
    return {k: v for k, v in prompt.items() if k in needed}


def test_the_contract_names_every_node_and_every_required_input():
    from taptune.nodes.extension import node_classes

    ids = {cls.GET_SCHEMA().node_id for cls in node_classes()}
    assert set(CONTRACT) == ids
    for node_id in ids:
        spec = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        required, optional = set(spec.get("required", {})), set(spec.get("optional", {}))
        assert required <= set(CONTRACT[node_id]), f"{node_id} requires inputs outside its contract"
        assert set(CONTRACT[node_id]) <= required | optional, f"{node_id} lost a contract input"


@pytest.fixture()
def contract_files(sd15, demo_files, base_dir: Path) -> None:
    import comfy.model_management

    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    write_official_folder(base_dir / "input" / "contract_official", model.model.diffusion_model, seed=2)
    oft_folder = base_dir / "input" / "contract_oft"
    oft_folder.mkdir(parents=True, exist_ok=True)
    state = official_oft_dreambooth_state("down_blocks.0.attentions.0", scale=0.02, seed=1)
    torch.save(state, oft_folder / "pytorch_lora_weights.bin")


@pytest.mark.parametrize("node_id", sorted(CONTRACT))
def test_a_prompt_with_only_the_contract_inputs_runs(host, sd15_checkpoint_name, contract_files, node_id):
    result = host.run(contract_prompt(node_id, sd15_checkpoint_name))
    assert result.success, result.error() or result.validation_error or result.validation_node_errors
    assert result.ui["outputs"], "the prompt's output nodes showed something"
