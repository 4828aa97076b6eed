"""TapTuneLoadImageFolder: images and kohya-style captions (same-name .txt files) from a folder."""

from __future__ import annotations

import re
from pathlib import Path

import folder_paths
import numpy as np
import torch
from comfy_api.v0_0_2 import io
from PIL import Image, ImageOps

from ..training.errors import TrainingInputError
from ..training.images import RESIZE_MODES, prepare_images
from .common import CATEGORY_TRAIN, NodeInputError

NODE = "TapTuneLoadImageFolder"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def input_folders() -> list[str]:
    """Subfolders of ComfyUI's input folder (relative paths), for the combo."""
    return [f for f in folder_paths.get_input_subfolders() if not any(part.startswith(".") for part in f.split("/"))]


def read_folder(folder: Path) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """Images (``[H, W, 3]``, 0..1) in natural name order, their captions ('' where none), file names."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural(p.name))
    images, captions = [], []
    for file in files:
        with Image.open(file) as opened:
            rgb = ImageOps.exif_transpose(opened).convert("RGB")
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0))
        caption = file.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8").strip() if caption.exists() else ""
        captions.append(" ".join(text.split()))
    return images, captions, [f.name for f in files]


class TapTuneLoadImageFolder(io.ComfyNode):
    """Load a folder of training images with their captions, in the same order."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Load Image Folder",
            category=CATEGORY_TRAIN,
            description=(
                "Loads every image of a folder inside ComfyUI's input folder (natural name order) and, kohya-style, "
                "the caption of each from the .txt file of the same name. Images come out as a list (they may differ "
                "in size); the captions as one STRING, one line per image in the same order, for the instance_prompt "
                "of TapTuneDreamBoothTrain (the paper's fine-tuning on text-image pairs)."
            ),
            inputs=[
                io.Combo.Input(
                    "folder", options=input_folders() or [""], tooltip="A folder inside ComfyUI's input folder."
                ),
                io.Combo.Input(
                    "resize_mode",
                    options=list(RESIZE_MODES),
                    default="none",
                    tooltip="none: as stored; center_crop or buckets: as the trainer does.",
                ),
                io.Int.Input(
                    "resolution", default=512, min=64, max=4096, step=64, tooltip="Size for center_crop and buckets."
                ),
                io.Boolean.Input("require_captions", default=False, tooltip="Refuse images without a .txt caption."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="One IMAGE per file.", is_output_list=True),
                io.String.Output(display_name="captions", tooltip="One caption per line, in image order."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder: str = "", **kwargs: object) -> object:
        path = Path(folder_paths.get_input_directory()) / folder
        if not path.is_dir():
            return folder
        return [(p.name, p.stat().st_mtime) for p in sorted(path.iterdir())]

    @classmethod
    def execute(
        cls, folder: str, resize_mode: str = "none", resolution: int = 512, require_captions: bool = False
    ) -> io.NodeOutput:
        root = Path(folder_paths.get_input_directory())
        path = (root / folder).resolve()
        if not folder or not path.is_dir() or (path != root.resolve() and root.resolve() not in path.parents):
            raise NodeInputError(NODE, "folder", f"{folder!r} is not a folder inside {root}")
        images, captions, names = read_folder(path)
        if not images:
            raise NodeInputError(NODE, "folder", f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        missing = [name for name, caption in zip(names, captions, strict=True) if not caption]
        # Some captions but not all would shift every later caption onto the wrong image (empty
        # lines are not prompts), so that is refused even when captions are optional.
        if missing and (require_captions or len(missing) < len(captions)):
            listed = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise NodeInputError(
                NODE, "folder", f"{len(missing)} of {len(captions)} images have no caption .txt ({listed})"
            )
        try:
            images = prepare_images(images, resize_mode, int(resolution), "folder") if resize_mode != "none" else images
        except TrainingInputError as exc:
            raise NodeInputError(NODE, exc.input_name, str(exc)) from None
        return io.NodeOutput([img.unsqueeze(0) for img in images], "\n".join(captions))
