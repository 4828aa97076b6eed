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
#: The pocket model's demo: a shipped subject, its prompts, and adapters trained on it when the demo is made.
POCKET_SUBJECT = "striped_star"
POCKET_IMAGES = f"pocket_{POCKET_SUBJECT}"
POCKET_SUBJECT_PROMPT = "a sks star"
POCKET_CLASS_PROMPT = "a star"
#: A background none of the subject's photos has: the adapted model puts the subject in a new context.
POCKET_SAMPLE_PROMPT = "a sks star on a yellow background"
POCKET_TAP = "taptune/pocket_striped_star_attn2o_ffni.safetensors"
POCKET_OFT = "taptune/pocket_striped_star_coft.safetensors"
POCKET_LORA = "taptune-pocket-demo-lora.safetensors"
POCKET_TRAIN_STEPS = 150
POCKET_TAP_LEARNING_RATE = 2e-3
POCKET_OFT_LEARNING_RATE = 1e-2
#: COFT's eps scaled to the pocket UNet's small blocks (docs/decisions.md: the paper's 6e-5 allows almost nothing)
POCKET_COFT_EPS = 1e-3
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


def write_pocket_demo_files(base: Path) -> list[str]:
    """The pocket variants' files in ComfyUI base folder ``base``: the subject's photos (with
    per-photo prompts), a tap adapter and a COFT rotation trained on them with the pack's own
    DreamBooth run (a minute or two on a CPU), and a random LoRA for the pocket UNet.

    Needs ComfyUI prepared and the pack imported. What exists already is kept. Returns what it wrote.
    """
    from devtools.pocket_eval import write_subject_folder
    from taptune.pocket.subjects import subject

    written = []
    sub = subject(POCKET_SUBJECT)
    if not (base / "input" / POCKET_IMAGES).exists():
        write_subject_folder(base / "input", sub)
        written.append(POCKET_IMAGES)
    adapters = base / "models" / "adapters"
    lora = base / "models" / "loras" / POCKET_LORA
    missing = [name for name in (POCKET_TAP, POCKET_OFT) if not (adapters / name).exists()]
    if not (missing or not lora.exists()):
        return written
    from taptune.patching.pocket_model import load_pocket_model

    model, clip, vae = load_pocket_model()
    if not lora.exists():
        write_demo_lora(lora, model.model.diffusion_model)
        written.append(POCKET_LORA)
    for name in missing:
        train_pocket_demo_adapter(model, clip, vae, sub, adapters / name, coft=name == POCKET_OFT)
        written.append(name)
    return written


def train_pocket_demo_adapter(model: Any, clip: Any, vae: Any, sub: Any, path: Path, coft: bool) -> None:
    """The demo's recipe on the pocket model: the paper's tap adapter or COFT r=4, prior preservation, 150 steps."""
    import taptune.adapter_core as core
    from devtools.pocket_eval import Sampler
    from taptune.pocket.world import to_tensor_images
    from taptune.training.run import run_dreambooth
    from taptune.training.run_inputs import ImageSet, RunInputs
    from taptune.training.settings import TrainSettings

    photos = to_tensor_images(sub.photos())
    classes = Sampler(model, clip, vae)(POCKET_CLASS_PROMPT, 0, 24)
    spec: Any = core.OFTSpec(core.OFTConfig(r=4, coft=True, eps=POCKET_COFT_EPS)) if coft else core.TapSpec()
    settings = TrainSettings(
        steps=POCKET_TRAIN_STEPS,
        learning_rate=POCKET_OFT_LEARNING_RATE if coft else POCKET_TAP_LEARNING_RATE,
        seed=0,
        resolution=64,
        resize_mode="none",
    )
    inputs = RunInputs(
        ImageSet(list(photos), POCKET_SUBJECT_PROMPT), ImageSet(list(classes), POCKET_CLASS_PROMPT), settings
    )
    _, trained = run_dreambooth(model, clip, vae, spec, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    core.save_adapter_file(path, trained.to_file())
