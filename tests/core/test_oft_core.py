"""OFT / COFT on their own (pure PyTorch): the paper's math, its constraint, and PEFT's layer as a second opinion."""

from __future__ import annotations

import json

import pytest
import torch

from devtools.foreign_files import official_oft_dreambooth_state
from taptune.adapter_core import OFTAdapterSet, OFTConfig, OFTConfigError, OFTRotation, hyperspherical_energy
from taptune.adapter_core.file_format import AdapterFileError, load_adapter_file, save_adapter_file
from taptune.adapter_core.oft.cayley import cayley, cayley_neumann, neumann_error_bound, rotate_input, rotate_weight
from taptune.adapter_core.oft.oft_import import diffusers_to_comfy_path, import_oft, peft_neumann_rotation

from .views import LayersOnly


def dense_reference(W: torch.Tensor, P_blocks: torch.Tensor, blocks: int, strength: float = 1.0) -> torch.Tensor:
    """Specification §2.1-§2.2 written out: S = (P - P^T)/2, R = (I - S)(I + S)^-1, dense block-diagonal, W R^T."""
    P = P_blocks.double()
    if P.dim() == 2:
        P = P.expand(blocks, *P.shape)
    rotations = []
    for block in P:
        S = strength * (block - block.T) / 2
        eye = torch.eye(S.shape[0], dtype=S.dtype)
        rotations.append((eye - S) @ torch.linalg.inv(eye + S))
    return W.double() @ torch.block_diag(*rotations).T


