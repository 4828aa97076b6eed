"""What a training run hands back, and the gradient flags it holds while it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TrainResult:
    """What a run hands back: a frozen copy of the adapters and the story of the run."""

    adapter_set: Any
    losses: list[float]
    steps_done: int
    cancelled: bool
    trigger_word: str
    class_word: str
    spec: dict[str, Any]
    checkpoints: list[str] = field(default_factory=list)
    learning_rate: float = 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


@contextlib.contextmanager
def frozen_except(module: torch.nn.Module, trainable: list[torch.nn.Parameter]) -> Iterator[None]:
    """Only ``trainable`` gets gradients; every other flag is restored afterwards."""
    keep = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in module.parameters() if id(p) not in keep]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
