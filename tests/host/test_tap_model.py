"""Tap adapters on real ComfyUI MODELs: stacking, strength 0, clone-safety, LoRAs, gradients, SD 2.x and SDXL."""

from __future__ import annotations

import copy

import comfy.model_management
import comfy.sd
import pytest
import torch
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from devtools.checkpoints import SD2_SMALL, SDXL_SMALL, build_model_patcher
from taptune.adapter_core import TapAdapterSet, TapConfig
from taptune.nodes.load_adapter import TapTuneLoadAdapter
from taptune.patching.model_access import model_sites

from .plans import with_adapters
from .reference import adapter_fn, random_tap_tensors, reference_hooks, write_tap_file
from .unet_io import fixed_inputs, raw_output, relative_error, unet_output


def make_file(folder, name, unet, groups, seed):
    """Write a tap file for ``groups`` [(din, dout, mid, method, scale)]; return its reference plan."""
    g = torch.Generator().manual_seed(seed)
    tensors, entries, plan = {}, [], {}
    for din, dout, mid, method, scale in groups:
        kind = "resblock" if din.startswith("res") else "transformer"
        cls = BasicTransformerBlock if kind == "transformer" else ResBlock
        modules = []
        for path, block in unet.named_modules():
            if type(block) is not cls:
                continue
            if kind == "transformer":
                d, c = block.attn1.to_q.in_features, block.attn2.to_k.in_features
                d_in, d_out = (c if din == "attn2c" else d), (c if dout == "attn2c" else d)
            else:
                pick = {"resi": block.channels, "reso": block.out_channels}
                d_in, d_out = pick[din], pick[dout]
            t = random_tap_tensors(kind, d_in, d_out, mid, g)
            tensors.update({f"{path}.{k}": v for k, v in t.items()})
            plan.setdefault(path, []).append((din, dout, scale, adapter_fn(t, method)))
            modules.append(path)
        entries.append({"din": din, "dout": dout, "mid_dim": mid, "method": method, "scale": scale, "modules": modules})
    write_tap_file(folder / name, entries, tensors)
    return plan


def scaled(plan, strength):
    return {p: [(a, b, c * strength, f) for a, b, c, f in taps] for p, taps in plan.items()}


def merge(*plans):
    out = {}
    for plan in plans:
        for path, taps in plan.items():
            out.setdefault(path, []).extend(taps)
    return out


def test_stacking_two_files_on_the_same_blocks(sd15, adapters_dir):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    plan_a = make_file(
        adapters_dir, "a.safetensors", unet, [("attn2o", "ffni", 16, "relu", 1.0), ("resi", "reso", 8, "silu", 1.0)], 1
    )
    plan_b = make_file(adapters_dir, "b.safetensors", unet, [("attn1i", "transo", 10, "sig", 0.5)], 2)
    (m1,) = TapTuneLoadAdapter.execute(model, "a.safetensors", 0.7).args
    (m2,) = TapTuneLoadAdapter.execute(m1, "b.safetensors", 1.3).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=3)
    ours = unet_output(m2, x, sigma, ctx)
    only_a = unet_output(m1, x, sigma, ctx)
    base = unet_output(model, x, sigma, ctx)
    with reference_hooks(model, merge(scaled(plan_a, 0.7), scaled(plan_b, 1.3))):
        expected = raw_output(model, x, sigma, ctx)
    assert relative_error(ours, expected) < 1e-5
    assert relative_error(only_a, ours) > 1e-3 and relative_error(base, ours) > 1e-3
    # Loading the second file did not change the first clone.
    assert torch.equal(unet_output(m1, x, sigma, ctx), only_a)


