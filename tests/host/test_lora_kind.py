"""The LoRA kind on a real ComfyUI: trained by TapTune's DreamBooth run, saved by TapTune, and read by
ComfyUI's *stock* ``LoraLoaderModelOnly`` with the same result as ``TapTuneLoadAdapter``."""

from __future__ import annotations

import shutil
from pathlib import Path

import comfy.model_management
import folder_paths
import pytest
import torch
from safetensors import safe_open

import nodes as comfy_nodes
from taptune.adapter_core import load_adapter_set
from taptune.adapter_core.lora import LoRAAdapterSet, LoRAConfig, LoRASpec, kohya_name
from taptune.nodes.load_adapter import TapTuneLoadAdapter
from taptune.nodes.save_adapter import TapTuneSaveAdapter
from taptune.training.job_file import JobFileError, job_text, job_to_json, read_job
from taptune.training.run import run_dreambooth
from taptune.training.run_inputs import ImageSet, RunInputs

from .training_helpers import settings, smooth_image
from .unet_io import fixed_inputs, unet_output

SPEC = LoRASpec(LoRAConfig(rank=4, alpha=2.0, targets="attention_ff"), learning_rate=1e-2)


@pytest.fixture(scope="module")
def trained(sd15, base_dir: Path):
    """A LoRA trained by TapTune's run on the generated SD 1.x checkpoint, saved by TapTuneSaveAdapter."""
    model, clip, vae = sd15
    images = [smooth_image(i) for i in range(2)]
    inputs = RunInputs(
        ImageSet(images, "a photo of sks dog"),
        ImageSet([], "a photo of dog"),
        settings(steps=3, learning_rate=SPEC.learning_rate, batch_size=1),
    )
    result, adapter = run_dreambooth(model, clip, vae, SPEC, inputs)
    folder = base_dir / "models" / "adapters"
    folder.mkdir(parents=True, exist_ok=True)
    (name,) = TapTuneSaveAdapter.execute(adapter, "test_lora/trained").args
    loras = base_dir / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / name, loras / "taptune_trained_lora.safetensors")
    return result, name, folder / name, "taptune_trained_lora.safetensors"


def _stock(model, lora_name: str, strength: float):
    assert lora_name in folder_paths.get_filename_list("loras")
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_name, strength)
    return patched


def _ours(model, name: str, strength: float):
    (patched,) = TapTuneLoadAdapter.execute(model, name, strength).args
    return patched


def test_training_changed_the_lora_and_the_file_uses_standard_names(trained):
    result, _, path, _ = trained
    lora_set = result.adapter_set
    assert isinstance(lora_set, LoRAAdapterSet) and len(lora_set.layers) > 0
    assert result.steps_done == 3
    assert all(float(layer.up.abs().max()) > 0 for layer in lora_set.layers.values())  # up left zero: trained
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    first = next(iter(lora_set.layers))
    assert first.endswith("attn1.to_q")
    assert {f"{kohya_name(first)}.lora_down.weight", f"{kohya_name(first)}.lora_up.weight"} <= keys
    assert all(k.startswith("lora_unet_") for k in keys) and len(keys) == 3 * len(lora_set.layers)


def test_the_file_loads_back_bit_exact(trained, sd15):
    result, _, path, _ = trained
    _, loaded = load_adapter_set(path)
    assert isinstance(loaded, LoRAAdapterSet) and loaded.groups[0].config == SPEC.config
    original = result.adapter_set.tensors()
    again = loaded.tensors()
    assert set(again) == set(original)
    assert all(torch.equal(again[k], original[k]) for k in original)


def test_the_stock_lora_loader_reproduces_the_trained_model(trained, sd15):
    _, name, _, lora_name = trained
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    x, sigma, ctx, _ = fixed_inputs(768, seed=4, batch=1, size=8)
    base = unet_output(model, x, sigma, ctx)
    ours = unet_output(_ours(model, name, 1.0), x, sigma, ctx)
    stock = unet_output(_stock(model, lora_name, 1.0), x, sigma, ctx)
    effect = float((ours - base).abs().max())
    difference = float((stock - ours).abs().max())
    print(f"stock vs TapTune, strength 1: max |diff| {difference:.3g}; the LoRA's effect: max {effect:.3g}")
    assert effect > 1e-4
    assert difference <= 1e-6 * max(1.0, float(base.abs().max()))
    assert torch.equal(unet_output(model, x, sigma, ctx), base)  # the input MODEL is untouched


def _reference(model, lora_set: LoRAAdapterSet, strength: float):
    """The base MODEL with every adapted weight set to ``W + s * alpha / rank * up @ down`` in float64."""
    comfy.model_management.load_models_gpu([model])  # the shared module holds the base weights, not a clone's
    unet = model.model.diffusion_model
    patches = {}
    for path, layer in lora_set.layers.items():
        W = unet.get_submodule(path).weight.detach().double()
        merged = W + strength * layer.alpha / layer.rank * (layer.up.double() @ layer.down.double())
        patches[f"diffusion_model.{path}.weight"] = ("set", (merged.float(),))
    clone = model.clone()
    clone.add_patches(patches, 1.0)
    return clone


def test_strength_zero_is_the_base_exactly_and_plus_minus_one_as_specified(trained, sd15):
    result, name, _, lora_name = trained
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    x, sigma, ctx, _ = fixed_inputs(768, seed=5, batch=1, size=8)
    base = unet_output(model, x, sigma, ctx)
    assert torch.equal(unet_output(_ours(model, name, 0.0), x, sigma, ctx), base)
    outputs = {}
    for strength in (1.0, -1.0):
        got = unet_output(_ours(model, name, strength), x, sigma, ctx)
        expected = unet_output(_reference(model, result.adapter_set, strength), x, sigma, ctx)
        effect = (expected - base).norm()
        assert effect / base.norm() > 1e-5
        assert float((got - expected).norm() / effect) < 1e-3
        stock = unet_output(_stock(model, lora_name, strength), x, sigma, ctx)
        assert float((stock - got).abs().max()) <= 1e-6 * max(1.0, float(base.abs().max()))
        outputs[strength] = got
    # -1 undoes +1 to first order: the two effects point opposite ways.
    plus, minus = (outputs[1.0] - base).flatten(), (outputs[-1.0] - base).flatten()
    assert float(torch.nn.functional.cosine_similarity(plus, minus, dim=0)) < -0.9


def test_a_job_file_carries_a_lora_spec(tmp_path):
    spec = LoRASpec(LoRAConfig(rank=21, alpha=21.0, targets="all_linear", init="normal"), learning_rate=2e-3)
    entry = job_to_json(
        checkpoint="model.safetensors",
        spec=spec,
        instance_folder="photos",
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of dog",
        class_folder=None,
        settings=settings(steps=2),
        adapter="out/lora.safetensors",
    )
    assert entry["spec"] == {"kind": "lora", **{k: v for k, v in spec.to_json().items() if k != "kind"}}
    path = tmp_path / "job.json"
    path.write_text(job_text(entry))
    job = read_job(path)
    assert job.spec == spec and isinstance(job.spec, LoRASpec)
    entry["spec"]["config"]["rank"] = 0
    path.write_text(job_text(entry))
    with pytest.raises(JobFileError, match="rank") as info:
        read_job(path)
    assert info.value.input_name == "spec"
