"""The README's pocket-world pictures, made from the shipped model with ComfyUI's own sampler.

    .venv/bin/python -m devtools.pocket_pictures

Writes into ``docs/``:

* ``pocket_world.png`` -- the base model's generations for a few captions (two seeds each);
* ``pocket_subject.png`` -- the shipped subjects' photos;
* ``pocket_base_vs_adapted.png`` -- base vs the paper's tap recipe trained on the striped star
  (the demo's settings), for prompts with backgrounds its photos never show, and the class prompt.

Pictures are scaled up 3x (nearest neighbour) so that 64x64 pixels stay visible.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs"
SCALE = 3
WORLD_CAPTIONS = (
    "a red circle on a blue background",
    "a green square on a yellow background",
    "a blue triangle on a white background",
    "a yellow star on a black background",
    "a white star on a red background",
    "a black triangle on a green background",
)
ADAPTED_PROMPTS = (
    "a sks star",
    "a sks star on a yellow background",
    "a sks star on a black background",
    "a sks star on a green background",
    "a star",
)


def _pil(pictures: torch.Tensor) -> list[Image.Image]:
    out = []
    for p in pictures:
        array = (p.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
        out.append(image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST))
    return out


def main() -> int:
    from devtools.comfy_host import import_pack, prepare_comfy

    torch.set_num_threads(2)
    prepare_comfy(ROOT / ".host" / "pocket-train-base")
    import_pack()
    from devtools.demo_files import POCKET_SUBJECT, train_pocket_demo_adapter
    from devtools.pocket_eval import Sampler
    from taptune.patching.apply import apply_adapter_file
    from taptune.patching.pocket_model import load_pocket_model
    from taptune.pocket.subjects import SUBJECTS
    from taptune.pocket.world import to_tensor_images
    from taptune.training.visuals import labelled_grid

    model, clip, vae = load_pocket_model()
    sample = Sampler(model, clip, vae)
    images, labels = [], []
    for caption in WORLD_CAPTIONS:
        for seed in (0, 1):
            images += _pil(sample(caption, seed, 1))
            labels.append(caption.removeprefix("a ").replace(" on a ", " / ").removesuffix(" background"))
    labelled_grid(images, labels, columns=6).save(DOCS / "pocket_world.png")

    images, labels = [], []
    for name, sub in SUBJECTS.items():
        images += _pil(to_tensor_images(sub.photos())[:4])
        labels += [name] + [""] * 3
    labelled_grid(images, labels, columns=8).save(DOCS / "pocket_subject.png")

    with tempfile.TemporaryDirectory() as folder:
        adapter = Path(folder) / "pocket_demo_tap.safetensors"
        train_pocket_demo_adapter(model, clip, vae, SUBJECTS[POCKET_SUBJECT], adapter, coft=False)
        adapted = apply_adapter_file(model, adapter, 1.0)
    tuned = Sampler(adapted, clip, vae)
    images, labels = [], []
    for prompt in ADAPTED_PROMPTS:
        for which, sampler in (("base", sample), ("adapted", tuned)):
            images += _pil(sampler(prompt, 7, 2))
            labels += [f"{which}: {prompt}", ""]
    labelled_grid(images, labels, columns=4).save(DOCS / "pocket_base_vs_adapted.png")
    for name in ("pocket_world.png", "pocket_subject.png", "pocket_base_vs_adapted.png"):
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
