"""A training run's settings (the node's widgets), their checks, and what they resolve to on a device."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import TrainingInputError
from .images import RESIZE_MODES
from .optimisation import OPTIMIZERS
from .schedule import SCHEDULES

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
PRIOR_TARGETS: tuple[str, ...] = ("class_images", "base_model")
#: Bounds of the integer settings (the node's widgets offer the same ranges).
MAX_STEPS = 1_000_000
MAX_BATCH = 64
MAX_ACCUMULATION = 1024
MAX_RESOLUTION = 4096


@dataclass
class TrainSettings:
    """Everything about a run that is not data: the node's widgets."""

    steps: int = 400
    learning_rate: float | None = None
    batch_size: int = 1
    seed: int = 0
    prior_loss_weight: float = 1.0
    #: What the class images' term compares with: ``class_images`` (DreamBooth's loss: the clean
    #: class image) or ``base_model`` (the base model's own prediction on the same noisy input).
    prior_target: str = "class_images"
    #: Weight of the trigger word's own prior: the instance latents, noised afresh, with the trigger
    #: word taken out of their prompts, keep the base model's prediction (0: off).
    trigger_word_prior: float = 0.0
    gradient_accumulation: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    resolution: int = 512
    resize_mode: str = "center_crop"
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume_from: str | None = None
    validation_prompt: str = ""
    validation_every: int = 0
    validation_steps: int = 20


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainingInputError(name, f"must be an integer in {low}..{high}, got {value!r}")


def _number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrainingInputError(name, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise TrainingInputError(name, f"must be within {low:g}..{high:g}, got {value:g}")


def check_settings(s: TrainSettings, learning_rate: float) -> None:
    """Raise :class:`TrainingInputError` naming the first setting that is out of range or unknown.

    NaN is refused everywhere (ComfyUI's own min/max checks let it through).
    """
    _integer("steps", s.steps, 1, MAX_STEPS)
    _integer("batch_size", s.batch_size, 1, MAX_BATCH)
    _integer("gradient_accumulation", s.gradient_accumulation, 1, MAX_ACCUMULATION)
    _integer("seed", s.seed, 0, 2**63 - 1)
    _integer("warmup_steps", s.warmup_steps, 0, MAX_STEPS)
    _integer("checkpoint_every", s.checkpoint_every, 0, MAX_STEPS)
    _integer("validation_every", s.validation_every, 0, MAX_STEPS)
    _integer("validation_steps", s.validation_steps, 1, 1000)
    _integer("resolution", s.resolution, 8, MAX_RESOLUTION)
    _number("learning_rate", learning_rate, 1e-12, 10.0)
    _number("prior_loss_weight", s.prior_loss_weight, 0.0, 1000.0)
    _number("trigger_word_prior", s.trigger_word_prior, 0.0, 1000.0)
    _number("weight_decay", s.weight_decay, 0.0, 10.0)
    for name, value, allowed in (
        ("optimizer", s.optimizer, OPTIMIZERS),
        ("lr_schedule", s.lr_schedule, SCHEDULES),
        ("precision", s.precision, PRECISIONS),
        ("resize_mode", s.resize_mode, RESIZE_MODES),
        ("prior_target", s.prior_target, PRIOR_TARGETS),
    ):
        if value not in allowed:
            raise TrainingInputError(name, f"unknown value {str(value)[:40]!r}; allowed: {', '.join(allowed)}")
    if s.resolution % 8:
        raise TrainingInputError("resolution", f"must be a multiple of 8, got {s.resolution}")


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = no autocast) for a precision choice on ``device``."""
    if choice not in PRECISIONS:
        raise TrainingInputError("precision", f"unknown precision {choice!r}; allowed: {', '.join(PRECISIONS)}")
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]
