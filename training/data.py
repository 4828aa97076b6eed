"""The training set: latents encoded once, prompts paired with them, and the batches drawn each step.

Instance and class images live in separate pools. A batch takes ``batch_size`` samples
from each pool (class only with prior preservation); inside a pool all samples of one
batch share a latent size (aspect buckets). The prompt of sample ``i`` is always the one
that was given for that image: :class:`Batch` carries both the image indices and their
prompts so the pairing can be checked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Pool:
    """Latents ``[C, h, w]`` with their prompts, grouped by latent size."""

    latents: list[torch.Tensor]
    prompts: list[str]

    def __post_init__(self) -> None:
        if len(self.latents) != len(self.prompts):
            raise ValueError("one prompt per latent")  # a programming error, never user input
        self.by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, latent in enumerate(self.latents):
            self.by_shape[tuple(latent.shape)].append(i)

    def __len__(self) -> int:
        return len(self.latents)


@dataclass
class Batch:
    """One pool's part of a step: which images, their latents and prompts (same order)."""

    indices: list[int]
    latents: torch.Tensor
    prompts: list[str]


class BatchSampler:
    """Draws batches from a pool in shuffled epochs, reproducibly from a ``torch.Generator``."""

    def __init__(self, pool: Pool, batch_size: int) -> None:
        self.pool = pool
        self.batch_size = batch_size
        self._queue: list[int] = []

    def state(self) -> list[int]:
        """What has to be saved to continue the same sequence (with the generator state)."""
        return list(self._queue)

    def restore(self, queue: list[int]) -> None:
        """Continue the sequence a saved :meth:`state` describes; indices must be of this pool."""
        if not all(isinstance(i, int) and 0 <= i < len(self.pool) for i in queue):
            raise ValueError("the saved data order does not fit this pool")
        self._queue = list(queue)

    def next(self, generator: torch.Generator) -> Batch:
        """The next batch: its first image decides the latent size, the rest come from that size."""
        if not self._queue:
            self._queue = torch.randperm(len(self.pool), generator=generator).tolist()
        first = self._queue.pop(0)
        shape = tuple(self.pool.latents[first].shape)
        chosen = [first]
        same = [i for i in self._queue if tuple(self.pool.latents[i].shape) == shape]
        for i in same[: self.batch_size - 1]:
            self._queue.remove(i)
            chosen.append(i)
        while len(chosen) < self.batch_size:  # a small bucket: repeat its images
            members = self.pool.by_shape[shape]
            chosen.append(members[int(torch.randint(len(members), (1,), generator=generator))])
        return Batch(
            chosen, torch.stack([self.pool.latents[i] for i in chosen]), [self.pool.prompts[i] for i in chosen]
        )


def encode_latents(vae: Any, model: Any, images: list[torch.Tensor], chunk: int = 4) -> list[torch.Tensor]:
    """Latents in the model's space (the VAE's encoding, scaled by the model's latent format).

    Encoded once, without gradients, in chunks of equal size; returned as normal
    (non-inference) CPU tensors.
    """
    out: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        by_size[tuple(img.shape)].append(i)
    with torch.inference_mode(False), torch.no_grad():
        for indices in by_size.values():
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                pixels = torch.stack([images[i] for i in part])
                latents = model.model.process_latent_in(vae.encode(pixels[..., :3]))
                for i, latent in zip(part, latents, strict=True):
                    out[i] = latent.detach().float().cpu().clone()
    return [t for t in out if t is not None]
