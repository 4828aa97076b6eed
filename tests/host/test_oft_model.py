"""OFT/COFT on real ComfyUI MODELs: merged weights vs the specification (§2), training form, strengths, stacking, export."""

from __future__ import annotations

import json

import comfy.model_management
import comfy.sd
import comfy.utils
import pytest
import torch
from safetensors.torch import save_file

from devtools.checkpoints import SD2_SMALL, SD15_FULL, SDXL_SMALL
from devtools.foreign_files import official_oft_dreambooth_state
from devtools.workflows import ksampler
from taptune.adapter_core import OFTAdapterSet, OFTConfig, load_adapter_file, oft_targets
from taptune.adapter_core.oft.oft_import import diffusers_to_comfy_path
from taptune.nodes.load_adapter import TapTuneLoadAdapter
from taptune.nodes.oft_interchange import TapTuneExportOFTAsLoRA, TapTuneImportOFT
from taptune.patching.apply import adapter_set_for_model
from taptune.patching.model_access import model_view

from .plans import with_adapters, with_oft_training_form
from .reference import adapter_fn, random_tap_tensors, reference_hooks, rotated_weight, write_tap_file
from .unet_io import fixed_inputs, raw_output, relative_error, unet_output

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def attention_layers(unet):
    """(path, weight) of every attention projection, found without the pack's code."""
    out = []
    for name, module in unet.named_modules():
        leaf = name.rpartition(".")[2]
        is_projection = leaf in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")
        if is_projection and (".attn1" in name or ".attn2" in name):
            out.append((name, module.weight.detach().float().clone()))
    return out


def write_oft_file(path, unet, seed=0, scale=0.02):
    """Three groups as a third party would write them: r=4 per-block, shared blocks, and with magnitude."""
    g = torch.Generator().manual_seed(seed)
    layers = attention_layers(unet)
    groups = {"blocks": [], "shared": [], "magnitude": []}
    tensors, plan = {}, {}
    for i, (name, weight) in enumerate(layers):
        kind = list(groups)[i % 3]
        in_features = weight.shape[1]
        k = in_features // 4
        if kind == "shared":
            raw = torch.randn(k, k, generator=g) * scale
            S = (raw - raw.T) / 2
        else:
            raw = torch.randn(4, k, k, generator=g) * scale
            S = (raw - raw.transpose(1, 2)) / 2
        tensors[f"{name}.oft.S"] = S
        magnitude = None
        if kind == "magnitude":
            magnitude = 0.9 + 0.2 * torch.rand(weight.shape[0], generator=g)
            tensors[f"{name}.oft.magnitude"] = magnitude
        groups[kind].append(name)
        plan[name] = (weight, S, kind == "shared", magnitude)
    entries = [
        {"r": 4, "block_share": False, "coft": True, "eps": 6e-5, "modules": groups["blocks"]},
        {"r": 4, "block_share": True, "coft": False, "eps": 6e-5, "modules": groups["shared"]},
        {"r": 4, "block_share": False, "coft": True, "eps": 6e-5, "modules": groups["magnitude"]},
    ]
    header = {"format": "taptune/1", "kind": "oft", "adapters": entries}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"taptune": json.dumps(header)})
    return plan


def expected_model(model, plan, strength):
    """The base MODEL with each weight set to diag(m^s) W R(sS)^T, computed densely in float64 (stock 'set' patches)."""
    patches = {}
    for name, (weight, S, shared, magnitude) in plan.items():
        merged = rotated_weight(weight, S * strength, shared_r=4 if shared else None)
        if magnitude is not None:
            merged = merged * magnitude.double().pow(strength)[:, None]
        patches[f"diffusion_model.{name}.weight"] = ("set", (merged.float(),))
    clone = model.clone()
    clone.add_patches(patches, 1.0)
    return clone


@pytest.mark.parametrize("strength", [1.0, 0.5, -1.0])
def test_loaded_oft_matches_reference(sd15, adapters_dir, strength):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    plan = write_oft_file(adapters_dir / "oft.safetensors", model.model.diffusion_model)
    (ours,) = TapTuneLoadAdapter.execute(model, "oft.safetensors", strength).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=1)
    base = unet_output(model, x, sigma, ctx)
    got = unet_output(ours, x, sigma, ctx)
    expected = unet_output(expected_model(model, plan, strength), x, sigma, ctx)
    effect = (expected - base).norm()
    assert effect / base.norm() > 1e-3
    assert float((got - expected).norm() / effect) < 1e-3  # within 0.1 % of the rotation's own effect
    assert relative_error(got, expected) < 1e-5
    assert torch.equal(unet_output(model, x, sigma, ctx), base)


def test_strength_zero_is_the_base_model(sd15, adapters_dir):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    write_oft_file(adapters_dir / "oft.safetensors", model.model.diffusion_model)
    (zero,) = TapTuneLoadAdapter.execute(model, "oft.safetensors", 0.0).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=2)
    assert torch.equal(unet_output(zero, x, sigma, ctx), unet_output(model, x, sigma, ctx))


