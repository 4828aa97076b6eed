"""TapTuneImageGrid: a batch of images as one labelled grid (base vs adapted, one cell per tap pair)."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.v0_0_2 import io

from ..training.visuals import MAX_GRID_PIXELS, grid_shape, label_band_height, labelled_grid, to_image_tensor, to_pil
from .common import CATEGORY_IMAGE, NodeInputError, bounded_integer, first_input, node_errors

NODE = "TapTuneImageGrid"
MAX_IMAGES = 256
MAX_LABEL_CHARACTERS = 200


def grid_labels(text: object, count: int) -> list[str]:
    """One label per line of ``text``; more lines than images is a mistake worth naming."""
    if not isinstance(text, str) or "\x00" in text or len(text) > MAX_IMAGES * (MAX_LABEL_CHARACTERS + 1):
        raise NodeInputError(NODE, "labels", "must be text: one label per line")
    lines = [line.strip() for line in text.splitlines()] if text.strip() else []
    if len(lines) > count:
        raise NodeInputError(NODE, "labels", f"{len(lines)} lines for {count} images: give one label per image")
    too_long = next((line for line in lines if len(line) > MAX_LABEL_CHARACTERS), None)
    if too_long is not None:
        raise NodeInputError(NODE, "labels", f"a label is longer than {MAX_LABEL_CHARACTERS} characters")
    return lines


class TapTuneImageGrid(io.ComfyNode):
    """Lay a batch of images out as one grid with a caption above each image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Image Grid",
            category=CATEGORY_IMAGE,
            description=(
                "Puts every image of a batch into one picture, each under its label: base vs adapted samples, or one "
                "cell per tap-point pair trained on the same subject (build the batch with stock Batch Images nodes; "
                "later images are resized to the first one's size)."
            ),
            inputs=[
                io.Image.Input("images", tooltip="The batch, in reading order (left to right, then down)."),
                io.String.Input(
                    "labels",
                    default="",
                    multiline=True,
                    tooltip="One label per line, in the order of the images; fewer lines leave the rest unlabelled.",
                ),
                io.Int.Input(
                    "columns",
                    default=0,
                    min=0,
                    max=MAX_IMAGES,
                    tooltip="Images per row; 0 = one row for up to six images, else a square grid.",
                    optional=True,
                ),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="One image: the labelled grid.")],
            # Whole lists in one call: a list of images (an image folder's output) is one grid, not one per image.
            is_input_list=True,
        )

    @classmethod
    def execute(cls, images: Any, labels: Any = None, columns: Any = None) -> io.NodeOutput:
        batches = images if isinstance(images, list) else [images]
        if not batches or not all(_is_image_batch(batch) for batch in batches):
            raise NodeInputError(NODE, "images", "connect an IMAGE batch or list")
        count = sum(int(batch.shape[0]) for batch in batches)
        if not 1 <= count <= MAX_IMAGES:
            raise NodeInputError(NODE, "images", f"needs 1..{MAX_IMAGES} images, got {count}")
        names = grid_labels(first_input(labels, ""), count)
        with node_errors(NODE, "columns"):
            rows, cols = grid_shape(count, bounded_integer(first_input(columns, 0), "columns", 0, MAX_IMAGES))
        height, width = int(batches[0].shape[1]), int(batches[0].shape[2])
        if rows * cols * width * (height + label_band_height(width)) > MAX_GRID_PIXELS:
            raise NodeInputError(
                NODE, "images", f"the grid would exceed {MAX_GRID_PIXELS // 2**20} megapixels; use smaller images"
            )
        # Every cell the size of the first image (a list may mix sizes).
        cells = [
            to_pil(batch[i : i + 1]).resize((width, height)) for batch in batches for i in range(int(batch.shape[0]))
        ]
        return io.NodeOutput(to_image_tensor(labelled_grid(cells, names, cols)))


def _is_image_batch(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[-1] in (3, 4) and value.shape[0] > 0
