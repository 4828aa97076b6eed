"""Preparing training images: flattening ComfyUI IMAGE inputs, resizing, centre crops and aspect buckets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from .errors import TrainingInputError

RESIZE_MODES: tuple[str, ...] = ("center_crop", "buckets", "none")
BUCKET_STEP = 64
MAX_ASPECT = 2.5
#: Budgets of one set of training images (an image folder, a job's class images): each image
#: becomes a float32 tensor of 12 bytes per pixel, so 2^28 pixels in all is 3 GiB. Checked from
#: the files' headers (or the requested sizes) before anything is decoded or generated.
MAX_IMAGE_COUNT = 10_000
MAX_IMAGE_PIXELS = 64 * 2**20
MAX_TOTAL_PIXELS = 2**28
MAX_TOTAL_BYTES = 2 * 2**30


def flatten_images(images: torch.Tensor | Iterable[torch.Tensor] | None) -> list[torch.Tensor]:
    """Single images ``[H, W, 3]`` from an IMAGE batch ``[B, H, W, C]`` or a list of batches."""
    if images is None:
        return []
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    out = []
    for batch in batches:
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        out.extend(img[..., :3] for img in batch)
    return out


def check_image_budget(count: int, total_pixels: int, input_name: str, total_bytes: int = 0) -> None:
    """Refuse a set of ``count`` images of ``total_pixels`` pixels (``total_bytes`` on disk) over the budgets."""
    if count > MAX_IMAGE_COUNT:
        raise TrainingInputError(
            input_name, f"holds {count:,} images, more than {MAX_IMAGE_COUNT:,}; use fewer images (or split the set)"
        )
    if total_pixels > MAX_TOTAL_PIXELS:
        raise TrainingInputError(
            input_name,
            f"{count:,} images of {total_pixels:,} pixels in all are more than the {MAX_TOTAL_PIXELS:,} pixels "
            f"({MAX_TOTAL_PIXELS * 12 // 2**30} GiB as tensors) one set may hold; use fewer or smaller images",
        )
    if total_bytes > MAX_TOTAL_BYTES:
        raise TrainingInputError(
            input_name,
            f"{count:,} image files of {total_bytes:,} bytes in all are more than the {MAX_TOTAL_BYTES:,} bytes "
            "one set may read; use fewer or smaller files",
        )


def _resize(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    chw = img.permute(2, 0, 1).unsqueeze(0).float()
    out = F.interpolate(chw, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0)[0].permute(1, 2, 0)


def cover_and_crop(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize so the image covers ``height x width``, then crop the centre."""
    h, w = img.shape[:2]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    resized = _resize(img, rh, rw) if (rh, rw) != (h, w) else img.float()
    top, left = (rh - height) // 2, (rw - width) // 2
    return resized[top : top + height, left : left + width]


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """Aspect-ratio buckets ``(height, width)``: sides multiples of 64, area at most ``resolution^2``."""
    area = resolution * resolution
    buckets = set()
    for width in range(BUCKET_STEP, 4 * resolution + 1, BUCKET_STEP):
        height = (area // width) // BUCKET_STEP * BUCKET_STEP
        if height >= BUCKET_STEP and max(width / height, height / width) <= MAX_ASPECT:
            buckets.add((height, width))
    return sorted(buckets)


def nearest_bucket(height: int, width: int, resolution: int) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's."""
    ratio = width / height
    return min(bucket_sizes(resolution), key=lambda b: abs((b[1] / b[0]) / ratio - 1.0))


def prepare_images(images: Sequence[torch.Tensor], mode: str, resolution: int, input_name: str) -> list[torch.Tensor]:
    """Images ready for the VAE: sides multiples of 8, per ``mode``.

    ``center_crop``: every image becomes ``resolution x resolution``. ``buckets``: each
    image goes to its nearest aspect-ratio bucket. ``none``: used as given, which
    requires one common size.
    """
    if mode not in RESIZE_MODES:
        raise TrainingInputError("resize_mode", f"unknown mode {mode!r}; allowed: {', '.join(RESIZE_MODES)}")
    if mode == "center_crop":
        return [cover_and_crop(img, resolution, resolution) for img in images]
    if mode == "buckets":
        return [cover_and_crop(img, *nearest_bucket(img.shape[0], img.shape[1], resolution)) for img in images]
    sizes = sorted({tuple(img.shape[:2]) for img in images})
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for h, w in sizes[:4])
        raise TrainingInputError(
            input_name,
            f"images of mixed sizes ({listed}); set resize_mode to center_crop or buckets, or resize them first",
        )
    if sizes and (sizes[0][0] % 8 or sizes[0][1] % 8):
        h, w = sizes[0]
        raise TrainingInputError(
            input_name, f"image size {w}x{h} is not a multiple of 8; set resize_mode to center_crop"
        )
    return [img.float() for img in images]
