"""The ComfyUI behaviours the pack relies on, checked against the ComfyUI under test, so the next break shows up on a CPU.

* **Weight-patch rebuild protocol.** ComfyUI's dynamic-VRAM loading (the default on NVIDIA GPUs
  in current releases) wraps every weight patch per layer and rebuilds it as
  ``type(p)(p.loaded_keys, p.weights)``. Every weight patch the pack creates must survive that
  rebuild and compute the same weight.
* **Shadow of the stock transformer block.** The tapped block re-implements
  ``BasicTransformerBlock.forward`` position by position. With no adapters it must give the
  stock block's output bit for bit, with every kind of transformer patch ComfyUI defines
  registered; and it must handle every transformer-options name the stock forward reads
  (names read from the stock source, not listed by hand).
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import comfy.ops
import pytest
import torch
from comfy.ldm.modules.attention import BasicTransformerBlock, optimized_attention

from devtools.checkpoints import SD15_TINY, build_model_patcher
from taptune.adapter_core import OFTConfig, OFTSpec, TapConfig, TapGroupSpec, TappedTransformerBlock, TapSpec
from taptune.patching.apply import apply_adapter_set
from taptune.patching.model_access import model_view
from taptune.patching.training_clone import loaded_for_training, training_clone

# -- the rebuild protocol -------------------------------------------------------------------------


def _weight_patches(model):
    """Every (key, patch tuple) of a clone whose patch value is a weight adapter object."""
    from comfy.weight_adapter.base import WeightAdapterBase

    found = []
    for key, entries in model.patches.items():
        for entry in entries:
            if isinstance(entry[1], WeightAdapterBase):
                found.append((key, entry))
    return found


def _patched_clones():
    model = build_model_patcher("SD15", SD15_TINY, seed=11)
    view = model_view(model)
    oft_set = OFTSpec(OFTConfig(r=4, coft=False)).build(view, 0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in oft_set.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    tap_spec = TapSpec((TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=4)),))
    tap_set = tap_spec.build(view, 0)
    return {
        "oft merged": apply_adapter_set(model, oft_set, 0.7),
        "oft merged, negative strength": apply_adapter_set(model, oft_set, -1.0),
        "training clone (autograd weights)": training_clone(model, tap_spec.training_plan(tap_set, view)),
        "oft training clone": training_clone(model, OFTSpec().training_plan(oft_set, view)),
    }


@pytest.mark.parametrize("name", list(_patched_clones()))
def test_every_weight_patch_survives_the_dynamic_vram_rebuild(name):
    clone = _patched_clones()[name]
    state = clone.model.state_dict()
    patches = _weight_patches(clone)
    assert patches, "the clone should carry weight patches"
    for key, (strength, patch, strength_model, offset, function) in patches:
        rebuilt = type(patch)(patch.loaded_keys, patch.weights)  # what dynamic VRAM does
        weight = state[key].detach().float()
        expected = patch.calculate_weight(weight.clone(), key, strength, strength_model, offset, function)
        got = rebuilt.calculate_weight(weight.clone(), key, strength, strength_model, offset, function)
        assert torch.equal(got, expected), key
        assert rebuilt.loaded_keys == patch.loaded_keys


# -- the shadow of BasicTransformerBlock -----------------------------------------------------------


def _string_constants(function) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def _stock_option_names() -> set[str]:
    """The transformer-options names the stock forward reads: its ``*_patch`` keys and its replace slots."""
    names = _string_constants(BasicTransformerBlock.forward)
    return {n for n in names if n.endswith("_patch") or n in ("attn1", "attn2", "patches", "patches_replace")}


def test_the_tapped_block_handles_every_name_the_stock_block_reads():
    ours = _string_constants(TappedTransformerBlock._run) | _string_constants(TappedTransformerBlock._attend)
    missing = _stock_option_names() - ours
    assert not missing, f"the stock BasicTransformerBlock reads {sorted(missing)}; TappedTransformerBlock does not"
    stock = inspect.signature(BasicTransformerBlock.forward).parameters
    tapped = inspect.signature(TappedTransformerBlock.forward).parameters
    assert list(stock) == list(tapped), "the stock forward's arguments changed"


def _block(dim: int = 64, context_dim: int = 48) -> BasicTransformerBlock:
    block = BasicTransformerBlock(
        dim, 4, dim // 4, context_dim=context_dim, operations=comfy.ops.disable_weight_init, dtype=torch.float32
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return block.eval()


def _patches(seed: int) -> dict:
    """One patch of every kind the stock block reads, each changing what it is given."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = (float(v) for v in torch.rand(3, generator=g) + 0.5)

    def pre_attention(scale):
        return lambda n, context, value, extra: (n * scale, context * (scale + 0.1), value * (scale - 0.1))

    def post(scale):
        return lambda x, extra: x * scale + 0.01

    patches = {}
    for name in sorted(_stock_option_names()):
        if name in ("attn1_patch", "attn2_patch"):
            patches[name] = [pre_attention(a), pre_attention(b)]
        elif name.endswith("_patch"):
            patches[name] = [post(c)]
    return patches


