"""Sizes the README quotes: the recipe's parameter count on the full SD 1.5 UNet, OFT counts, base UNet sizes."""

from __future__ import annotations

import comfy.ops
import pytest
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from devtools.checkpoints import SD15_FULL, SDXL_SMALL
from taptune.adapter_core import (
    ModelView,
    OFTAdapterSet,
    OFTConfig,
    TapAdapterSet,
    TapConfig,
    find_tap_sites,
    oft_targets,
)
from taptune.nodes.load_adapter import KNOWN_UNET_PARAMETERS

SD20_FULL = {
    **SD15_FULL,
    "context_dim": 1024,
    "use_linear_in_transformer": True,
    "num_heads": -1,
    "num_head_channels": 64,
}
SDXL_FULL = {
    **SDXL_SMALL,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
    "num_head_channels": 64,
}


def meta_unet(config):
    """The full-size UNet on the meta device: exact structure and sizes, no memory."""
    return UNetModel(**config, dtype=None, device="meta", operations=comfy.ops.disable_weight_init)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family,config", [("SD15", SD15_FULL), ("SD20", SD20_FULL), ("SDXL", SDXL_FULL)])
def test_known_unet_sizes(family, config):
    assert count(meta_unet(config)) == KNOWN_UNET_PARAMETERS[family]


def test_the_papers_recipe_on_full_sd15():
    unet = meta_unet(SD15_FULL)
    recipe = TapAdapterSet.create(find_tap_sites(unet), TapConfig("attn2o", "ffni", mid_dim=60))
    widths = sorted(a.d_in for a in recipe.adapters.values())
    assert widths == [320] * 5 + [640] * 5 + [1280] * 6
    assert recipe.num_parameters() == 121 * 12480 + 16 * 60 == 1_511_040
    assert recipe.num_parameters() / count(unet) == pytest.approx(0.001758, abs=1e-6)


def test_oft_parameter_counts_on_the_papers_targets():
    layers = oft_targets(ModelView(meta_unet(SD15_FULL)), "attention")
    assert len(layers) == 16 * 8
    stored = {r: OFTAdapterSet.create(layers, OFTConfig(r=r)).num_parameters() for r in (2, 4, 8, 16)}
    assert stored == {2: 46_608_384, 4: 23_304_192, 8: 11_652_096, 16: 5_826_048}
    free = OFTAdapterSet.create(layers, OFTConfig(r=4)).num_parameters(free_only=True)
    assert free == 11_602_368
