"""Training through ComfyUI's real executor: class images -> train -> save, then load and sample elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from devtools.workflows import ksampler
from taptune.training.class_image_cache import ClassImageSettings, generate_class_images

from .training_helpers import smooth_image


@pytest.fixture()
def dog_folder(base_dir: Path) -> str:
    """input/dog: three images with kohya-style captions."""
    folder = base_dir / "input" / "dog"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        array = (smooth_image(i).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"dog_{i}.png")
        (folder / f"dog_{i}.txt").write_text(f"a photo of sks dog, view {i}")
    return "dog"


def sampling(model_ref, ckpt_ref, seed=5):
    return {
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks dog", "clip": [ckpt_ref, 1]}},
        "21": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": [ckpt_ref, 1]}},
        "22": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "23": ksampler(model_ref, ["20", 0], ["21", 0], ["22", 0], seed=seed, steps=3, cfg=5.0),
        "24": {"class_type": "VAEDecode", "inputs": {"samples": ["23", 0], "vae": [ckpt_ref, 2]}},
        "25": {"class_type": "PreviewImage", "inputs": {"images": ["24", 0]}},
    }


def training_graph(ckpt, folder, steps=3, **train_inputs):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {
            "class_type": "TapTuneClassImages",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "class_prompt": "a photo of dog",
                "count": 2,
                "seed": 0,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "width": 64,
                "height": 64,
            },
        },
        "3": {
            "class_type": "TapTuneLoadImageFolder",
            "inputs": {"folder": folder, "resize_mode": "none", "resolution": 64, "require_captions": True},
        },
        "4": {
            "class_type": "TapTuneTapSpec",
            "inputs": {
                "din": "attn2o",
                "dout": "ffni",
                "mid_dim": 16,
                "method": "relu",
                "scale": 1.0,
                "blocks": "all",
                "block_list": "",
                "init": "zero_up",
            },
        },
        "5": {
            "class_type": "TapTuneDreamBoothTrain",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "spec": ["4", 0],
                "instance_images": ["3", 0],
                "instance_prompt": "a photo of sks dog",
                "class_prompt": "a photo of dog",
                "class_images": ["2", 0],
                "prior_loss_weight": 1.0,
                "steps": steps,
                "learning_rate": 3e-3,
                "batch_size": 1,
                "seed": 0,
                "resolution": 64,
                "validation_prompt": "a photo of sks dog",
                "validation_every": 2,
                "validation_steps": 2,
                **train_inputs,
            },
        },
        "6": {"class_type": "TapTuneSaveAdapter", "inputs": {"adapter": ["5", 1], "filename_prefix": "test/dog"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}},
    }
    prompt.update(sampling(["5", 0], "1"))
    return prompt


def test_train_save_load_sample(host, sd15_checkpoint_name, dog_folder, adapters_dir):
    host.progress.clear()
    trained = host.run(training_graph(sd15_checkpoint_name, dog_folder))
    assert trained.success, trained.error() or trained.validation_error
    saved = trained.ui["outputs"]["6"]["text"][0]
    name = "test/dog_00001.safetensors"
    assert name in saved and (adapters_dir / name).exists()
    with safe_open(str(adapters_dir / name), framework="pt") as f:
        header = json.loads(f.metadata()["taptune"])
    assert header["kind"] == "tap" and header["trigger_word"] == "sks" and header["class_word"] == "dog"
    assert header["steps"] == 3 and np.isfinite(header["final_loss"]) and header["base"]["family"] == "SD15"
    # Progress of the training node, with previews from the validation prompt.
    training_updates = [p for p in host.progress if p[0] == "5"]
    assert [p[1] for p in training_updates][-3:] == [1, 2, 3]
    assert any(p[3] is not None and p[3][0] == "JPEG" for p in training_updates)
    assert trained.output("5", 2).shape[-1] == 3  # the loss curve

    loaded = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint_name}},
        "9": {"class_type": "TapTuneLoadAdapter", "inputs": {"model": ["1", 0], "adapter_name": name, "strength": 1.0}},
    }
    loaded.update(sampling(["9", 0], "1"))
    again = host.run(loaded)
    assert again.success, again.error()
    assert torch.equal(again.output("24"), trained.output("24"))


def test_bad_training_input_names_the_node_and_input(host, sd15_checkpoint_name, dog_folder):
    graph = training_graph(sd15_checkpoint_name, dog_folder, class_prompt="")
    result = host.run(graph)
    assert not result.success
    error = result.error()
    assert error["node_type"] == "TapTuneDreamBoothTrain"
    assert "TapTuneDreamBoothTrain: input 'class_prompt': prior preservation is on" in error["exception_message"]
    follow = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint_name}}}
    follow.update(sampling(["1", 0], "1"))
    assert host.run(follow).success


def test_class_images_are_cached_on_disk(sd15, tmp_path):
    model, clip, vae = sd15
    settings = ClassImageSettings("a photo of dog", "", 2, 3, 2, 5.0, "euler", "normal", 64, 64)
    first, cached_first = generate_class_images(model, clip, vae, settings, tmp_path)
    calls = []
    second, cached_second = generate_class_images(
        model, clip, vae, settings, tmp_path, progress=lambda *a: calls.append(a)
    )
    assert (cached_first, cached_second) == (False, True)
    assert first.shape == (2, 64, 64, 3)
    assert (second - first).abs().max() <= 1 / 255 + 1e-6  # PNG round trip
    assert len(list(tmp_path.iterdir())) == 1
    other, cached_other = generate_class_images(
        model, clip, vae, ClassImageSettings(**{**settings.__dict__, "seed": 4}), tmp_path
    )
    assert not cached_other and len(list(tmp_path.iterdir())) == 2
    assert (other - first).abs().max() > 1e-3


def test_image_folder_refuses_partial_captions(base_dir):
    from taptune.nodes.common import NodeInputError
    from taptune.nodes.image_folder import TapTuneLoadImageFolder

    folder = base_dir / "input" / "partly"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.fromarray((smooth_image(i).numpy() * 255).round().astype(np.uint8)).save(folder / f"img_{i}.png")
    (folder / "img_1.txt").write_text("a photo of sks dog")
    with pytest.raises(
        NodeInputError, match=r"input 'folder': 2 of 3 images have no caption \.txt \(img_0\.png, img_2\.png\)"
    ):
        TapTuneLoadImageFolder.execute("partly", "none", 64, False)
    for i in (0, 2):
        (folder / f"img_{i}.txt").write_text(f"a photo of sks dog {i}")
    images, captions = TapTuneLoadImageFolder.execute("partly", "none", 64, True).args
    assert len(images) == 3 and captions.splitlines() == [
        "a photo of sks dog 0",
        "a photo of sks dog",
        "a photo of sks dog 2",
    ]
