"""Tap adapters through ComfyUI's real executor: stock loader -> TapTuneLoadAdapter -> KSampler -> VAEDecode."""

from __future__ import annotations

import json

import pytest
import torch

from devtools.workflows import ksampler
from taptune.adapter_core import TapAdapterSet, TapConfig
from taptune.adapter_core.file_format import save_adapter_file
from taptune.patching.model_access import model_architecture, model_sites

from .reference import write_tap_file
from .refusals import assert_pack_refusal, validation_refusal


def graph(ckpt, adapter=None, strength=1.0, sampler="euler", batch=1, cfg=5.0, seed=7):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks dog", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "6": ksampler(
            ["5", 0] if adapter else ["1", 0],
            ["2", 0],
            ["3", 0],
            ["4", 0],
            seed=seed,
            steps=3,
            cfg=cfg,
            sampler_name=sampler,
        ),
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    if adapter:
        prompt["5"] = {
            "class_type": "TapTuneLoadAdapter",
            "inputs": {"model": ["1", 0], "adapter_name": adapter, "strength": strength},
        }
    return prompt


@pytest.fixture()
def recipe_file(sd15, adapters_dir):
    """The paper's recipe (attn2o->ffni, mid_dim 60) with random non-zero weights, as the pack saves it."""
    model = sd15[0]
    tap_set = TapAdapterSet.create(model_sites(model), TapConfig("attn2o", "ffni"), init="paper", seed=3)
    save_adapter_file(adapters_dir / "recipe.safetensors", tap_set.to_file(base=model_architecture(model)))
    return "recipe.safetensors"


@pytest.mark.parametrize("sampler,batch", [("euler", 1), ("dpmpp_2m", 3), ("ddim", 2)])
def test_sampling_with_adapter(host, sd15_checkpoint_name, recipe_file, sampler, batch):
    base = host.run(graph(sd15_checkpoint_name, sampler=sampler, batch=batch))
    adapted = host.run(graph(sd15_checkpoint_name, recipe_file, 1.0, sampler=sampler, batch=batch))
    zero = host.run(graph(sd15_checkpoint_name, recipe_file, 0.0, sampler=sampler, batch=batch))
    for result in (base, adapted, zero):
        assert result.success, result.error() or result.validation_error
    base_image, adapted_image, zero_image = (r.output("7") for r in (base, adapted, zero))
    assert base_image.shape == (batch, 64, 64, 3)
    assert (adapted_image - base_image).abs().max() > 1e-3
    assert torch.equal(zero_image, base_image)
    # The UI got the preview and the progress bar moved.
    assert adapted.ui["outputs"]["8"]["images"]
    # Running the base graph again after the adapter gives the same image: nothing leaked.
    again = host.run(graph(sd15_checkpoint_name, sampler=sampler, batch=batch, seed=7))
    assert torch.equal(again.output("7"), base_image)


def bad_file(folder, name, group, tensors=None, **extra):
    write_tap_file(
        folder / name,
        [group],
        tensors or {"input_blocks.1.1.transformer_blocks.0.tap.down.weight": torch.zeros(4, 320)},
        **extra,
    )


