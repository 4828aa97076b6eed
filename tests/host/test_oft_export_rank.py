"""OFT exported at a rank (issue 19 §3): standard LoRA tensors that ComfyUI's stock loader reads.

The rank-r file must be what the truncated SVD of each weight difference says (Eckart-Young
error), ComfyUI's own ``LoraLoaderModelOnly`` must apply it as exactly that, a full-rank export
must agree with the ``.diff`` export, and rank 0 must stay today's ``.diff`` file.
"""

from __future__ import annotations

import json

import comfy.lora
import comfy.model_management
import comfy.utils
import pytest
import torch
from safetensors.torch import load_file, save_file

import nodes as comfy_nodes
from taptune.nodes.oft_interchange import TapTuneExportOFTAsLoRA

from .unet_io import fixed_inputs, relative_error, unet_output


def attention_projections(unet):
    """(path, in, out) of every attention projection, found without the pack's code."""
    out = []
    for name, module in unet.named_modules():
        leaf = name.rpartition(".")[2]
        if (leaf in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")) and (".attn1" in name or ".attn2" in name):
            out.append((name, module.weight.shape[1], module.weight.shape[0]))
    return out


def write_oft(path, unet, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = attention_projections(unet)
    tensors = {}
    for name, width, _ in layers:
        raw = torch.randn(4, width // 4, width // 4, generator=g) * scale
        tensors[f"{name}.oft.S"] = ((raw - raw.transpose(1, 2)) / 2).contiguous()
    header = {
        "format": "taptune/1",
        "kind": "oft",
        "adapters": [{"r": 4, "block_share": False, "coft": False, "eps": 6e-5, "modules": [n for n, _, _ in layers]}],
    }
    save_file(tensors, str(path), metadata={"taptune": json.dumps(header)})
    return layers


def export(model, rank, prefix, dtype="fp32"):
    inputs = {"model": model, "adapter_name": "oft.safetensors", "strength": 1.0, "filename_prefix": prefix}
    inputs["dtype"] = dtype
    if rank is not None:
        inputs["rank"] = rank
    (name,) = TapTuneExportOFTAsLoRA.execute(**inputs).args
    return name


def stock(model, lora_name):
    """ComfyUI's own LoraLoaderModelOnly node, at strength 1."""
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_name, 1.0)
    return patched


@pytest.fixture()
def oft_on_sd15(sd15, adapters_dir, base_dir):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    layers = write_oft(adapters_dir / "oft.safetensors", model.model.diffusion_model)
    return model, layers, base_dir / "models" / "loras"


def test_rank_zero_is_the_full_difference_export_and_rank_is_an_optional_input(oft_on_sd15):
    model, layers, loras = oft_on_sd15
    schema = TapTuneExportOFTAsLoRA.define_schema()
    (rank_input,) = [i for i in schema.inputs if i.id == "rank"]
    assert rank_input.optional and rank_input.default == 0 and rank_input.tooltip
    default = load_file(str(loras / export(model, None, "test/rank_default")))
    zero = load_file(str(loras / export(model, 0, "test/rank_zero")))
    assert sorted(default) == sorted(zero) == sorted(f"diffusion_model.{n}.diff" for n, _, _ in layers)
    for key in default:
        assert torch.equal(default[key], zero[key])


def test_rank_r_file_is_the_truncated_svd_in_kohya_names_that_the_stock_loader_maps(oft_on_sd15):
    model, layers, loras = oft_on_sd15
    rank = 8
    diffs = load_file(str(loras / export(model, 0, "test/rank_ref")))
    lowrank = load_file(str(loras / export(model, rank, "test/rank8")))
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    assert len(lowrank) == 3 * len(layers)
    diffusers_names = {v: k for k, v in comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items()}
    for name, width, out in layers:
        kohya = "lora_unet_" + diffusers_names[f"{name}.weight"][: -len(".weight")].replace(".", "_")
        assert key_map[kohya] == f"diffusion_model.{name}.weight"  # the stock loader's own map
        up, down = lowrank[f"{kohya}.lora_up.weight"], lowrank[f"{kohya}.lora_down.weight"]
        assert up.shape == (out, rank) and down.shape == (rank, width)
        assert float(lowrank[f"{kohya}.alpha"]) == rank
        diff = diffs[f"diffusion_model.{name}.diff"].double()
        singular = torch.linalg.svdvals(diff)
        tail = float(singular[rank:].square().sum().sqrt())  # Eckart-Young: the best rank-r error
        assert float((up.double() @ down.double() - diff).norm()) == pytest.approx(tail, rel=1e-3, abs=1e-6)
    # Every tensor is consumed by the stock loader (nothing left as "lora key not loaded").
    patches = comfy.lora.load_lora(lowrank, key_map, log_missing=False)
    assert len(patches) == len(layers)


def test_the_stock_loader_applies_the_rank_r_export_as_the_truncated_svd(oft_on_sd15):
    """``LoraLoaderModelOnly`` on a rank-r file = the base with ``W + SVD_r(diff)`` set directly;
    the error against the OFT model falls with the rank, and a full-rank file is the ``.diff`` file."""
    model, layers, loras = oft_on_sd15
    # The base weights, copied while the base itself is loaded: loading a patched clone patches
    # the shared module in place, so reading them later would read the last clone's weights.
    comfy.model_management.load_models_gpu([model])
    state = model.model.state_dict()
    originals = {
        f"diffusion_model.{layer}.weight": state[f"diffusion_model.{layer}.weight"].detach().double().clone()
        for layer, _, _ in layers
    }
    x, sigma, ctx, _ = fixed_inputs(768, seed=4, size=16)
    diffs = load_file(str(loras / export(model, 0, "test/full_ref")))
    base = unet_output(model, x, sigma, ctx)
    oft = unet_output(stock(model, export(model, 0, "test/full_ref2")), x, sigma, ctx)
    effect = float((oft - base).norm())
    assert effect / float(base.norm()) > 1e-3

    errors = {}
    for rank in (4, 32):
        got = unet_output(stock(model, export(model, rank, f"test/rank{rank}")), x, sigma, ctx)
        patches = {}
        for layer, _, _ in layers:
            key = f"diffusion_model.{layer}.weight"
            U, s, Vh = torch.linalg.svd(diffs[f"diffusion_model.{layer}.diff"].double(), full_matrices=False)
            approx = (U[:, :rank] * s[:rank]) @ Vh[:rank]
            patches[key] = ("set", ((originals[key] + approx).float(),))
        expected_model = model.clone()
        expected_model.add_patches(patches, 1.0)
        expected = unet_output(expected_model, x, sigma, ctx)
        assert relative_error(got, expected) < 1e-5
        errors[rank] = float((got - oft).norm()) / effect
    assert errors[32] < errors[4] < 1.0

    full = unet_output(stock(model, export(model, 768, "test/rank_full")), x, sigma, ctx)
    assert float((full - oft).norm()) / effect < 1e-4
