"""Data parallel training over a ``torch.distributed`` process group (what ``torchrun`` sets up).

Only the adapter gradients travel: after each global batch's backward pass they are flattened
into one buffer, summed over the ranks with one all-reduce and divided by the number of ranks,
then every rank takes the same optimiser step. The frozen UNet, the text encoder and the VAE
are loaded by every rank (see docs/distributed.md for what that means for memory).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from devtools.comfy_host import import_pack

import_pack()
from taptune.training.sync import even_shard  # noqa: E402


def launched_distributed() -> bool:
    """Whether this process is one of several ``torchrun`` started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's index on its machine (``torchrun``'s ``LOCAL_RANK``; 0 alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


class ProcessGroupSync:
    """The trainer's :class:`~taptune.training.sync.GradientSync` over the default process group."""

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # NCCL reduces GPU tensors only; gloo reduces CPU tensors.
        self.device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def shard(self, count: int) -> slice:
        """This rank's contiguous, equal share of a pool's batch."""
        return even_shard(count, self.rank, self.world_size)

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """One all-reduce of every adapter gradient (flattened), divided by the number of ranks."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        with torch.no_grad():
            flat = torch.cat([g.reshape(-1).to(self.device) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
            offset = 0
            for g in grads:
                count = g.numel()
                g.copy_(flat[offset : offset + count].view_as(g))
                offset += count

    def average(self, value: float) -> float:
        """The mean of ``value`` over the ranks (every rank gets the same number)."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.world_size

    @property
    def writes_files(self) -> bool:
        """Rank 0 writes checkpoints, previews and the adapter."""
        return self.rank == 0


def start_process_group(device: torch.device, timeout_s: float) -> ProcessGroupSync:
    """Join the group ``torchrun`` describes (NCCL on GPUs, gloo on CPUs); collectives give up after ``timeout_s``."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return ProcessGroupSync(device)


def stop_process_group() -> None:
    """Leave the group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
