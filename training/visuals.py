"""Pictures a training run shows: the loss curve, and validation samples as previews."""

from __future__ import annotations

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