def test_strength_zero_and_removal_are_bit_identical(sd15, adapters_dir):
    model = sd15[0]
    x, sigma, ctx, _ = fixed_inputs(768, seed=4)
    before = unet_output(model, x, sigma, ctx)
    snapshot = (
        dict(model.object_patches),
        {k: list(v) for k, v in model.patches.items()},
        copy.deepcopy(model.model_options),
    )
    make_file(
        adapters_dir,
        "z.safetensors",
        model.model.diffusion_model,
        [("attn2o", "ffni", 8, "relu", 1.0), ("reso", "reso", 8, "relu", 1.0)],
        5,
    )
    (zero,) = TapTuneLoadAdapter.execute(model, "z.safetensors", 0.0).args
    (full,) = TapTuneLoadAdapter.execute(model, "z.safetensors", 1.0).args
    assert torch.equal(unet_output(zero, x, sigma, ctx), before)
    assert relative_error(unet_output(full, x, sigma, ctx), before) > 1e-3
    # Removal: the original MODEL computes exactly what it did, and was never modified.
    assert torch.equal(unet_output(model, x, sigma, ctx), before)
    assert dict(model.object_patches) == snapshot[0]
    assert {k: list(v) for k, v in model.patches.items()} == snapshot[1]
    assert model.model_options == snapshot[2]
    assert not any("taptune" in k for k in model.model.state_dict())


def test_next_to_a_lora(sd15, adapters_dir):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    g = torch.Generator().manual_seed(9)
    path = "input_blocks.1.1.transformer_blocks.0.attn2.to_q"
    weight = unet.get_submodule(path).weight
    lora = {f"diffusion_model.{path}.diff": torch.randn(weight.shape, generator=g) * 0.05}
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    plan = make_file(adapters_dir, "t.safetensors", unet, [("attn2o", "ffni", 8, "relu", 1.0)], 6)
    (both,) = TapTuneLoadAdapter.execute(with_lora, "t.safetensors", 1.0).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=5)
    ours = unet_output(both, x, sigma, ctx)
    lora_only = unet_output(with_lora, x, sigma, ctx)
    with reference_hooks(with_lora, plan):
        expected = raw_output(with_lora, x, sigma, ctx)
    assert relative_error(ours, expected) < 1e-5
    assert relative_error(lora_only, ours) > 1e-3


def test_gradients_reach_the_adapters_only(sd15):
    model = sd15[0]
    sites = model_sites(model)
    tap_set = TapAdapterSet.create(sites, TapConfig("attn2o", "ffni", mid_dim=8), init="paper", seed=0)
    tap_set.add_group(sites, TapConfig("resi", "reso", mid_dim=8), init="paper", seed=1)
    patched = with_adapters(model, tap_set)
    comfy.model_management.load_models_gpu([patched])
    base_params = list(patched.model.diffusion_model.parameters())
    adapter_params = tap_set.parameters()
    adapter_ids = {id(p) for p in adapter_params}
    frozen = [p for p in base_params if id(p) not in adapter_ids]
    flags = [p.requires_grad for p in frozen]
    x, sigma, ctx, _ = fixed_inputs(768, seed=1)
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            out = patched.model.apply_model(x.clone(), sigma.clone(), c_crossattn=ctx.clone())
            out.square().mean().backward()
    finally:
        for p, flag in zip(frozen, flags, strict=True):
            p.requires_grad_(flag)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter_params)
    assert all(p.grad is None for p in frozen)


@pytest.mark.parametrize("family,config", [("SD20", SD2_SMALL), ("SDXL", SDXL_SMALL)], ids=["sd2", "sdxl"])
def test_other_families(family, config, adapters_dir):
    model = build_model_patcher(family, config, seed=3)
    comfy.model_management.load_models_gpu([model])
    unet = model.model.diffusion_model
    plan = make_file(
        adapters_dir, "f.safetensors", unet, [("attn2c", "attn2c", 8, "relu", 1.0), ("resi", "resi", 8, "relu", 1.0)], 7
    )
    (patched,) = TapTuneLoadAdapter.execute(model, "f.safetensors", 0.9).args
    x, sigma, ctx, extra = fixed_inputs(config["context_dim"], seed=8, batch=3, adm=config.get("adm_in_channels"))
    ours = unet_output(patched, x, sigma, ctx, **extra)
    base = unet_output(model, x, sigma, ctx, **extra)
    with reference_hooks(model, scaled(plan, 0.9)):
        expected = raw_output(model, x, sigma, ctx, **extra)
    assert relative_error(ours, expected) < 1e-5
    assert relative_error(base, ours) > 1e-3
    assert torch.equal(unet_output(model, x, sigma, ctx, **extra), base)
