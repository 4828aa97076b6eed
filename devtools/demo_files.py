"""The files the example workflows name: demo adapters, a demo LoRA and a small captioned image folder.

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
DEMO_LORA = "taptune-demo-lora.safetensors"
#: The attention projections the demo LoRA changes (ComfyUI reads ``diffusion_model.<layer>.lora_up/down``).
LORA_LAYERS = ("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v")


def write_demo_files(base: Path, unet: torch.nn.Module, architecture: dict[str, Any], image_size: int = 256) -> None:
    """Everything the CPU-sized examples name, in ComfyUI base folder ``base``, made for ``unet``.

    What exists already is kept (an earlier demo's files, or a user's own under these names).
    """
    adapters = base / "models" / "adapters"
    if not ((adapters / DEMO_TAP).exists() or (adapters / DEMO_OFT).exists()):
        write_demo_adapters(adapters, unet, architecture)
    if not (base / "models" / "loras" / DEMO_LORA).exists():
        write_demo_lora(base / "models" / "loras" / DEMO_LORA, unet)
    if not (base / "input" / DEMO_IMAGES).exists():
        write_demo_images(base / "input" / DEMO_IMAGES, size=image_size)


def write_demo_lora(path: Path, unet: torch.nn.Module, rank: int = 4) -> None:
    """A random rank-``rank`` LoRA in ComfyUI's generic key format, for stock ``LoraLoaderModelOnly``."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(9)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_LAYERS):
            key = f"diffusion_model.{name}"
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.05
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.05
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"notes": "random demo LoRA (make demo)"})


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
