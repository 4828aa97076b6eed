"""The LoRA kind on its own (pure PyTorch): config, layers, the standard file names, training wrappers, spec."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taptune.adapter_core import ConfigError, ModelView
from taptune.adapter_core.errors import AdapterFileError
from taptune.adapter_core.file_format import AdapterFile, load_adapter_file, save_adapter_file
from taptune.adapter_core.kind import Phase, check_kind, trainable_parameters
from taptune.adapter_core.linear_wrappers import AdaptedAttention, AdaptedFeedForward, split_block_layer
from taptune.adapter_core.lora import (
    LORA_KIND,
    LORA_SPEC_FORM,
    LoRAAdapterSet,
    LoRAConfig,
    LoRAConfigError,
    LoRALayer,
    LoRASpec,
    kohya_name,
    lora_targets,
)
from taptune.adapter_core.patch_plan import HostOps
from taptune.adapter_core.registry import KINDS

# -- a toy UNet with LDM-shaped transformer blocks -----------------------------------------------


def sdpa(q, k, v, heads, mask=None, attn_precision=None, transformer_options=None):
    b, n, d = q.shape
    q, k, v = (t.view(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, d)


HOST = HostOps(attention=sdpa)


class Attention(nn.Module):
    def __init__(self, dim, context_dim, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):
        context = x if context is None else context
        value = context if value is None else value
        return self.to_out(sdpa(self.to_q(x), self.to_k(context), self.to_v(value), self.heads, mask))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, glu=True):
        super().__init__()
        first = GEGLU(dim, 2 * dim) if glu else nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU())
        self.net = nn.Sequential(first, nn.Dropout(0.0), nn.Linear(2 * dim, dim))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    def __init__(self, dim, context_dim, glu=True):
        super().__init__()
        self.attn1 = Attention(dim, dim)
        self.attn2 = Attention(dim, context_dim)
        self.ff = FeedForward(dim, glu)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class Spatial(nn.Module):
    def __init__(self, dim, context_dim, glu=True):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([Block(dim, context_dim, glu)])


class ToyUNet(nn.Module):
    """``input_blocks.1.1`` and ``middle_block.1`` hold one transformer block each; ``time_embed`` a linear layer."""

    def __init__(self, glu=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.time_embed = nn.Sequential(nn.Linear(8, 8))
        self.input_blocks = nn.ModuleList([nn.Identity(), nn.ModuleList([nn.Identity(), Spatial(16, 12, glu)])])
        self.middle_block = nn.ModuleList([nn.Identity(), Spatial(16, 12, glu)])


BLOCKS = ("input_blocks.1.1.transformer_blocks.0", "middle_block.1.transformer_blocks.0")


def toy_view(glu=True):
    unet = ToyUNet(glu)
    return unet, ModelView(unet)


def random_up(lora_set: LoRAAdapterSet, seed=3, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_set.layers.values():
            layer.up.copy_(torch.randn(layer.up.shape, generator=g) * scale)
    return lora_set


# -- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": True}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": math.inf}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"targets": "everything"}, "targets"),
        ({"targets": ()}, "targets"),
        ({"targets": ("a.b", "a.b")}, "targets"),
        ({"targets": ("",)}, "targets"),
        ({"init": "xavier"}, "init"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(LoRAConfigError) as info:
        LoRAConfig(**kwargs)
    assert info.value.input_name == field
    assert isinstance(info.value, ConfigError)


def test_config_json_round_trip_and_file_errors():
    for config in (
        LoRAConfig(),
        LoRAConfig(rank=3, alpha=1.5, targets="all_linear", init="normal"),
        LoRAConfig(targets=("diffusion_model.x.to_q", "y.to_k")),
    ):
        assert LoRAConfig.from_json(config.to_json(), "group") == config
    assert LoRAConfig(targets=("diffusion_model.x.to_q",)).targets == ("x.to_q",)
    assert LoRAConfig(rank=4, alpha=2).scale == 0.5
    with pytest.raises(AdapterFileError, match="'rank' must be an integer"):
        LoRAConfig.from_json({"rank": "8"}, "group 1")
    with pytest.raises(AdapterFileError, match="group 1: unknown targets"):
        LoRAConfig.from_json({"rank": 8, "targets": "nope"}, "group 1")
    with pytest.raises(AdapterFileError, match="'targets' must be"):
        LoRAConfig.from_json({"rank": 8, "targets": 5}, "group 1")


def test_targets_presets_on_transformer_blocks():
    _, view = toy_view()
    attention = lora_targets(view, "attention")
    assert len(attention) == 16 and all(p.startswith(BLOCKS) for p in attention)
    assert attention[f"{BLOCKS[0]}.attn2.to_k"] == (12, 16)
    with_ff = lora_targets(view, "attention_ff")
    assert set(with_ff) - set(attention) == {f"{b}.ff.net.{i}" for b in BLOCKS for i in ("0.proj", "2")}
    assert lora_targets(view, "all_linear") == with_ff  # GEGLU blocks: every linear layer of attn/ff
    _, plain = toy_view(glu=False)
    assert f"{BLOCKS[1]}.ff.net.0.0" in lora_targets(plain, "all_linear")
    with pytest.raises(LoRAConfigError) as info:
        lora_targets(plain, "attention_ff")  # no GEGLU projection there
    assert info.value.input_name == "targets"
    assert list(lora_targets(view, ["time_embed.0"])) == ["time_embed.0"]
    with pytest.raises(LoRAConfigError, match="not a linear layer"):
        lora_targets(view, [f"{BLOCKS[0]}.norm1"])
    with pytest.raises(LoRAConfigError, match="not a module of this model"):
        lora_targets(view, [f"{BLOCKS[0]}.attn3.to_q"])


# -- layers ----------------------------------------------------------------------------------------


def test_fresh_layers_are_seeded_and_the_base_exactly():
    _, view = toy_view()
    spec = LoRASpec(LoRAConfig(rank=4, alpha=3.0))
    a, b, c = spec.build(view, 7), spec.build(view, 7), spec.build(view, 8)
    for path, layer in a.layers.items():
        assert torch.equal(layer.down, b.layers[path].down)
        assert not torch.equal(layer.down, c.layers[path].down)
        assert torch.count_nonzero(layer.up) == 0 and torch.count_nonzero(layer.down) > 0
        bound = 1 / math.sqrt(layer.in_features)  # kaiming uniform with a = sqrt(5)
        assert float(layer.down.detach().abs().max()) <= bound
        W = torch.randn(layer.out_features, layer.in_features)
        for strength in (1.0, -1.0, 2.5):
            assert torch.equal(layer.merged_weight(W, strength), W)
    normal = LoRASpec(LoRAConfig(rank=4, init="normal")).build(view, 7)
    down = torch.cat([layer.down.detach().flatten() for layer in normal.layers.values()])
    assert abs(float(down.std()) - 0.25) < 0.03


def test_merged_weight_is_the_lora_formula():
    layer = LoRALayer(6, 5, rank=3, alpha=1.7)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.down.copy_(torch.randn(3, 6, generator=g))
        layer.up.copy_(torch.randn(5, 3, generator=g))
    W = torch.randn(5, 6, generator=g)
    alpha32 = float(torch.tensor(1.7, dtype=torch.float32))
    assert layer.alpha == alpha32 != 1.7
    for s in (0.0, 1.0, -1.0, 0.3):
        reference = W.double() + s * alpha32 / 3 * (layer.up.double() @ layer.down.double())
        assert torch.allclose(layer.merged_weight(W, s).double(), reference, atol=1e-6)
    assert torch.equal(layer.merged_weight(W, 0.0), W)
    half = layer.merged_weight(W.half(), 1.0)
    assert half.dtype == torch.float16
    x = torch.randn(4, 6, generator=g)
    bias = torch.randn(5, generator=g)
    assert torch.allclose(layer.linear(x, W, bias), F.linear(x, layer.merged_weight(W, 1.0), bias), atol=1e-5)
    with pytest.raises(LoRAConfigError, match="cannot apply"):
        layer.merged_weight(torch.zeros(6, 5), 1.0)


# -- training wrappers -----------------------------------------------------------------------------


def _merged_block(unet, lora_set, block, strength=1.0):
    """A copy of ``block`` with every LoRA layer merged into its weight."""
    import copy

    merged = copy.deepcopy(unet.get_submodule(block))
    for path, layer in lora_set.layers.items():
        if path.startswith(block + "."):
            target = merged.get_submodule(path[len(block) + 1 :])
            with torch.no_grad():
                target.weight.copy_(layer.merged_weight(target.weight, strength))
    return merged


@pytest.mark.parametrize("glu", [True, False])
def test_training_wrappers_compute_the_merged_model_and_train_down_and_up(glu):
    unet, view = toy_view(glu)
    unet.requires_grad_(False)  # the host's weights are frozen
    spec = LoRASpec(LoRAConfig(rank=2, alpha=4.0, targets="all_linear"))
    lora_set = random_up(spec.build(view, 1))
    plan = spec.training_plan(lora_set, view)
    assert set(plan.child_wrappers) == set(BLOCKS) and not plan.weight_functions and not plan.hooks
    block = unet.get_submodule(BLOCKS[0])
    wrapped = {name: factory(getattr(block, name), HOST) for name, factory in plan.child_wrappers[BLOCKS[0]].items()}
    assert isinstance(wrapped["attn1"], AdaptedAttention) and isinstance(wrapped["ff"], AdaptedFeedForward)
    # The wrappers adopt the original children: same weights, same state_dict keys, no LoRA tensors in it.
    assert wrapped["attn2"].to_k is block.attn2.to_k
    assert set(wrapped["ff"].state_dict()) == set(block.ff.state_dict())
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    merged = _merged_block(unet, lora_set, BLOCKS[0])
    h = wrapped["attn1"](x) + x
    h = wrapped["attn2"](h, context=context) + h
    out = wrapped["ff"](h) + h
    m = merged.attn1(x) + x
    m = merged.attn2(m, context=context) + m
    expected = merged.ff(m) + m
    assert torch.allclose(out, expected, atol=1e-5), float((out - expected).abs().max())
    out.square().mean().backward()
    for path, layer in lora_set.layers.items():
        if path.startswith(BLOCKS[0]):
            assert layer.down.grad is not None and layer.down.grad.abs().sum() > 0, path
            assert layer.up.grad is not None and layer.up.grad.abs().sum() > 0, path
    assert all(p.grad is None for p in block.parameters())


def test_wrappers_refuse_to_wrap_twice_and_layers_they_cannot_train():
    unet, view = toy_view()
    spec = LoRASpec()
    lora_set = spec.build(view, 0)
    plan = spec.training_plan(lora_set, view)
    block = unet.get_submodule(BLOCKS[0])
    once = plan.child_wrappers[BLOCKS[0]]["attn1"](block.attn1, HOST)
    with pytest.raises(ConfigError, match="already being trained"):
        plan.child_wrappers[BLOCKS[0]]["attn1"](once, HOST)
    assert split_block_layer(f"{BLOCKS[0]}.attn1.to_out.0") == (BLOCKS[0], "attn1", "to_out.0")
    assert split_block_layer("time_embed.0") is None
    with pytest.raises(LoRAConfigError, match="cannot be trained with LoRA") as info:
        LoRASpec(LoRAConfig(targets=("time_embed.0",))).build(view, 0)
    assert info.value.input_name == "targets"


# -- the file form ---------------------------------------------------------------------------------


def test_file_uses_standard_lora_names_and_round_trips_bit_exact(tmp_path):
    unet, view = toy_view()
    lora_set = random_up(LoRASpec(LoRAConfig(rank=3, alpha=0.1, targets="attention_ff")).build(view, 5))
    path = save_adapter_file(tmp_path / "toy_lora.safetensors", lora_set.to_file(trigger_word="sks"))
    loaded_file = load_adapter_file(path)
    first = f"{BLOCKS[0]}.attn1.to_out.0"
    assert kohya_name(first) == "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_out_0"
    expected_keys = {
        f"{kohya_name(p)}.{n}" for p in lora_set.layers for n in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert set(loaded_file.tensors) == expected_keys
    assert loaded_file.tensors[f"{kohya_name(first)}.alpha"].shape == ()
    loaded = LoRAAdapterSet.from_file(loaded_file)
    loaded.check_fits(view)
    assert loaded.groups[0].config == lora_set.groups[0].config
    for p, layer in lora_set.layers.items():
        assert torch.equal(loaded.layers[p].down, layer.down) and torch.equal(loaded.layers[p].up, layer.up)
        assert loaded.layers[p].alpha == layer.alpha
        assert not loaded.layers[p].up.requires_grad
    assert loaded.describe() == ["LoRA rank 3, alpha 0.1 (attention_ff): 20 layers"]
    diffs = loaded.weight_differences(lambda p: unet.get_submodule(p).weight, -1.0, torch.float16)
    assert diffs[first].dtype == torch.float16
    assert torch.allclose(diffs[first].float(), -lora_set.layers[first].delta(1.0), atol=1e-3)
    plan = loaded.inference_plan(view)
    W = unet.get_submodule(first).weight.detach()
    assert torch.equal(plan.weight_functions[first](W, 0.0), W)
    assert torch.allclose(plan.weight_functions[first](W, 1.0), lora_set.layers[first].merged_weight(W, 1.0))


def _file(tensors, config=None, modules=("a.to_q",)):
    entry = {**(config or LoRAConfig(rank=2, alpha=2.0)).to_json(), "modules": list(modules)}
    return AdapterFile("lora", [entry], tensors)


def _good(path="a.to_q"):
    name = kohya_name(path)
    return {
        f"{name}.lora_down.weight": torch.zeros(2, 4),
        f"{name}.lora_up.weight": torch.zeros(3, 2),
        f"{name}.alpha": torch.tensor(2.0),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("lora_unet_a_to_q.alpha"), "missing lora_unet_a_to_q.alpha"),
        (lambda t: t.update({"lora_unet_a_to_q.lora_mid.weight": torch.zeros(2, 2)}), "unexpected tensor"),
        (lambda t: t.update({"lora_unet_a_to_q.lora_down.weight": torch.zeros(3, 4)}), "rank 2"),
        (lambda t: t.update({"lora_unet_a_to_q.lora_up.weight": torch.zeros(3, 2, 1)}), "must be matrices"),
        (lambda t: t.update({"lora_unet_a_to_q.alpha": torch.tensor(3.0)}), "alpha 3 disagrees"),
        (lambda t: t.update({"lora_unet_a_to_q.alpha": torch.zeros(2)}), "alpha must be a scalar"),
        (lambda t: t.update({"lora_unet_a_to_q.alpha": torch.full((1, 1), 2.0)}), "alpha must be a scalar"),
        (lambda t: t.update({"lora_unet_a_to_q.lora_up.weight": torch.full((3, 2), math.nan)}), "NaN"),
        (lambda t: t.update({"lora_unet_b_to_q.alpha": torch.tensor(2.0)}), "belongs to no module"),
    ],
)
def test_hostile_tensors_are_refused_naming_the_problem(change, message):
    tensors = _good()
    change(tensors)
    with pytest.raises(AdapterFileError, match=message):
        LoRAAdapterSet.from_file(_file(tensors))


def test_layers_whose_standard_names_coincide_are_refused():
    tensors = _good("a.b_c")
    with pytest.raises(AdapterFileError, match="same LoRA tensor name"):
        LoRAAdapterSet.from_file(_file(tensors, modules=("a.b_c", "a_b.c")))


def test_check_fits_names_the_layer_that_does_not_fit():
    _, view = toy_view()
    path = f"{BLOCKS[0]}.attn2.to_k"
    lora_set = LoRAAdapterSet.from_file(_file({**_good(path)}, modules=(path,)))
    with pytest.raises(LoRAConfigError, match=r"4 inputs and 3 outputs, the model's has 12 and 16"):
        lora_set.check_fits(view)


# -- the spec and the kind -------------------------------------------------------------------------


def test_spec_json_round_trip_and_refusals():
    for spec in (
        LoRASpec(),
        LoRASpec(LoRAConfig(rank=21, alpha=21, targets="attention_ff", init="normal"), learning_rate=2e-3),
        LoRASpec(LoRAConfig(targets=("x.attn1.to_q",))),
    ):
        entry = spec.to_json()
        assert entry["kind"] == "lora" and set(entry) == {"kind", "config", "learning_rate"}
        assert LoRASpec.from_json(entry, "spec") == spec
    entry = LoRASpec().to_json()
    with pytest.raises(ConfigError, match="rank") as info:
        LoRASpec.from_json({**entry, "config": {**entry["config"], "rank": -1}}, "job.spec")
    assert info.value.input_name == "spec"
    with pytest.raises(ConfigError, match="kind 'lora'"):
        LoRASpec.from_json({**entry, "kind": "oft"}, "job.spec")
    with pytest.raises(ConfigError, match="learning_rate"):
        LoRASpec.from_json({**entry, "learning_rate": 0}, "job.spec")
    with pytest.raises(LoRAConfigError) as bad:
        LoRASpec(learning_rate=-1.0)
    assert bad.value.input_name == "learning_rate"


def test_the_kind_keeps_the_contract_and_is_registered():
    check_kind(LORA_KIND)
    assert KINDS["lora"] is LORA_KIND
    assert LoRASpec.phase_parameters == {Phase.MAIN: "adapter", Phase.POST: None} and LoRASpec.post_steps == 0
    _, view = toy_view()
    spec = LoRASpec()
    lora_set = spec.build(view, 0)
    assert trainable_parameters(spec, lora_set, Phase.MAIN) == lora_set.parameters()
    assert len(lora_set.parameters()) == 2 * len(lora_set.layers)
    before = [p.clone() for p in lora_set.parameters()]
    spec.after_step(lora_set, Phase.MAIN)
    assert all(torch.equal(a, b) for a, b in zip(before, lora_set.parameters(), strict=True))


def test_spec_form_builds_specs_with_visible_defaults_and_tooltips():
    form = LORA_SPEC_FORM
    assert (form.node_id, form.display_name, form.category) == ("TapTuneLoRASpec", "TapTune LoRA Spec", "train")
    assert all(f.tooltip for f in form.fields)
    defaults = form.defaults()
    assert form.build(defaults) == LoRASpec()
    assert defaults["learning_rate"] == 1e-4 and defaults["rank"] == 8 and defaults["targets"] == "attention"
    spec = form.build({**defaults, "rank": 4, "target_list": " a.attn1.to_q \n\nb.ff.net.2, c.attn2.to_v\n"})
    assert spec.config.targets == ("a.attn1.to_q", "b.ff.net.2", "c.attn2.to_v") and spec.config.rank == 4
    assert form.build({**defaults, "targets": "all_linear", "target_list": "  "}).config.targets == "all_linear"
    with pytest.raises(LoRAConfigError) as info:
        form.build({**defaults, "rank": 0})
    assert info.value.input_name == "rank"