def random_rotation(in_features, out_features, r=4, shared=False, scale=0.3, seed=0, magnitude=False):
    rotation = OFTRotation(
        in_features, OFTConfig(r=r, block_share=shared, coft=False), out_features=out_features, magnitude=magnitude
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rotation.P.copy_(torch.randn(rotation.P.shape, generator=g) * scale)
        if magnitude:
            rotation.magnitude.copy_(0.5 + torch.rand(out_features, generator=g))
    return rotation


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("strength", [1.0, 0.5, -1.0, 2.5])
def test_rotation_is_orthogonal(shared, strength):
    eye = torch.eye(80)
    # Training-sized generators in the fp32 path, and very large ones in the precise (merge) path.
    for scale, precise in ((0.05, False), (1.0, True)):
        rotation = random_rotation(320, 320, r=4, shared=shared, scale=scale)
        with torch.no_grad():
            R = rotation.rotation(strength, precise=precise)
        assert R.dtype == torch.float32 and R.shape == ((1, 80, 80) if shared else (4, 80, 80))
        assert float((R.transpose(-1, -2) @ R - eye).norm(dim=(-1, -2)).max()) < 1e-5


def test_identity_at_initialisation_and_at_strength_zero():
    rotation = OFTRotation(320, OFTConfig(r=4))
    W = torch.randn(640, 320)
    assert torch.equal(rotation.merged_weight(W), W)
    trained = random_rotation(320, 640)
    assert torch.equal(trained.merged_weight(W, 0.0), W)


@pytest.mark.parametrize("shared", [False, True])
def test_matches_the_dense_reference(shared):
    W = torch.randn(96, 320)
    rotation = random_rotation(320, 96, r=4, shared=shared, seed=1)
    for strength in (1.0, 0.5, -1.0):
        expected = dense_reference(W, rotation.P.detach(), 4, strength)
        assert float((rotation.merged_weight(W, strength).double() - expected).norm() / expected.norm()) < 1e-6


def test_strength_minus_one_is_the_inverse_and_magnitude_follows():
    W = torch.randn(64, 128)
    rotation = random_rotation(128, 64, r=8, magnitude=True, seed=3)
    forward = rotation.merged_weight(W, 1.0)
    back = rotation.merged_weight(forward, -1.0)
    torch.testing.assert_close(back, W, atol=1e-5, rtol=1e-5)
    # diag(m) W R^T: rows scaled by m after the rotation
    torch.testing.assert_close(
        forward, dense_reference(W, rotation.P.detach(), 8).float() * rotation.magnitude.detach()[:, None]
    )


def test_hyperspherical_energy_is_preserved():
    W = torch.randn(128, 256)
    rotated = random_rotation(256, 128, r=4, scale=1.0, seed=2).merged_weight(W)
    assert (rotated - W).abs().max() > 0.1  # a real change...
    before, after = hyperspherical_energy(W), hyperspherical_energy(rotated)
    assert abs(float(after / before) - 1.0) < 1e-5  # ...that keeps every angle between neurons


@pytest.mark.parametrize("tokens", [4, 4096])
def test_training_path_equals_merged_weight_on_either_side(tokens):
    rotation = random_rotation(320, 64, r=4, magnitude=True, seed=4)
    W, b = torch.randn(64, 320), torch.randn(64)
    x = torch.randn(1, tokens, 320)
    expected = x @ rotation.merged_weight(W).T + b
    torch.testing.assert_close(rotation.linear(x, W, b), expected, atol=2e-4, rtol=1e-4)
    R = rotation.rotation()
    torch.testing.assert_close(rotate_input(x, R) @ W.T, x @ rotate_weight(W, R).T, atol=2e-4, rtol=1e-4)


def test_gradients_reach_P_only():
    rotation = random_rotation(64, 32, r=4, magnitude=True)
    W = torch.randn(32, 64, requires_grad=False)
    rotation.linear(torch.randn(5, 64), W, None).square().sum().backward()
    assert rotation.P.grad is not None and rotation.P.grad.abs().sum() > 0
    assert rotation.magnitude.grad is not None


def test_coft_keeps_each_block_inside_its_radius_through_training():
    config = OFTConfig(r=4, coft=True, eps=6e-5)
    rotation = OFTRotation(64, config)
    k = 16
    assert rotation.radius == pytest.approx(6e-5 * k * k / 2.0)  # eps k^2 / sqrt(r), r = 4
    optimiser = torch.optim.Adam(rotation.parameters(), lr=1e-2)
    W = torch.randn(32, 64)
    x = torch.randn(100, 64)
    target = torch.randn(100, 32)
    for _ in range(300):
        rotation.project_()
        loss = (rotation.linear(x, W, None) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    rotation.project_()
    norms = torch.linalg.matrix_norm(rotation.P.detach())
    assert float(norms.max()) <= rotation.radius * (1 + 1e-6)
    assert float(norms.min()) > 0.99 * rotation.radius  # the constraint is active, not trivially met
    shared = OFTRotation(64, OFTConfig(r=4, coft=True, block_share=True, eps=6e-5))
    assert shared.radius == pytest.approx(6e-5 * k * k)


def test_cayley_neumann_error_is_within_its_stated_bound():
    g = torch.Generator().manual_seed(0)
    P = torch.randn(4, 32, 32, generator=g)
    for scale in (0.01, 0.05, 0.1):
        S = (P - P.transpose(1, 2)) / 2 * scale
        exact = cayley(S.double())
        previous = None
        for terms in (2, 4, 6, 8):
            error = float(torch.linalg.matrix_norm(exact - cayley_neumann(S.double(), terms), ord=2).max())
            assert error <= neumann_error_bound(S, terms) * (1 + 1e-9)
            if previous is not None:
                assert error < previous
            previous = error
    assert neumann_error_bound(P, 5) == float("inf")


def test_config_errors_name_the_layer_and_widths():
    with pytest.raises(OFTConfigError, match=r"attn2.to_k: input width 768 does not divide into r=5 blocks"):
        OFTRotation(768, OFTConfig(r=5), where="attn2.to_k")
    with pytest.raises(OFTConfigError, match="exactly one of r"):
        OFTConfig(r=4, block_size=8)
    assert OFTRotation(768, OFTConfig(r=None, block_size=192)).r == 4


def test_file_round_trip(tmp_path):
    layers = {"a.to_q": (64, 32), "a.to_k": (48, 32)}
    oft_set = OFTAdapterSet.create(layers, OFTConfig(r=4, coft=True), magnitude=True)
    shared = OFTAdapterSet.create({"b.to_v": (64, 16)}, OFTConfig(r=None, block_size=16, block_share=True))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rotation in [*oft_set.rotations.values(), *shared.rotations.values()]:
            rotation.P.copy_(torch.randn(rotation.P.shape, generator=g))
    oft_set.rotations.update(shared.rotations)
    oft_set.groups.extend(shared.groups)
    path = tmp_path / "oft.safetensors"
    save_adapter_file(path, oft_set.to_file())
    header = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["taptune"])
    assert header["adapters"][0]["r"] == 4 and header["adapters"][1]["block_size"] == 16
    loaded = OFTAdapterSet.from_file(load_adapter_file(path), LayersOnly({**layers, "b.to_v": (64, 16)}))
    for name, rotation in oft_set.rotations.items():
        W = torch.randn(layers.get(name, (64, 16))[1], rotation.in_features)
        torch.testing.assert_close(loaded.rotations[name].merged_weight(W), rotation.merged_weight(W))
    assert load_adapter_file(path).tensors["b.to_v.oft.S"].shape == (16, 16)
    with pytest.raises(AdapterFileError, match="needs the model's layer width"):
        OFTAdapterSet.from_file(load_adapter_file(path))


def test_rejects_non_finite_generators(tmp_path):
    from safetensors.torch import save_file

    header = {"format": "taptune/1", "kind": "oft", "adapters": [{"r": 2, "modules": ["x"]}]}
    S = torch.zeros(2, 4, 4)
    S[0, 0, 1], S[0, 1, 0] = float("nan"), float("nan")
    save_file({"x.oft.S": S}, str(tmp_path / "n.safetensors"), metadata={"taptune": json.dumps(header)})
    with pytest.raises(AdapterFileError, match="NaN or infinite"):
        OFTAdapterSet.from_file(load_adapter_file(tmp_path / "n.safetensors"))


def test_rejects_a_generator_that_is_not_skew(tmp_path):
    from safetensors.torch import save_file

    header = {"format": "taptune/1", "kind": "oft", "adapters": [{"r": 2, "modules": ["x"]}]}
    save_file(
        {"x.oft.S": torch.ones(2, 4, 4)}, str(tmp_path / "s.safetensors"), metadata={"taptune": json.dumps(header)}
    )
    with pytest.raises(AdapterFileError, match="not skew-symmetric"):
        OFTAdapterSet.from_file(load_adapter_file(tmp_path / "s.safetensors"))


# --- Hugging Face PEFT as a second, independent implementation -------------------------------------------


def peft_model(use_neumann: bool, r: int = 4, seed: int = 0, scale: float = 0.05):
    peft = pytest.importorskip("peft")
    torch.manual_seed(seed)

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_q = torch.nn.Linear(64, 48, bias=False)
            self.to_out = torch.nn.ModuleList([torch.nn.Linear(64, 64)])

    class Tree(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = torch.nn.Module()
            block = torch.nn.Module()
            block.attentions = torch.nn.ModuleList([torch.nn.Module()])
            block.attentions[0].transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
            block.attentions[0].transformer_blocks[0].attn1 = Attention()
            blocks.add_module("0", block)
            self.down_blocks = torch.nn.ModuleList([block])

    tree = Tree()
    config = peft.OFTConfig(r=r, oft_block_size=0, target_modules=["to_q", "to_out.0"], use_cayley_neumann=use_neumann)
    model = peft.get_peft_model(tree, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "oft_R" in name:
                param.copy_(torch.randn(param.shape) * scale)
    return model


@pytest.mark.parametrize("use_neumann", [False, True])
def test_same_output_as_peft_oft_layer(tmp_path, use_neumann):
    model = peft_model(use_neumann, scale=0.01 if use_neumann else 0.05)
    model.save_pretrained(tmp_path / "peft")
    adapter_file = import_oft(tmp_path / "peft")
    save_adapter_file(tmp_path / "oft.safetensors", adapter_file)
    oft_set = OFTAdapterSet.from_file(load_adapter_file(tmp_path / "oft.safetensors"))
    attention = model.base_model.model.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    x = torch.randn(3, 64)
    for peft_layer, ours in (
        (attention.to_q, "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
        (attention.to_out[0], "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0"),
    ):
        base = peft_layer.get_base_layer()
        with torch.no_grad():
            expected = peft_layer(x)
            got = oft_set.rotations[ours].linear(x, base.weight, base.bias)
        tolerance = 1e-5 if not use_neumann else 1e-4  # PEFT's Neumann series is itself approximate
        assert float((got - expected).abs().max()) < tolerance
        assert float((expected - base(x)).abs().max()) > 1e-3


def test_a_peft_neumann_adapter_far_from_orthogonal_is_refused(tmp_path):
    peft_model(True, scale=0.2).save_pretrained(tmp_path / "peft")
    with pytest.raises(AdapterFileError, match="far from orthogonal"):
        import_oft(tmp_path / "peft")


def test_peft_neumann_series_matches_peft():
    peft = pytest.importorskip("peft")
    from peft.tuners.oft.layer import OFTRotationModule

    module = OFTRotationModule(
        r=2, n_elements=6, block_size=4, in_features=8, use_cayley_neumann=True, num_cayley_neumann_terms=5
    )
    Q = torch.randn(2, 6) * 0.1
    theirs = module._cayley_batch(Q, 4, True, 5)
    rows, cols = torch.triu_indices(4, 4, 1)
    upper = torch.zeros(2, 4, 4)
    upper[:, rows, cols] = Q
    ours = peft_neumann_rotation((upper - upper.transpose(1, 2)).double(), 5, peft.__version__)
    torch.testing.assert_close(ours.float(), theirs, atol=1e-6, rtol=1e-6)


def test_old_peft_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "old"
    folder.mkdir()
    save_file(
        {"base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.oft_r": torch.zeros(4, 16, 16)},
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "OFT", "r": 4}))
    with pytest.raises(AdapterFileError, match=r"PEFT 0\.15 or older"):
        import_oft(folder)


def test_official_oft_dreambooth_output(tmp_path):
    state = official_oft_dreambooth_state("up_blocks.1.attentions.2", scale=0.01, seed=0)
    torch.save(state, tmp_path / "pytorch_lora_weights.bin")
    adapter_file = import_oft(tmp_path / "pytorch_lora_weights.bin")
    key = "output_blocks.5.1.transformer_blocks.0.attn2.to_out.0.oft.S"
    raw = state["up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor.to_out_oft.R"]
    torch.testing.assert_close(adapter_file.tensors[key], (raw - raw.transpose(1, 2)) / 2)
    assert adapter_file.adapters[0]["r"] == 4 and len(adapter_file.adapters[0]["modules"]) == 8


def test_official_shared_blocks_are_grouped_by_block_size(tmp_path):
    """block_share: one (k, k) block per layer; layers of different widths need groups of their own."""
    separate = official_oft_dreambooth_state("down_blocks.0.attentions.0", scale=0.01, seed=1)
    state = {k: v[0] for k, v in separate.items() if k.endswith(".R")}
    torch.save(state, tmp_path / "pytorch_lora_weights.bin")
    adapter_file = import_oft(tmp_path / "pytorch_lora_weights.bin")
    by_size = {g["block_size"]: g for g in adapter_file.adapters}
    assert set(by_size) == {80, 192} and all(g["block_share"] and "r" not in g for g in by_size.values())
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k" in by_size[192]["modules"]
    assert len(by_size[80]["modules"]) == 6 and len(by_size[192]["modules"]) == 2
    raw = state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_oft.R"]
    S = adapter_file.tensors["input_blocks.1.1.transformer_blocks.0.attn2.to_k.oft.S"]
    torch.testing.assert_close(S, (raw - raw.T) / 2)


def test_diffusers_names():
    assert (
        diffusers_to_comfy_path("unet.down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_q")
        == "input_blocks.8.1.transformer_blocks.0.attn1.to_q"
    )
    assert (
        diffusers_to_comfy_path("mid_block.attentions.0.transformer_blocks.3.attn2.to_k")
        == "middle_block.1.transformer_blocks.3.attn2.to_k"
    )
    assert (
        diffusers_to_comfy_path("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0")
        == "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0"
    )
    with pytest.raises(AdapterFileError, match="not inside a UNet attention block"):
        diffusers_to_comfy_path("text_model.encoder.layers.0.self_attn.q_proj")
