"""Pictures a training run shows: the loss curve, and validation samples as previews."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw


def smooth(values: Sequence[float], factor: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected (what a loss plot usually shows)."""
    out, average = [], 0.0
    for i, value in enumerate(values):
        average = factor * average + (1 - factor) * value
        out.append(average / (1 - factor ** (i + 1)))
    return out


def loss_curve(losses: Sequence[float], width: int = 640, height: int = 320, title: str = "loss") -> Image.Image:
    """The per-step loss (light) and its moving average (dark) on white, with the axis range."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 56, width - 12, 24, height - 28
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    draw.text(
        (left, 4), f"{title}: {len(losses)} steps" + (f", last {losses[-1]:.4f}" if losses else ""), fill=(0, 0, 0)
    )
    finite = [v for v in losses if np.isfinite(v)]
    if not finite:
        return image
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        high = low + 1e-12
    draw.text((4, top), f"{high:.3g}", fill=(90, 90, 90))
    draw.text((4, bottom - 10), f"{low:.3g}", fill=(90, 90, 90))
    draw.text((right - 40, bottom + 6), f"step {len(losses)}", fill=(90, 90, 90))

    def points(values: Sequence[float]) -> list[tuple[float, float]]:
        span = max(1, len(values) - 1)
        return [
            (left + (right - left) * i / span, bottom - (bottom - top) * (min(max(v, low), high) - low) / (high - low))
            for i, v in enumerate(values)
        ]

    if len(finite) > 1:
        draw.line(points(losses), fill=(160, 190, 230), width=1)
        draw.line(points(smooth(losses)), fill=(20, 70, 160), width=2)
    return image


def to_image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE batch ``[1, H, W, 3]`` in 0..1."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """The first image of a ComfyUI IMAGE batch as PIL."""
    array = (image[0, ..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def sample_images(
    model: Any,
    vae: Any,
    positive: list[Any],
    negative: list[Any],
    latent_shape: tuple[int, ...],
    seeds: Sequence[int],
    steps: int,
    cfg: float,
    sampler_name: str = "euler",
    scheduler: str = "normal",
) -> torch.Tensor:
    """One image per seed from ``model`` with ComfyUI's sampler, decoded by ``vae``.

    Each image's noise comes from its own seed, so an image does not depend on the batch it
    was drawn in.
    """
    import comfy.sample

    latent = torch.zeros((len(seeds), *latent_shape))
    noise = torch.cat([comfy.sample.prepare_noise(latent[:1], seed) for seed in seeds])
    with torch.no_grad():
        samples = comfy.sample.sample(
            model,
            noise,
            steps,
            cfg,
            sampler_name,
            scheduler,
            positive,
            negative,
            latent,
            disable_pbar=True,
            seed=seeds[0],
        )
        return vae.decode(samples)


#: Refused before anything is drawn: a grid larger than this many pixels.
MAX_GRID_PIXELS = 64 * 2**20


def grid_shape(count: int, columns: int) -> tuple[int, int]:
    """``(rows, columns)`` of a grid of ``count`` cells; ``columns`` 0 means one row up to six, else square."""
    if columns <= 0:
        columns = count if count <= 6 else math.ceil(math.sqrt(count))
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def label_band_height(cell_width: int) -> int:
    """Height of the caption strip above each cell: readable at 64 px cells and at 1024 px ones."""
    return max(14, min(64, cell_width // 10))


def labelled_grid(images: Sequence[Image.Image], labels: Sequence[str], columns: int = 0) -> Image.Image:
    """``images`` (all one size) in a grid, each under its label (missing labels leave the strip blank)."""
    from PIL import ImageFont

    rows, columns = grid_shape(len(images), columns)
    width, height = images[0].size
    band = label_band_height(width)
    try:
        font = ImageFont.load_default(size=max(10, band * 3 // 4))
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    grid = Image.new("RGB", (columns * width, rows * (height + band)), "white")
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        left, top = column * width, row * (height + band)
        grid.paste(image.convert("RGB"), (left, top + band))
        if index < len(labels) and labels[index]:
            draw.text((left + 4, top + band // 8), labels[index], fill=(0, 0, 0), font=font)
    return grid