def test_a_loaded_oft_model_is_a_plain_model(sd15, adapters_dir):
    """Why merged sampling costs what the base costs: nothing but the weights' values differ."""
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    write_oft_file(adapters_dir / "oft.safetensors", unet)

    def projections():
        return {name: unet.get_submodule(name) for name, _ in attention_layers(unet)}

    before = {path: (type(layer), layer.weight.dtype) for path, layer in projections().items()}
    originals = {path: layer.weight.detach().clone() for path, layer in projections().items()}
    (ours,) = TapTuneLoadAdapter.execute(model, "oft.safetensors", 1.0).args
    assert not ours.object_patches and ours.model_options == model.model_options
    comfy.model_management.load_models_gpu([ours])
    for path, layer in projections().items():
        assert (type(layer), layer.weight.dtype) == before[path]
        assert layer.weight.is_contiguous() and not getattr(layer, "weight_function", [])
        assert not torch.equal(layer.weight, originals[path])  # the rotation sits in the weight itself
    comfy.model_management.load_models_gpu([model])
    assert all(torch.equal(layer.weight, originals[path]) for path, layer in projections().items())


@pytest.mark.parametrize("targets", ["attention", "attention_ff", "cross_attention"])
def test_merged_equals_the_training_form(sd15, targets):
    model = sd15[0]
    layers = oft_targets(model_view(model), targets)
    oft_set = OFTAdapterSet.create(layers, OFTConfig(r=4, coft=False), magnitude=True)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for rotation in oft_set.rotations.values():
            rotation.P.copy_(torch.randn(rotation.P.shape, generator=g) * 0.02)
            rotation.magnitude.copy_(1 + 0.1 * torch.randn(rotation.magnitude.shape, generator=g))
    x, sigma, ctx, _ = fixed_inputs(768, seed=3)
    merged = unet_output(with_adapters(model, oft_set), x, sigma, ctx)
    unmerged = unet_output(with_oft_training_form(model, oft_set), x, sigma, ctx)
    base = unet_output(model, x, sigma, ctx)
    assert relative_error(unmerged, merged) < 1e-5
    assert relative_error(base, merged) > 1e-3


def test_stacks_with_a_tap_adapter(sd15, adapters_dir):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    plan = write_oft_file(adapters_dir / "oft.safetensors", unet, seed=3)
    g = torch.Generator().manual_seed(4)
    tensors, taps, modules = {}, {}, []
    for name, block in unet.named_modules():
        if type(block).__name__ == "BasicTransformerBlock":
            t = random_tap_tensors("transformer", block.attn1.to_q.in_features, block.attn1.to_q.in_features, 8, g)
            tensors.update({f"{name}.{k}": v for k, v in t.items()})
            taps[name] = [("attn2o", "ffni", 1.0, adapter_fn(t, "relu"))]
            modules.append(name)
    group = {"din": "attn2o", "dout": "ffni", "mid_dim": 8, "method": "relu", "scale": 1.0, "modules": modules}
    write_tap_file(adapters_dir / "tap.safetensors", [group], tensors)
    (with_oft,) = TapTuneLoadAdapter.execute(model, "oft.safetensors", 1.0).args
    (both,) = TapTuneLoadAdapter.execute(with_oft, "tap.safetensors", 1.0).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=4)
    got = unet_output(both, x, sigma, ctx)
    reference_model = expected_model(model, plan, 1.0)
    with reference_hooks(reference_model, taps):
        expected = raw_output(reference_model, x, sigma, ctx)
    assert relative_error(got, expected) < 1e-5
    assert relative_error(unet_output(with_oft, x, sigma, ctx), got) > 1e-3


def test_export_reproduces_the_rotation_through_the_stock_lora_loader(
    host, sd15, sd15_checkpoint_name, adapters_dir, base_dir
):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    write_oft_file(adapters_dir / "oft.safetensors", model.model.diffusion_model, seed=6, scale=0.05)
    (lora_name,) = TapTuneExportOFTAsLoRA.execute(model, "oft.safetensors", 1.0, "test/oft_as_lora", "fp32").args
    assert (base_dir / "models" / "loras" / lora_name).exists()

    def graph(kind):
        prompt = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint_name}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks dog", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": ksampler(["5", 0], ["2", 0], ["3", 0], ["4", 0], seed=3, steps=3, cfg=4.0),
            "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/oft"}},
        }
        if kind == "ours":
            prompt["5"] = {
                "class_type": "TapTuneLoadAdapter",
                "inputs": {"model": ["1", 0], "adapter_name": "oft.safetensors", "strength": 1.0},
            }
        elif kind == "stock":
            prompt["5"] = {
                "class_type": "LoraLoaderModelOnly",
                "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": 1.0},
            }
        else:
            prompt["5"] = {
                "class_type": "LoraLoaderModelOnly",
                "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": 0.0},
            }
        return prompt

    results = {kind: host.run(graph(kind)) for kind in ("ours", "stock", "base")}
    for result in results.values():
        assert result.success, result.error()
    ours, stock, base = (results[k].output("6")["samples"] for k in ("ours", "stock", "base"))
    effect = (ours - base).norm()
    assert effect / base.norm() > 1e-3
    assert float((stock - ours).norm() / effect) < 1e-3


