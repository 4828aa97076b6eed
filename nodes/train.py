"""TapTuneDreamBoothTrain: train tap-point or OFT adapters on the loaded model, inside the graph."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io

from ..adapter_core.registry import kind_of_spec
from ..patching.apply import apply_adapter_set
from ..training.images import RESIZE_MODES, flatten_images
from ..training.optimisation import OPTIMIZERS
from ..training.run import run_dreambooth
from ..training.run_inputs import ImageSet, RunInputs
from ..training.schedule import SCHEDULES
from ..training.settings import PRECISIONS, TrainSettings
from ..training.visuals import loss_curve, to_image_tensor
from .common import (
    CATEGORY_TRAIN,
    NodeInputError,
    TapTuneAdapter,
    TapTuneSpec,
    bounded_integer,
    bounded_number,
    first_input,
    node_errors,
)

NODE = "TapTuneDreamBoothTrain"
NO_RESUME = "none"
log = logging.getLogger("taptune")

# Bumped whenever a run ends early (Cancel): its result must not be reused from ComfyUI's cache.
_incomplete_runs = 0


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


def _setting(name: str, default: Any, value: Any, node: str = NODE) -> Any:
    """A widget value as its setting's type, refusing what is not (ComfyUI lets API prompts send anything)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise NodeInputError(node, name, f"must be true or false, got {str(value)[:40]}")
        return value
    if isinstance(default, int):
        return bounded_integer(value, name, -(2**63), 2**63 - 1)
    if isinstance(default, float):
        return bounded_number(value, name, -1e30, 1e30)
    if not isinstance(value, str):
        raise NodeInputError(node, name, f"must be text, got {type(value).__name__}")
    return value


def training_settings(values: dict[str, Any], node: str = NODE) -> TrainSettings:
    """The run's settings from the node's widget values; what a widget leaves out keeps its default."""
    own = {"learning_rate", "checkpoint_dir", "resume_from"}
    given = {
        f.name: _setting(f.name, f.default, values[f.name], node)
        for f in fields(TrainSettings)
        if f.name not in own and values.get(f.name) is not None
    }
    rate = values.get("learning_rate")
    rate = 0.0 if rate is None else bounded_number(rate, "learning_rate", 0.0, 10.0)
    return TrainSettings(
        **given,
        learning_rate=rate or None,  # 0: the spec kind's paper rate
        checkpoint_dir=str(checkpoint_root()),
        resume_from=resume_path(values.get("resume_from"), node),
    )


def training_inputs() -> list[io.Input]:
    """The inputs of a training run, as TapTuneDreamBoothTrain offers them (TapTuneExportTrainingJob takes the same)."""
    return [
        io.Model.Input("model", tooltip="The checkpoint's MODEL (SD 1.x, SD 2.x or SDXL) to personalise."),
        io.Clip.Input("clip", tooltip="The checkpoint's CLIP, to encode the prompts (once)."),
        io.Vae.Input("vae", tooltip="The checkpoint's VAE, to encode the images (once)."),
        TapTuneSpec.Input("spec", tooltip="What to train: TapTuneTapSpec or TapTuneOFTSpec."),
        io.Image.Input("instance_images", tooltip="A few images of the subject or style."),
        io.String.Input(
            "instance_prompt",
            default="a photo of sks dog",
            multiline=True,
            tooltip="One prompt for all instance images, or one line per image (in image order).",
        ),
        io.String.Input("class_prompt", default="a photo of dog", tooltip="The prompt of the class images."),
        io.Float.Input(
            "prior_loss_weight",
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.05,
            tooltip="Weight of the class loss; 0 turns prior preservation off.",
        ),
        io.Int.Input("steps", default=400, min=1, max=100000, tooltip="Optimiser steps."),
        io.Float.Input(
            "learning_rate",
            default=0.0,
            min=0.0,
            max=1.0,
            step=1e-6,
            tooltip="0 = the paper's rate for the spec: 1e-4 for tap adapters, 6e-5 for OFT.",
        ),
        io.Int.Input(
            "batch_size",
            default=1,
            min=1,
            max=64,
            tooltip="Instance images per step (and as many class images).",
        ),
        io.Int.Input(
            "seed",
            default=0,
            min=0,
            max=2**63 - 1,
            tooltip="Seeds initialisation, data order, noise and timesteps.",
        ),
        io.Image.Input("class_images", optional=True, tooltip="Prior-preservation images (TapTuneClassImages)."),
        io.Int.Input(
            "resolution",
            default=512,
            min=64,
            max=4096,
            step=64,
            optional=True,
            tooltip="Training size (center_crop, buckets).",
        ),
        io.Combo.Input(
            "resize_mode",
            options=list(RESIZE_MODES),
            default="center_crop",
            optional=True,
            tooltip="center_crop: square crops; buckets: nearest aspect-ratio bucket; none: as given (one common size).",
        ),
        io.Int.Input(
            "gradient_accumulation",
            default=1,
            min=1,
            max=1024,
            optional=True,
            tooltip="Micro-batches per optimiser step.",
        ),
        io.Combo.Input(
            "lr_schedule",
            options=list(SCHEDULES),
            default="constant",
            optional=True,
            tooltip="Learning-rate schedule after warm-up.",
        ),
        io.Int.Input("warmup_steps", default=0, min=0, max=100000, optional=True, tooltip="Linear warm-up steps."),
        io.Combo.Input(
            "optimizer",
            options=list(OPTIMIZERS),
            default="adamw",
            optional=True,
            tooltip="The optimiser of the adapter parameters.",
        ),
        io.Float.Input(
            "weight_decay",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.001,
            optional=True,
            tooltip="Decoupled weight decay (AdamW) or L2.",
        ),
        io.Combo.Input(
            "precision",
            options=list(PRECISIONS),
            default="auto",
            optional=True,
            tooltip="Autocast dtype; adapters keep fp32 master weights. auto: bf16 (or fp16 with loss scaling) on GPUs, fp32 on CPU.",
        ),
        io.Boolean.Input(
            "gradient_checkpointing",
            default=False,
            optional=True,
            tooltip="Recompute block activations in backward: less memory, ~30 % slower.",
        ),
        io.Int.Input(
            "checkpoint_every",
            default=0,
            min=0,
            max=100000,
            optional=True,
            tooltip="Write a resumable checkpoint every N steps (0: off).",
        ),
        io.Combo.Input(
            "resume_from",
            options=checkpoint_choices(),
            default=NO_RESUME,
            optional=True,
            tooltip="Continue a run from one of its checkpoints (output/taptune/checkpoints).",
        ),
        io.String.Input(
            "validation_prompt",
            default="",
            optional=True,
            tooltip="Sampled as a preview while training (empty: no previews).",
        ),
        io.Int.Input(
            "validation_every",
            default=0,
            min=0,
            max=100000,
            optional=True,
            tooltip="Preview every N steps (0: off).",
        ),
        io.Int.Input(
            "validation_steps",
            default=20,
            min=1,
            max=200,
            optional=True,
            tooltip="Sampler steps of each preview.",
        ),
    ]


