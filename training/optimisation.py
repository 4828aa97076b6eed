"""Optimisers, learning-rate schedules and loss scaling for one phase of a run.

A run has a main phase and, when the spec asks for one (OFT's magnitude fitting), a post
phase with its own optimiser over other parameters and its own schedule (:class:`Phase`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapter_core.kind import Phase
from .schedule import LearningRateSchedule

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def phase_at(step: int, main_steps: int) -> Phase:
    """The phase step ``step`` (0-based) belongs to."""
    return Phase.MAIN if step < main_steps else Phase.POST


def build_optimizer(
    name: str,
    parameters: list[nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    schedule: LearningRateSchedule,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser ``name`` over ``parameters`` and its scheduler following ``schedule``."""
    kwargs: dict[str, Any] = {"lr": learning_rate}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    if name in ("adamw", "adam"):
        kwargs["foreach"] = False  # the same arithmetic on every device, for reproducible runs
    optimizer = OPTIMIZERS[name](parameters, **kwargs)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def follow_schedule(optimizer: torch.optim.Optimizer, scheduler: Any, schedule: LearningRateSchedule) -> None:
    """Make a restored scheduler follow ``schedule`` (this run's total steps) from where it stands."""
    scheduler.lr_lambdas = [schedule]
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * schedule(scheduler.last_epoch)


def loss_scaler(device: torch.device, autocast_dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 autocast (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimiser would apply is finite."""
    return all(
        bool(torch.isfinite(p.grad).all())
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    )


@dataclass
class PhaseOptimisation:
    """The optimiser state of the current phase."""

    phase: Phase
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every restored state tensor has its parameter's shape (a damaged checkpoint fails here, not mid-run)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError("optimiser state does not match the adapter")