@pytest.mark.parametrize(
    "case,expected",
    [
        ("unknown_position", "unknown din 'attn3o'"),
        ("forbidden_pair", "dout 'attn1i' comes before din 'ffno'"),
        ("truncated", "truncated or corrupt"),
        ("other_architecture", "was made for SDXL"),
        ("wrong_widths", "made for width 640 at attn2o but this model has 320"),
        ("not_taptune", "not a TapTune adapter file"),
        ("missing_file", "no adapter file 'nothing.safetensors'"),
    ],
)
def test_bad_adapter_files_give_clear_errors(host, sd15, sd15_checkpoint_name, adapters_dir, case, expected):
    block = "input_blocks.1.1.transformer_blocks.0"
    group = {"din": "attn2o", "dout": "ffni", "mid_dim": 4, "method": "relu", "scale": 1.0, "modules": [block]}
    good = {
        f"{block}.tap.down.weight": torch.zeros(4, 320),
        f"{block}.tap.down.bias": torch.zeros(4),
        f"{block}.tap.up.weight": torch.zeros(320, 4),
        f"{block}.tap.up.bias": torch.zeros(320),
    }
    name = f"{case}.safetensors"
    if case == "unknown_position":
        bad_file(adapters_dir, name, {**group, "din": "attn3o"}, good)
    elif case == "forbidden_pair":
        bad_file(adapters_dir, name, {**group, "din": "ffno", "dout": "attn1i"}, good)
    elif case == "truncated":
        bad_file(adapters_dir, "whole.safetensors", group, good)
        data = (adapters_dir / "whole.safetensors").read_bytes()
        (adapters_dir / name).write_bytes(data[: len(data) // 2])
    elif case == "other_architecture":
        base = {"family": "SDXL", "model_channels": 320, "context_dim": 2048}
        bad_file(adapters_dir, name, group, good, base=base)
    elif case == "wrong_widths":
        wrong = {k: torch.zeros(*[640 if s == 320 else s for s in v.shape]) for k, v in good.items()}
        bad_file(adapters_dir, name, group, wrong)
    elif case == "not_taptune":
        from safetensors.torch import save_file

        save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(adapters_dir / name))
    else:
        name = "nothing.safetensors"
    result = host.run(graph(sd15_checkpoint_name, name))
    refused_early = validation_refusal(result.validation_node_errors, "5", "adapter_name")
    if case == "missing_file" and refused_early is not None:
        # Newer ComfyUI checks combo values itself: refused before the node runs, naming the input.
        assert refused_early["type"] == "value_not_in_list"
        assert name in str(refused_early.get("details", "")) + refused_early.get("message", "")
    else:
        assert refused_early is None, refused_early
        assert not result.success
        assert_pack_refusal(result.error(), "TapTuneLoadAdapter", "adapter_name", expected)
    # ComfyUI keeps serving: the next prompt runs.
    assert host.run(graph(sd15_checkpoint_name)).success


def test_file_format_contract(sd15, adapters_dir):
    """A saved file carries the documented metadata and tensor names."""
    from safetensors import safe_open

    model = sd15[0]
    tap_set = TapAdapterSet.create(model_sites(model), TapConfig("attn2o", "ffni", mid_dim=60))
    tap_set.add_group(model_sites(model), TapConfig("resi", "reso", mid_dim=8))
    path = adapters_dir / "contract.safetensors"
    save_adapter_file(
        path, tap_set.to_file(base=model_architecture(model), trigger_word="sks", steps=3, future_field={"x": 1})
    )
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["taptune"])
        keys = set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    assert header["format"] == "taptune/1" and header["kind"] == "tap"
    assert header["trigger_word"] == "sks" and header["steps"] == 3 and header["future_field"] == {"x": 1}
    assert header["base"]["family"] == "SD15" and header["base"]["context_dim"] == 768
    groups = {(g["din"], g["dout"]): g for g in header["adapters"]}
    assert groups[("attn2o", "ffni")]["mid_dim"] == 60
    block = "input_blocks.1.1.transformer_blocks.0"
    assert block in groups[("attn2o", "ffni")]["modules"]
    assert shapes[f"{block}.tap.down.weight"] == (60, 320) and shapes[f"{block}.tap.up.weight"] == (320, 60)
    assert shapes["input_blocks.1.0.tap.down.weight"] == (8, 320, 3, 3)
    assert shapes["input_blocks.1.0.tap.norm.weight"] == (320,)
    assert all(
        k.split(".tap.")[0] in groups[("attn2o", "ffni")]["modules"] + groups[("resi", "reso")]["modules"] for k in keys
    )


def test_adapter_info_reports_configuration_trigger_size_and_share(sd15, adapters_dir):
    from taptune.nodes.load_adapter import TapTuneAdapterInfo
    from taptune.patching.model_access import unet_parameter_count

    model = sd15[0]
    tap_set = TapAdapterSet.create(model_sites(model), TapConfig("attn2o", "ffni", mid_dim=60))
    save_adapter_file(
        adapters_dir / "info.safetensors",
        tap_set.to_file(base=model_architecture(model), trigger_word="sks", steps=400),
    )
    out = TapTuneAdapterInfo.execute("info.safetensors", model)
    (text,) = out.args
    share = 100.0 * tap_set.num_parameters() / unet_parameter_count(model)
    assert f"tap adapter, {tap_set.num_parameters():,} parameters" in text
    assert "attn2o->ffni mid_dim 60 relu scale 1.0" in text
    assert f"{share:.3f} %" in text
    assert "trigger_word: sks" in text and "steps: 400" in text
    assert out.ui.as_dict()["text"] == (text,)