class TapTuneDreamBoothTrain(io.ComfyNode):
    """DreamBooth with prior preservation for TapTune adapters, with progress, previews, cancel and resume."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="TapTune DreamBooth Train",
            category=CATEGORY_TRAIN,
            description=(
                "Trains the adapters of a TapTune spec (tap-point or OFT) on the connected model with DreamBooth and "
                "prior preservation: each step pairs instance images with the instance prompt (or one prompt per image) "
                "and class images with the class prompt, loss = instance + prior_loss_weight x class, in the model's own "
                "prediction type. Shows the loss and validation previews while it runs; Cancel stops after the current "
                "step and hands on the adapter of the last completed step. Outputs the adapted MODEL, the adapter (for "
                "TapTuneSaveAdapter) and the loss curve. The input MODEL is never changed."
            ),
            inputs=training_inputs(),
            outputs=[
                io.Model.Output(
                    display_name="MODEL", tooltip="The input model with the trained adapter, ready for KSampler."
                ),
                TapTuneAdapter.Output(display_name="adapter", tooltip="The trained adapter, for TapTuneSaveAdapter."),
                io.Image.Output(display_name="loss", tooltip="The loss curve."),
            ],
            hidden=[io.Hidden.unique_id],
            is_input_list=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        return _incomplete_runs

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        global _incomplete_runs
        values = {k: first_input(v) for k, v in inputs.items() if k not in ("instance_images", "class_images")}
        model, clip, vae, spec = (values.get(k) for k in ("model", "clip", "vae", "spec"))
        with node_errors(NODE, "spec"):
            settings = training_settings(values)
            kind_of_spec(spec)
        node_id = first_input(cls.hidden.unique_id)
        bar = comfy.utils.ProgressBar(settings.steps, node_id=node_id)

        def report(step: int, total: int, loss: float, preview: Any) -> None:
            bar.update_absolute(step, total, ("JPEG", preview, 512) if preview is not None else None)
            _progress_text(f"step {step}/{total}  loss {loss:.5f}", node_id)

        with node_errors(NODE, "spec"):
            result, trained = run_dreambooth(
                model,
                clip,
                vae,
                spec,
                RunInputs(
                    ImageSet(flatten_images(inputs.get("instance_images")), values.get("instance_prompt", "")),
                    ImageSet(flatten_images(inputs.get("class_images")), values.get("class_prompt", "")),
                    settings,
                ),
                report,
            )
        if result.cancelled:
            _incomplete_runs += 1
        adapted = apply_adapter_set(model, result.adapter_set, 1.0)
        curve = to_image_tensor(
            loss_curve(result.losses, title="DreamBooth loss" + (" (cancelled)" if result.cancelled else ""))
        )
        return io.NodeOutput(adapted, trained, curve)


def _progress_text(text: str, node_id: Any) -> None:
    """The step and loss under the node, through the server when one is running."""
    try:
        from server import PromptServer

        instance = getattr(PromptServer, "instance", None)
        if instance is not None and node_id is not None:
            instance.send_progress_text(text, node_id)
    except Exception:  # a progress message must never break training
        log.debug("progress text not sent", exc_info=True)
