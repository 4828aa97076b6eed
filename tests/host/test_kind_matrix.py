"""Every adapter kind on every UNet family: the same guarantees, checked the same way.

For each registered kind (tap adapters, OFT) and each family shape (SD 1.x, SD 2.x with
v-prediction, SDXL with its extra conditioning; narrow widths, so that training is cheap), on
ComfyUI's own UNet and model classes:

* strength 0 gives the base model bit for bit;
* loading and unloading a clone with the adapter leaves the base model bit-identical;
* two sets of the kind stack (each changes the output; together they differ from either);
* a set survives a file round trip (save, read, load onto the model) with the same output;
* a short training run through the trainer lowers the denoising error.

A kind added to the registry must add its builder to ``KIND_BUILDERS`` (a test checks that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from devtools.checkpoints import SD2_TINY, SD15_TINY, SDXL_SMALL, build_model_patcher
from devtools.standins import FixedTextEncoder, PixelVAE
from taptune.adapter_core import (
    KINDS,
    AdapterSetBase,
    ModelView,
    OFTConfig,
    OFTSpec,
    TapConfig,
    TapGroupSpec,
    TapSpec,
    load_adapter_set,
    save_adapter_file,
)
from taptune.patching.apply import apply_adapter_set
from taptune.patching.model_access import model_architecture, model_view
from taptune.training.settings import TrainSettings
from taptune.training.trainer import DreamBoothTrainer

from .training_helpers import denoising_error, smooth_image
from .unet_io import fixed_inputs, unet_output

FAMILIES = {
    "sd15": ("SD15", SD15_TINY, "eps", None),
    "sd2-v": ("SD20", SD2_TINY, "v", None),
    "sdxl": ("SDXL", SDXL_SMALL, "eps", 1280),
}


def _tap(view: ModelView, seed: int) -> AdapterSetBase[Any]:
    spec = TapSpec(
        (
            TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=8), init="paper"),
            TapGroupSpec(TapConfig("resi", "reso", mid_dim=4), init="paper"),
        )
    )
    return spec.build(view, seed)


def _oft(view: ModelView, seed: int) -> AdapterSetBase[Any]:
    oft_set = OFTSpec(OFTConfig(r=None, block_size=32, coft=False)).build(view, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in oft_set.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return oft_set


#: A non-trivial adapter set of each kind for a model (``view``), from a seed.
KIND_BUILDERS: dict[str, Callable[[ModelView, int], AdapterSetBase[Any]]] = {"tap": _tap, "oft": _oft}
#: A small trainable spec of each kind.
KIND_SPECS: dict[str, Any] = {
    "tap": TapSpec(
        (TapGroupSpec(TapConfig("attn2o", "ffni", mid_dim=16)), TapGroupSpec(TapConfig("resi", "reso", mid_dim=8)))
    ),
    "oft": OFTSpec(OFTConfig(r=None, block_size=32, coft=False)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> tuple[str, Any, Any, int | None]:
    name = request.param
    config_name, config, prediction, pooled = FAMILIES[name]
    model = build_model_patcher(config_name, config, seed=3, prediction=prediction)
    inputs = fixed_inputs(config["context_dim"], seed=5, size=8, adm=config.get("adm_in_channels"))
    return name, model, inputs, pooled


def _out(model: Any, inputs: Any) -> torch.Tensor:
    x, sigma, ctx, extra = inputs
    return unet_output(model, x, sigma, ctx, **extra)


def test_every_registered_kind_is_in_the_matrix():
    assert set(KIND_BUILDERS) == set(KINDS) == set(KIND_SPECS)


@pytest.mark.parametrize("kind", list(KIND_BUILDERS))
def test_strength_zero_unload_and_stacking(kind, family):
    _, model, inputs, _ = family
    base = _out(model, inputs)
    first = KIND_BUILDERS[kind](model_view(model), 1)
    second = KIND_BUILDERS[kind](model_view(model), 2)

    assert torch.equal(_out(apply_adapter_set(model, first, 0.0), inputs), base)
    one = _out(apply_adapter_set(model, first, 1.0), inputs)
    assert not torch.allclose(one, base)
    assert torch.equal(_out(model, inputs), base)  # unloading restored every weight and block

    stacked_model = apply_adapter_set(apply_adapter_set(model, first, 1.0), second, 1.0)
    stacked = _out(stacked_model, inputs)
    two = _out(apply_adapter_set(model, second, 1.0), inputs)
    assert not torch.allclose(stacked, one) and not torch.allclose(stacked, two)
    assert torch.equal(_out(model, inputs), base)


@pytest.mark.parametrize("kind", list(KIND_BUILDERS))
def test_file_round_trip_gives_the_same_output(kind, family, tmp_path):
    _, model, inputs, _ = family
    adapter_set = KIND_BUILDERS[kind](model_view(model), 4)
    path = save_adapter_file(tmp_path / f"{kind}.safetensors", adapter_set.to_file(base=model_architecture(model)))
    adapter_file, loaded = load_adapter_set(path, model_view(model))
    assert adapter_file.kind == kind and type(loaded) is type(adapter_set)
    assert loaded.describe() == adapter_set.describe()
    assert torch.equal(
        _out(apply_adapter_set(model, loaded), inputs), _out(apply_adapter_set(model, adapter_set), inputs)
    )


@pytest.mark.parametrize("kind", list(KIND_SPECS))
def test_short_training_lowers_the_error(kind, family):
    name, model, _, pooled = family
    context_dim = FAMILIES[name][1]["context_dim"]
    encoder = FixedTextEncoder(context_dim, pooled)
    vae = PixelVAE()
    images = [smooth_image(i, size=64) for i in range(2)]
    before = denoising_error(model, encoder, vae, images, "a photo of sks dog")
    settings = TrainSettings(
        steps=30,
        learning_rate=1e-2 if kind == "tap" else 3e-3,
        resolution=64,
        seed=0,
        batch_size=2,
        prior_loss_weight=0.0,
    )
    result = DreamBoothTrainer(
        model, encoder, vae, KIND_SPECS[kind], images, "a photo of sks dog", "", None, settings
    ).run()
    assert result.steps_done == 30 and not result.cancelled
    after = denoising_error(apply_adapter_set(model, result.adapter_set), encoder, vae, images, "a photo of sks dog")
    assert after < before, (kind, name, before, after)
