"""TapTuneLoadImageFolder: images and kohya-style captions (same-name .txt files) from a folder."""

from __future__ import annotations

import re
from pathlib import Path

import folder_paths
import numpy as np
import torch
from comfy_api.v0_0_2 import io
from PIL import Image, ImageOps, UnidentifiedImageError

from ..adapter_core.errors import TapTuneError
from ..training.images import RESIZE_MODES, prepare_images
from .common import CATEGORY_TRAIN, NodeInputError, bounded_integer, choice, node_errors
from .user_paths import resolve_user_path

NODE = "TapTuneLoadImageFolder"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
#: Most images one folder may hold, and the largest picture (pixels) read.
MAX_IMAGES = 10_000
MAX_PIXELS = 64 * 2**20
MAX_CAPTION_BYTES = 64 * 1024


def _natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def input_folders() -> list[str]:
    """Subfolders of ComfyUI's input folder (relative paths), for the combo; never raises."""
    try:
        folders = folder_paths.get_input_subfolders()
    except OSError:
        return []
    return [f for f in folders if not any(part.startswith(".") for part in f.split("/"))]


def _read_image(file: Path) -> torch.Tensor:
    try:
        with Image.open(file) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise NodeInputError(NODE, "folder", f"is larger than {MAX_PIXELS} pixels", file.name)
            rgb = ImageOps.exif_transpose(opened).convert("RGB")
    except NodeInputError:
        raise
    except Image.DecompressionBombError:
        # Pillow refuses pictures far over its own limit before the header size reaches our check.
        raise NodeInputError(NODE, "folder", f"is larger than {MAX_PIXELS} pixels", file.name) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        raise NodeInputError(NODE, "folder", "is not a readable image (truncated or corrupt?)", file.name) from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)


def _read_caption(file: Path) -> str:
    caption = file.with_suffix(".txt")
    if not caption.exists():
        return ""
    try:
        if not caption.is_file() or caption.stat().st_size > MAX_CAPTION_BYTES:
            raise NodeInputError(NODE, "folder", f"must be a text file under {MAX_CAPTION_BYTES} bytes", caption.name)
        text = caption.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NodeInputError(NODE, "folder", "is not UTF-8 text", caption.name) from None
    except OSError:
        raise NodeInputError(NODE, "folder", "cannot be read", caption.name) from None
    return " ".join(text.split())


def read_folder(folder: Path) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """Images (``[H, W, 3]``, 0..1) in natural name order, their captions ('' where none), file names."""
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: _natural(p.name),
    )
    if len(files) > MAX_IMAGES:
        raise NodeInputError(NODE, "folder", f"holds more than {MAX_IMAGES} images")
    images = [_read_image(file) for file in files]
    captions = [_read_caption(file) for file in files]
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
                    optional=True,
                    tooltip="none: as stored; center_crop or buckets: as the trainer does.",
                ),
                io.Int.Input(
                    "resolution",
                    default=512,
                    min=64,
                    max=4096,
                    step=64,
                    optional=True,
                    tooltip="Size for center_crop and buckets.",
                ),
                io.Boolean.Input(
                    "require_captions",
                    default=False,
                    optional=True,
                    tooltip="Refuse images without a .txt caption.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="One IMAGE per file.", is_output_list=True),
                io.String.Output(display_name="captions", tooltip="One caption per line, in image order."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder: str = "", **kwargs: object) -> object:
        try:
            # The folder execute() would read, by the same rule; anything else is keyed by its text.
            path = resolve_user_path(NODE, "folder", folder, "dir", input_folder_only=True)
        except TapTuneError:
            return str(folder)
        try:
            return [(p.name, p.stat().st_mtime) for p in sorted(path.iterdir())], sorted(map(str, kwargs.items()))
        except OSError:
            return float("nan")  # never equal: the node runs again and reports what it finds

    @classmethod
    def execute(
        cls, folder: str, resize_mode: str = "none", resolution: int = 512, require_captions: bool = False
    ) -> io.NodeOutput:
        path = resolve_user_path(NODE, "folder", folder, "dir", input_folder_only=True)
        with node_errors(NODE, "resolution"):
            mode = choice(resize_mode, "resize_mode", RESIZE_MODES)
            size = bounded_integer(resolution, "resolution", 64, 4096)
        images, captions, names = read_folder(path)
        if not images:
            raise NodeInputError(NODE, "folder", f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        missing = [name for name, caption in zip(names, captions, strict=True) if not caption]
        # Some captions but not all would shift every later caption onto the wrong image (empty
        # lines are not prompts), so that is refused even when captions are optional.
        if missing and (require_captions is True or len(missing) < len(captions)):
            listed = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise NodeInputError(
                NODE, "folder", f"{len(missing)} of {len(captions)} images have no caption .txt ({listed})"
            )
        with node_errors(NODE, "folder"):
            images = prepare_images(images, mode, size, "folder") if mode != "none" else images
        return io.NodeOutput([img.unsqueeze(0) for img in images], "\n".join(captions))