def _replacements(block_key) -> dict:
    def kernel(q, k, v, extra):
        return optimized_attention(q * 1.1, k, v, extra["n_heads"])

    return {"attn1": {block_key: kernel}, "attn2": {block_key: kernel}}


@pytest.mark.parametrize("replace", [False, True], ids=["patches", "patches+replacements"])
def test_the_tapped_block_without_adapters_is_the_stock_block(replace):
    block = _block()
    tapped = TappedTransformerBlock.wrap(block, [])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 64, generator=g)
    context = torch.randn(2, 7, 48, generator=g)
    options = {"block": ("input", 1), "block_index": 0, "patches": _patches(2), "cond_or_uncond": [0, 1]}
    if replace:
        options["patches_replace"] = _replacements(("input", 1, 0))
    with torch.no_grad():
        expected = block(x, context=context, transformer_options=dict(options))
        got = tapped(x, context=context, transformer_options=dict(options))
        plain = block(x, context=context, transformer_options={})
    assert torch.equal(got, expected)
    assert not torch.equal(expected, plain)  # the patches did act


# -- the offloadable cast --------------------------------------------------------------------------


def test_oft_training_gives_back_every_weight_it_casts():
    """OFT training wrappers take ComfyUI's offloadable cast and release each cast after use, as
    ComfyUI's own layers do (on dynamic-VRAM layers the release unpins the layer's host buffer)."""
    from taptune.adapter_core.patch_plan import HostOps
    from taptune.patching import host_ops

    casts, releases = [], []

    def counting_weights(layer, x):
        cast = host_ops.comfy_weights(layer, x)
        casts.append(cast)
        return cast

    def counting_release(layer, cast):
        releases.append(cast)
        host_ops.comfy_release(layer, cast)

    model = build_model_patcher("SD15", SD15_TINY, seed=5)
    view = model_view(model)
    oft_set = OFTSpec(OFTConfig(r=4, coft=False)).build(view, 0)
    plan = OFTSpec().training_plan(oft_set, view)
    counting = HostOps(host_ops.COMFY_HOST_OPS.attention, counting_weights, counting_release)
    for wrappers in plan.child_wrappers.values():
        for name, factory in list(wrappers.items()):
            wrappers[name] = lambda module, _host, factory=factory: factory(module, counting)
    clone = training_clone(model, plan)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, SD15_TINY["context_dim"], generator=g)
    with loaded_for_training(clone, 0) as unet:
        unet(x, torch.tensor([10.0]), context=context).sum().backward()
    assert casts, "OFT training should cast the rotated layers' weights through ComfyUI"
    assert len(releases) == len(casts)
    assert all(r is c for r, c in zip(releases, casts, strict=True))
    assert hasattr(comfy.ops, "uncast_bias_weight") == host_ops._OFFLOADABLE_CAST
