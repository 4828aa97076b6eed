"""The files the example workflows name: demo adapters and a small captioned image folder.

All random (nothing can be downloaded): they exist so that every example workflow runs
as shipped on the demo checkpoint, and so the tests can run the examples too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEMO_TAP = "taptune-demo-tap.safetensors"
DEMO_OFT = "taptune-demo-oft.safetensors"
DEMO_IMAGES = "taptune_dog"


def write_demo_adapters(folder: Path, unet: torch.nn.Module, base: dict[str, Any]) -> None:
    """A tap adapter (the paper's recipe layout) and an OFT rotation for ``unet``, random."""
    import taptune.adapter_core as core

    folder.mkdir(parents=True, exist_ok=True)
    sites = core.find_tap_sites(unet)
    tap_set = core.TapAdapterSet.create(sites, core.TapConfig("attn2o", "ffni"), init="paper", seed=7)
    core.save_adapter_file(
        folder / DEMO_TAP,
        tap_set.to_file(base=base, trigger_word="sks", class_word="dog", notes="random demo adapter (make demo)"),
    )
    oft_set = core.OFTAdapterSet.create(
        core.oft_targets(core.ModelView(unet), "attention"), core.OFTConfig(r=4, coft=True)
    )
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for rotation in oft_set.rotations.values():
            rotation.P.copy_(torch.randn(rotation.P.shape, generator=g) * 0.01)
    core.save_adapter_file(folder / DEMO_OFT, oft_set.to_file(base=base, notes="random demo rotation (make demo)"))


def write_demo_images(folder: Path, count: int = 4, size: int = 256) -> None:
    """Smooth random pictures with kohya-style captions (``<name>.txt``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        g = torch.Generator().manual_seed(100 + i)
        low = torch.rand(1, 3, 4, 4, generator=g)
        image = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(folder / f"sks_dog_{i}.png")
        (folder / f"sks_dog_{i}.txt").write_text(f"a photo of sks dog, picture {i}")
