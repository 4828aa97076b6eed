"""TapTuneLoadImageFolder: images and kohya-style captions (same-name .txt files) from a folder."""

from __future__ import annotations

from pathlib import Path

import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..adapter_core.errors import TapTuneError
from ..training import image_files
from ..training.image_files import IMAGE_SUFFIXES, MAX_CAPTION_BYTES
from ..training.images import MAX_IMAGE_COUNT, MAX_IMAGE_PIXELS, RESIZE_MODES, prepare_images
from .common import CATEGORY_TRAIN, NodeInputError, bounded_integer, choice, node_errors
from .user_paths import resolve_user_path

NODE = "TapTuneLoadImageFolder"
#: Most images one folder may hold, and the largest picture (pixels) read (totals: training/images.py).
MAX_IMAGES = MAX_IMAGE_COUNT
MAX_PIXELS = MAX_IMAGE_PIXELS
__all__ = ["IMAGE_SUFFIXES", "MAX_CAPTION_BYTES", "MAX_IMAGES", "MAX_PIXELS", "TapTuneLoadImageFolder", "read_folder"]


def input_folders() -> list[str]:
    """Subfolders of ComfyUI's input folder (relative paths), for the combo; never raises."""
    try:
        folders = folder_paths.get_input_subfolders()
    except OSError:
        return []
    return [f for f in folders if not any(part.startswith(".") for part in f.split("/"))]


def read_folder(folder: Path) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """Images (``[H, W, 3]``, 0..1) in natural name order, their captions ('' where none), file names.

    Links, budgets and captions are checked before any picture is decoded (``training/image_files.py``);
    problems are the node's ``folder`` error naming the file.
    """
    with node_errors(NODE, "folder"):
        return image_files.read_folder(folder)


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
