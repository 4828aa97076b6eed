"""TapTuneTrainingSettings: what most training runs leave alone, in a node of its own.

The trainer (``TapTuneDreamBoothTrain``) shows what most runs change; everything else (image
resizing, schedule, warm-up, optimiser, weight decay, precision, gradient accumulation and
checkpointing, checkpoints, numbered adapter saves, previews, resume) comes from an optional
``settings`` input fed by this node. Without it the trainer uses the defaults this node shows.
The settings travel as a plain dict of checked values (``TAPTUNE_TRAINING_SETTINGS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.v0_0_2 import io

from ..training.images import RESIZE_MODES
from ..training.optimisation import OPTIMIZERS
from ..training.schedule import SCHEDULES
from ..training.settings import PRECISIONS, PRIOR_TARGETS
from .common import (
    CATEGORY_TRAIN,
    NodeInputError,
    bounded_integer,
    bounded_number,
    choice,
    first_input,
    node_errors,
)

NODE = "TapTuneTrainingSettings"
NO_RESUME = "none"
#: The socket type between this node and the trainer (and the export node).
TapTuneTrainingSettingsType = io.Custom("TAPTUNE_TRAINING_SETTINGS")


def checkpoint_root() -> Path:
    """Where training checkpoints go: <output>/taptune/checkpoints/<run>/step_NNNNNN.ckpt."""
    return Path(folder_paths.get_output_directory()) / "taptune" / "checkpoints"


def checkpoint_choices() -> list[str]:
    """``none`` plus every checkpoint under the checkpoint folder, newest first; never raises.

    Building the node's schema must not fail because of what lies in a folder (a dangling link,
    a file removed while listing): such entries are left out.
    """
    root = checkpoint_root()
    found: list[tuple[float, str]] = []
    try:
        runs = list(root.iterdir()) if root.is_dir() else []
        for run in runs:
            for file in run.glob("step_*.ckpt") if run.is_dir() else ():
                try:
                    found.append((file.stat().st_mtime, file.relative_to(root).as_posix()))
                except (OSError, ValueError):
                    continue
    except OSError:
        pass
    return [NO_RESUME] + [name for _, name in sorted(found, reverse=True)]


def resume_path(value: object, node: str = NODE) -> str | None:
    """The checkpoint file a ``resume_from`` value names, only inside the checkpoint folder."""
    if value is None or value == NO_RESUME:
        return None
    refusal = NodeInputError(node, "resume_from", "must be one of the checkpoints listed (output/taptune/checkpoints)")
    if not isinstance(value, str) or "\x00" in value or len(value) > 1024 or not value.endswith(".ckpt"):
        raise refusal
    root = checkpoint_root()
    try:
        real_root = root.resolve()
        real = (root / value).resolve(strict=True)
    except (OSError, RuntimeError):
        raise refusal from None
    if real_root not in real.parents or not real.is_file():
        raise refusal
    return str(real)


def settings_inputs() -> list[io.Input]:
    """The inputs of TapTuneTrainingSettings, every one optional with the default a run uses without the node."""
    return [
        io.Combo.Input(
            "resize_mode",
            optional=True,
            options=list(RESIZE_MODES),
            default="center_crop",
            tooltip="center_crop: square crops at the trainer's resolution; buckets: nearest aspect-ratio bucket; "
            "none: as given (one common size).",
        ),
        io.Combo.Input(
            "lr_schedule",
            optional=True,
            options=list(SCHEDULES),
            default="constant",
            tooltip="Learning-rate schedule after warm-up (the papers use constant).",
        ),
        io.Int.Input(
            "warmup_steps", optional=True, default=0, min=0, max=100000, tooltip="Linear warm-up steps (0: none)."
        ),
        io.Combo.Input(
            "optimizer",
            optional=True,
            options=list(OPTIMIZERS),
            default="adamw",
            tooltip="The optimiser of the adapter parameters.",
        ),
        io.Float.Input(
            "weight_decay",
            optional=True,
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.001,
            tooltip="Decoupled weight decay (AdamW) or L2 (0: none, the papers' setting).",
        ),
        io.Combo.Input(
            "precision",
            optional=True,
            options=list(PRECISIONS),
            default="auto",
            tooltip="Autocast dtype; adapters keep fp32 master weights. auto: bf16 (or fp16 with loss scaling) on "
            "GPUs, fp32 on the CPU. The trainer's output text says which one a run used.",
        ),
        io.Int.Input(
            "gradient_accumulation",
            optional=True,
            default=1,
            min=1,
            max=1024,
            tooltip="Micro-batches per optimiser step: a larger effective batch for the same memory.",
        ),
        io.Boolean.Input(
            "gradient_checkpointing",
            optional=True,
            default=False,
            tooltip="Recompute block activations in the backward pass: much less GPU memory, about 30 % slower.",
        ),
        io.Int.Input(
            "save_every",
            optional=True,
            default=0,
            min=0,
            max=100000,
            tooltip="Every N steps, write the adapter so far as models/adapters/taptune/steps/<run>_stepNNNNN.safetensors "
            "(TapTune Load Adapter lists it at once: try it in another tab while training goes on). 0: off.",
        ),
        io.Int.Input(
            "keep_last",
            optional=True,
            default=3,
            min=1,
            max=1000,
            tooltip="How many of the run's numbered adapter files (save_every) to keep; older ones of the same run "
            "are deleted.",
        ),
        io.Int.Input(
            "checkpoint_every",
            optional=True,
            default=0,
            min=0,
            max=100000,
            tooltip="Write a resumable checkpoint (optimiser state included) every N steps (0: only on Cancel).",
        ),
        io.Combo.Input(
            "resume_from",
            optional=True,
            options=checkpoint_choices(),
            default=NO_RESUME,
            tooltip="Continue a run from one of its checkpoints (output/taptune/checkpoints), for example one "
            "written when it was cancelled.",
        ),
        io.String.Input(
            "validation_prompt",
            optional=True,
            default="",
            tooltip="Sampled as a preview on the trainer while it trains, with the run's seed (empty: the "
            "instance prompt).",
        ),
        io.Int.Input(
            "validation_every",
            optional=True,
            default=0,
            min=0,
            max=100000,
            tooltip="Preview every N steps (0: no previews).",
        ),
        io.Int.Input(
            "validation_steps", optional=True, default=20, min=1, max=200, tooltip="Sampler steps of each preview."
        ),
        # Added after the others: last, so that workflows saved before keep their widget values in place.
        io.Combo.Input(
            "prior_target",
            optional=True,
            options=list(PRIOR_TARGETS),
            default="class_images",
            tooltip="What the class images teach. class_images: DreamBooth's loss, the model denoises them. "
            "base_model: the model keeps the base model's own prediction on them (the adapters switched off for "
            "one more forward pass per step): the class changes much less.",
        ),
        io.Float.Input(
            "trigger_word_prior",
            optional=True,
            default=0.0,
            min=0.0,
            max=100.0,
            step=0.5,
            tooltip="Teaches that the subject comes with the trigger word only (0: off). Each step the instance "
            "images are denoised once more with the trigger word taken out of their prompts ('a photo of dog' for "
            "'a photo of sks dog'), toward the base model's own prediction: the class changes less, and the "
            "subject binds to the word, not to the pictures. About half again the time per step; every instance "
            "prompt must hold the trigger word. On the pocket world 10 cut the tap adapter's class change from 0.17 to 0.09.",
        ),
    ]


#: name -> default of every setting this node gives (what a run uses when no settings are connected).
def settings_defaults() -> dict[str, Any]:
    defaults = {}
    for item in settings_inputs():
        defaults[item.id] = item.default
    return defaults


def checked_settings(values: dict[str, Any], node: str = NODE) -> dict[str, Any]:
    """``values`` (widget values by name; missing ones take their defaults) checked against the node's inputs."""
    checked: dict[str, Any] = {}
    for item in settings_inputs():
        value = values.get(item.id, item.default)
        if value is None:
            value = item.default
        if item.id == "resume_from":
            checked[item.id] = value if value == NO_RESUME else (resume_path(value, node) and value)
        elif isinstance(item, io.Combo.Input):
            checked[item.id] = choice(value, item.id, item.options)
        elif isinstance(item, io.Boolean.Input):
            if not isinstance(value, bool):
                raise NodeInputError(node, item.id, f"must be true or false, got {str(value)[:40]}")
            checked[item.id] = value
        elif isinstance(item, io.Int.Input):
            checked[item.id] = bounded_integer(value, item.id, item.min, item.max)
        elif isinstance(item, io.Float.Input):
            checked[item.id] = bounded_number(value, item.id, item.min, item.max)
        else:
            if not isinstance(value, str) or len(value) > 100_000:
                raise NodeInputError(node, item.id, "must be text")
            checked[item.id] = value
    return checked


class TapTuneTrainingSettings(io.ComfyNode):
    """The trainer's less-used settings, for its optional ``settings`` input."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune Training Settings",
            category=CATEGORY_TRAIN,
            description=(
                "The settings of a training run that most runs leave alone: image resizing, learning-rate schedule "
                "and warm-up, optimiser and weight decay, precision, gradient accumulation and checkpointing, "
                "numbered adapter saves while training (save_every, keep_last), resumable checkpoints and resume, "
                "previews. Connect it to the settings input of TapTune DreamBooth Train (or TapTune Export Training "
                "Job); without it the trainer uses the defaults shown here."
            ),
            inputs=settings_inputs(),
            outputs=[
                TapTuneTrainingSettingsType.Output(
                    display_name="settings", tooltip="To the settings input of TapTune DreamBooth Train."
                )
            ],
        )

    @classmethod
    def execute(cls, **values: Any) -> io.NodeOutput:
        with node_errors(NODE, "resume_from"):
            return io.NodeOutput(checked_settings({k: first_input(v) for k, v in values.items()}))
