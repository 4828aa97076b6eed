"""Stand-ins for the text encoder and VAE of in-process models (which have none).

Used where only the UNet matters (SD 2.x / SDXL-shaped test models, benchmarks): they
answer the calls ComfyUI's CLIP and VAE answer, with fixed pseudo-random outputs.
"""

from __future__ import annotations

import hashlib

import torch


class FixedTextEncoder:
    """``tokenize`` / ``encode_from_tokens_scheduled`` with a context (and pooled vector) derived from the text.

    Counts its calls, so callers can check that prompts are encoded once.
    """

    def __init__(self, context_dim: int, pooled_dim: int | None = None) -> None:
        self.context_dim, self.pooled_dim = context_dim, pooled_dim
        self.calls: list[str] = []

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        self.calls.append(tokens)
        seed = int(hashlib.sha256(tokens.encode()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, self.pooled_dim, generator=g)} if self.pooled_dim else {}
        return [[torch.randn(1, 77, self.context_dim, generator=g), extra]]


class PixelVAE:
    """``encode``: pixels ``[B, H, W, 3]`` to 4-channel latents at 1/8 size (average pooling)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.cat([x, x.mean(1, keepdim=True)], dim=1)
