"""How a run shares its work between processes: the single-process default and the protocol.

The trainer is written for one process. A data-parallel launcher (``headless/``, under
``torchrun``) hands it a :class:`GradientSync` that knows the process group; inside ComfyUI
the trainer uses :class:`SingleProcess`, which changes nothing, so the pack itself never
imports ``torch.distributed``.

Every rank draws the *whole* global batch from the same generator (the same images, noise
levels and noise as one process would), computes the loss on its own rows of it, and the
gradients of the adapter parameters are averaged before the one optimiser step. Because the
random state advances identically on every rank, a checkpoint written by rank 0 is the same
state a single process would have saved: it resumes under any number of processes.
"""

from __future__ import annotations

from typing import Protocol

import torch


class GradientSync(Protocol):
    """What the trainer asks of a process group (see :class:`SingleProcess` for the meaning)."""

    rank: int
    world_size: int

    def shard(self, count: int) -> slice:
        """The rows of a pool's batch of ``count`` samples this process computes."""
        ...

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the processes (before the optimiser step)."""
        ...

    def average(self, value: float) -> float:
        """The mean of a number over the processes (the step's loss, for reports and checkpoints)."""
        ...

    @property
    def writes_files(self) -> bool:
        """Whether this process writes checkpoints and previews (exactly one does)."""
        ...


class SingleProcess:
    """One process does everything: every row is its own, averages are the values themselves."""

    rank = 0
    world_size = 1

    def shard(self, count: int) -> slice:
        """All rows."""
        return slice(0, count)

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Nothing to average."""

    def average(self, value: float) -> float:
        """The value itself."""
        return value

    @property
    def writes_files(self) -> bool:
        """Always."""
        return True


def even_shard(count: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s equal, contiguous share of ``count`` rows (``count`` divisible by ``world_size``)."""
    per_rank = count // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)