def test_diffusers_mapping_agrees_with_comfyui():
    """Our diffusers -> ComfyUI names equal ComfyUI's own unet_to_diffusers map, for SD 1.5, SD 2.x and SDXL layouts."""
    for config in (
        SD15_FULL,
        {**SD15_FULL, **{k: SD2_SMALL[k] for k in ("context_dim", "use_linear_in_transformer")}},
        {
            **SDXL_SMALL,
            "num_res_blocks": [2, 2, 2],
            "transformer_depth": [0, 0, 2, 2, 10, 10],
            "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
            "transformer_depth_middle": 10,
        },
    ):
        mapping = comfy.utils.unet_to_diffusers(config)
        checked = 0
        for diffusers_key, comfy_key in mapping.items():
            if ".attentions." in diffusers_key and any(
                f".{a}.weight" in diffusers_key for a in ("to_q", "to_k", "to_v", "to_out.0")
            ):
                assert diffusers_to_comfy_path(diffusers_key[: -len(".weight")]) + ".weight" == comfy_key
                checked += 1
        assert checked > 0


def test_import_node_checks_the_fit_and_records_the_base(sd15, adapters_dir, base_dir):
    model = sd15[0]
    folder = base_dir / "input" / "oft_import"
    folder.mkdir(parents=True, exist_ok=True)
    state = official_oft_dreambooth_state("down_blocks.0.attentions.0", scale=0.02, seed=0)
    torch.save(state, folder / "pytorch_lora_weights.bin")
    (name,) = TapTuneImportOFT.execute("oft_import/pytorch_lora_weights.bin", "imported/oft", 0, model).args
    oft_set = adapter_set_for_model(load_adapter_file(adapters_dir / name), model)
    assert len(oft_set.rotations) == 8
    (patched,) = TapTuneLoadAdapter.execute(model, name, 1.0).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=9)
    assert relative_error(unet_output(patched, x, sigma, ctx), unet_output(model, x, sigma, ctx)) > 1e-4
    # The same file does not fit a model whose first level is 640 wide.
    state = {k.replace("down_blocks.0", "down_blocks.1"): v for k, v in state.items()}
    torch.save(state, folder / "wrong.bin")
    with pytest.raises(ValueError, match=r"TapTuneImportOFT: input 'source': .*input width 320 but the layer has 640"):
        TapTuneImportOFT.execute(str(folder / "wrong.bin"), "imported/oft", 0, model)


def test_a_clone_never_sees_another_clones_object_patches(sd15):
    """Building patches while another clone's wrappers sit in the shared model reads the originals."""
    from taptune.adapter_core import TapAdapterSet, TapConfig
    from taptune.patching.model_access import model_sites

    model = sd15[0]
    layers = oft_targets(model_view(model), "attention")
    oft_set = OFTAdapterSet.create(layers, OFTConfig(r=4, coft=False))
    with torch.no_grad():
        for rotation in oft_set.rotations.values():
            rotation.P.normal_(0, 0.02)
    x, sigma, ctx, _ = fixed_inputs(768, seed=12)
    base = unet_output(model, x, sigma, ctx)
    trainable = with_oft_training_form(model, oft_set)
    tap_set = TapAdapterSet.create(model_sites(model), TapConfig("attn2o", "ffni", mid_dim=8), init="paper", seed=1)
    tapped = with_adapters(model, tap_set)
    training_out = unet_output(trainable, x, sigma, ctx)  # its OFT wrappers are now in the shared model
    merged = with_adapters(model, oft_set)  # weight keys must still be found
    also_tapped = with_adapters(model, tap_set)  # originals, not the other clone's wrappers
    assert relative_error(unet_output(merged, x, sigma, ctx), training_out) < 1e-5
    assert torch.equal(unet_output(also_tapped, x, sigma, ctx), unet_output(tapped, x, sigma, ctx))
    assert torch.equal(unet_output(model, x, sigma, ctx), base)


def test_stacks_with_a_lora_in_chain_order(sd15, adapters_dir):
    """LoRA then OFT: the rotation turns the LoRA-patched weight, (W + dW) R^T, as the nodes are chained."""
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    plan = write_oft_file(adapters_dir / "oft.safetensors", model.model.diffusion_model, seed=9)
    name = next(iter(plan))
    weight = plan[name][0]
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * 0.05
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, {f"diffusion_model.{name}.diff": delta}, 1.0, 0.0)
    (both,) = TapTuneLoadAdapter.execute(with_lora, "oft.safetensors", 1.0).args
    shifted = dict(plan)
    shifted[name] = (weight + delta, *plan[name][1:])
    x, sigma, ctx, _ = fixed_inputs(768, seed=13)
    expected = unet_output(expected_model(model, shifted, 1.0), x, sigma, ctx)
    got = unet_output(both, x, sigma, ctx)
    oft_only = unet_output(expected_model(model, plan, 1.0), x, sigma, ctx)
    assert relative_error(got, expected) < 1e-5
    assert relative_error(oft_only, got) > 1e-4
