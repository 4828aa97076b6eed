"""TapTuneDreamBoothTrain: train tap-point or OFT adapters on the loaded model, inside the graph.

The node shows what most runs change (images and prompts, spec, steps, learning rate, batch,
seed, resolution); everything else comes from the optional ``settings`` input
(``TapTuneTrainingSettings``, :mod:`.training_settings`), whose defaults apply without it.

Cancel stops the whole prompt, as everywhere in ComfyUI, after writing a resumable checkpoint
and a loadable adapter file of the last completed step; the node's message says where both are.
``save_every`` writes numbered adapter files while the run goes on (``..._step00400``), which
TapTune Load Adapter lists at once; ``keep_last`` bounds how many of a run's stay.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.utils
from comfy_api.v0_0_2 import io, ui

from ..adapter_core.registry import kind_of_spec
from ..patching.apply import apply_adapter_set
from ..patching.model_access import model_architecture
from ..training.images import flatten_images
from ..training.run import trained_adapter
from ..training.run_inputs import ImageSet, RunInputs
from ..training.settings import TrainSettings, resolve_precision
from ..training.trainer import DreamBoothTrainer
from ..training.visuals import loss_curve, to_image_tensor
from .common import (
    CATEGORY_TRAIN,
    NodeInputError,
    TapTuneAdapter,
    TapTuneSpec,
    bounded_integer,
    bounded_number,
    first_input,
    hidden_input,
    node_errors,
)
from .step_adapters import StepAdapters
from .training_settings import (
    TapTuneTrainingSettingsType,
    checked_settings,
    checkpoint_root,
    resume_path,
)

NODE = "TapTuneDreamBoothTrain"
log = logging.getLogger("taptune")

#: The learning-rate choices: the spec's own rate (the paper's, unless the spec says otherwise) or a value.
LR_SPEC = "paper (the spec's rate: tap 1e-4, OFT 6e-5)"
LEARNING_RATES = (LR_SPEC, "1e-2", "5e-3", "2e-3", "1e-3", "5e-4", "2e-4", "1e-4", "6e-5", "5e-5", "2e-5", "1e-5")
#: The ComfyUI type of the loss curve the stock LossGraphNode draws ({"loss": [floats]}).
LossMap = io.Custom("LOSS_MAP")


def learning_rate_option(rate: float | None) -> str:
    """The combo value for a rate (None or 0: the spec's); raises for a rate the list does not offer."""
    if not rate:
        return LR_SPEC
    for option in LEARNING_RATES[1:]:
        if float(option) == rate:
            return option
    raise ValueError(f"{rate} is not a learning-rate choice")


def learning_rate_value(value: object, node: str = NODE) -> float | None:
    """The rate a ``learning_rate`` input asks for; None: the spec's.

    A choice of the list, or (an API prompt, or a workflow saved before 0.4.0, where the input was a
    number and 0 meant the spec's rate) a number: 0 is the spec's rate, any other the rate itself.
    """
    if value is None or value == LR_SPEC:
        return None
    if isinstance(value, str):
        if value in LEARNING_RATES:
            return float(value)
        raise NodeInputError(node, "learning_rate", f"{value[:40]!r} is not one of: {', '.join(LEARNING_RATES)}")
    rate = bounded_number(value, "learning_rate", 0.0, 10.0)
    return rate or None


#: Inputs of the trainer in 0.1.0-0.3.0 that moved to TapTune Training Settings.
MOVED = (
    "resize_mode",
    "gradient_accumulation",
    "lr_schedule",
    "warmup_steps",
    "optimizer",
    "weight_decay",
    "precision",
    "gradient_checkpointing",
    "checkpoint_every",
    "resume_from",
    "validation_prompt",
    "validation_every",
    "validation_steps",
)


def legacy_settings(prompt: Any, node_id: Any) -> dict[str, Any]:
    """The moved inputs an API prompt still gives on the trainer itself (0.1.0-0.3.0 prompts).

    ComfyUI hands a node only the inputs it declares; the node reads these from its own entry of
    the prompt. Links are not followed (those inputs were widgets).
    """
    entry = prompt.get(str(node_id)) if isinstance(prompt, dict) and node_id is not None else None
    given = entry.get("inputs") if isinstance(entry, dict) else None
    if not isinstance(given, dict):
        return {}
    return {k: v for k, v in given.items() if k in MOVED and not isinstance(v, list)}


def training_settings(
    values: dict[str, Any], node: str = NODE, legacy: dict[str, Any] | None = None
) -> tuple[TrainSettings, dict[str, Any]]:
    """The run's settings from the trainer's widgets and its ``settings`` input; and the checked extras.

    Without a ``settings`` input, the moved inputs a 0.1.0-0.3.0 API prompt gives on the trainer
    (``legacy``), else TapTuneTrainingSettings' defaults.
    """
    given = values.get("settings")
    if given is not None and not isinstance(given, dict):
        raise NodeInputError(node, "settings", "connect TapTune Training Settings")
    legacy = {**(legacy or {}), **{k: values[k] for k in MOVED if values.get(k) is not None}}
    extra = checked_settings(given if given is not None else legacy, node)
    steps = bounded_integer(values.get("steps", 400), "steps", 1, 100000)
    settings = TrainSettings(
        steps=steps,
        learning_rate=learning_rate_value(values.get("learning_rate"), node),
        batch_size=bounded_integer(values.get("batch_size", 1), "batch_size", 1, 64),
        seed=bounded_integer(values.get("seed", 0), "seed", 0, 2**63 - 1),
        prior_loss_weight=bounded_number(values.get("prior_loss_weight", 1.0), "prior_loss_weight", 0.0, 10.0),
        resolution=bounded_integer(values.get("resolution", 512), "resolution", 64, 4096),
        resize_mode=extra["resize_mode"],
        prior_target=extra["prior_target"],
        trigger_word_prior=extra["trigger_word_prior"],
        gradient_accumulation=extra["gradient_accumulation"],
        lr_schedule=extra["lr_schedule"],
        warmup_steps=extra["warmup_steps"],
        optimizer=extra["optimizer"],
        weight_decay=extra["weight_decay"],
        precision=extra["precision"],
        gradient_checkpointing=extra["gradient_checkpointing"],
        checkpoint_every=extra["checkpoint_every"],
        checkpoint_dir=str(checkpoint_root()),
        resume_from=resume_path(extra["resume_from"], node),
        validation_prompt=extra["validation_prompt"],
        validation_every=extra["validation_every"],
        validation_steps=extra["validation_steps"],
    )
    return settings, extra


def training_inputs() -> list[io.Input]:
    """The inputs of a training run, as TapTuneDreamBoothTrain offers them (TapTuneExportTrainingJob takes the same).

    The widgets keep the order of 0.1.0-0.3.0 up to ``resolution`` (a saved workflow's widget values
    are matched by position); what followed moved to the ``settings`` input.
    """
    return [
        io.Model.Input("model", tooltip="The checkpoint's MODEL (SD 1.x, SD 2.x or SDXL) to personalise."),
        io.Clip.Input("clip", tooltip="The checkpoint's CLIP, to encode the prompts (once)."),
        io.Vae.Input("vae", tooltip="The checkpoint's VAE, to encode the images (once)."),
        TapTuneSpec.Input("spec", tooltip="What to train: TapTune Tap Adapter Spec or TapTune OFT Spec."),
        io.Image.Input("instance_images", tooltip="A few images of the subject or style (TapTune Load Image Folder)."),
        io.String.Input(
            "instance_prompt",
            default="a photo of sks dog",
            multiline=True,
            tooltip="One prompt for all instance images, or one line per image (in image order).",
        ),
        io.String.Input(
            "class_prompt",
            default="a photo of dog",
            tooltip="The prompt of the class images: one line for all, or one line per class image (connect a "
            "multi-line text for that).",
        ),
        io.Float.Input(
            "prior_loss_weight",
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.05,
            tooltip="Weight of the class loss; 0 turns prior preservation off (then no class images are needed).",
        ),
        io.Int.Input("steps", default=400, min=1, max=100000, tooltip="Optimiser steps."),
        io.Combo.Input(
            "learning_rate",
            options=list(LEARNING_RATES),
            default=LR_SPEC,
            tooltip="The paper's rate for the spec (tap adapters 1e-4, OFT 6e-5), or a rate of the list. The rate "
            "used is shown in the node's text and stored in the adapter file.",
        ),
        io.Int.Input(
            "batch_size", default=1, min=1, max=64, tooltip="Instance images per step (and as many class images)."
        ),
        io.Int.Input(
            "seed",
            default=0,
            min=0,
            max=2**63 - 1,
            tooltip="Seeds initialisation, data order, noise, timesteps and the previews.",
        ),
        io.Image.Input("class_images", optional=True, tooltip="Prior-preservation images (TapTune Class Images)."),
        io.Int.Input(
            "resolution",
            default=512,
            min=64,
            max=4096,
            step=64,
            optional=True,
            tooltip="Training size: 512 for SD 1.x, 768 for SD 2.x 768 models, 1024 for SDXL.",
        ),
        TapTuneTrainingSettingsType.Input(
            "settings",
            optional=True,
            tooltip="TapTune Training Settings: schedule, optimiser, precision, checkpoints, numbered saves, "
            "previews, resume. Without it, that node's defaults.",
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
                "prediction type. Shows progress and previews while it runs, then the values it used (learning rate, "
                "steps, batch, precision, trainable parameters). Cancel stops the prompt after writing a resumable "
                "checkpoint and an adapter file of the last completed step (the message says where). Outputs the "
                "adapted MODEL, the adapter (for TapTune Save Adapter), the loss curve as an image and as a LOSS_MAP "
                "(for ComfyUI's Plot Loss Graph), and the summary. The input MODEL is never changed. Less-used settings: "
                "connect TapTune Training Settings."
            ),
            inputs=training_inputs(),
            outputs=[
                io.Model.Output(
                    display_name="MODEL", tooltip="The input model with the trained adapter, ready for KSampler."
                ),
                TapTuneAdapter.Output(display_name="adapter", tooltip="The trained adapter, for TapTune Save Adapter."),
                io.Image.Output(display_name="loss", tooltip="The loss curve."),
                LossMap.Output(display_name="loss_map", tooltip="The loss per step, for ComfyUI's Plot Loss Graph."),
                io.String.Output(display_name="summary", tooltip="What the run used and did."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_input_list=True,
        )

    @classmethod
    def validate_inputs(cls, learning_rate: Any = None) -> bool | str:  # type: ignore[override]
        # ComfyUI checks combo values against the list; workflows saved before 0.4.0 hold a number here.
        try:
            learning_rate_value(first_input(learning_rate))
        except NodeInputError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        values = {k: first_input(v) for k, v in inputs.items() if k not in ("instance_images", "class_images")}
        model, clip, vae, spec = (values.get(k) for k in ("model", "clip", "vae", "spec"))
        node_id = hidden_input(cls, "unique_id")
        with node_errors(NODE, "spec"):
            settings, extra = training_settings(values, NODE, legacy_settings(hidden_input(cls, "prompt"), node_id))
            kind_of_spec(spec)
        instance_prompt = values.get("instance_prompt", "")
        if settings.validation_every and not settings.validation_prompt.strip():
            settings.validation_prompt = str(instance_prompt).strip().splitlines()[0] if instance_prompt else ""
        bar = comfy.utils.ProgressBar(settings.steps, node_id=node_id)
        run_inputs = RunInputs(
            ImageSet(flatten_images(inputs.get("instance_images")), instance_prompt),
            ImageSet(flatten_images(inputs.get("class_images")), values.get("class_prompt", "")),
            settings,
        )
        base = model_architecture(model)
        saves = StepAdapters(f"{kind_of_spec(spec).name}_{time.strftime('%Y%m%d-%H%M%S')}", extra["keep_last"])

        def report(step: int, total: int, loss: float, preview: Any) -> None:
            bar.update_absolute(step, total, ("JPEG", preview, 512) if preview is not None else None)
            text = f"step {step}/{total}  loss {loss:.5f}"
            if extra["save_every"] and step % extra["save_every"] == 0 and step < total:
                name = saves.write(trainer.adapter_set.frozen_copy(), base, step, {"steps": step})
                text += f"  saved models/adapters/{name}"
            _progress_text(text, node_id)

        with node_errors(NODE, "spec"):
            trainer = DreamBoothTrainer(model, clip, vae, spec, run_inputs, report)
            result = trainer.run()
        trained = trained_adapter(result, model, run_inputs)
        used = _used(settings, result, trained, model)
        trained.info["run"] = used
        if result.cancelled:
            _cancelled(result, trained, saves, node_id)
        adapted = apply_adapter_set(model, result.adapter_set, 1.0)
        curve = to_image_tensor(loss_curve(result.losses, title="DreamBooth loss"))
        summary = _summary(used)
        _progress_text(summary, node_id)
        return io.NodeOutput(
            adapted, trained, curve, {"loss": list(result.losses)}, summary, ui=ui.PreviewText(summary)
        )


def _used(settings: TrainSettings, result: Any, trained: Any, model: Any) -> dict[str, Any]:
    """The values the run actually used (the node's text and the file's ``run`` metadata)."""
    dtype = resolve_precision(settings.precision, comfy.model_management.get_torch_device())
    return {
        "learning_rate": result.learning_rate,
        "steps": result.steps_done,
        "batch_size": settings.batch_size,
        "gradient_accumulation": settings.gradient_accumulation,
        "precision": str(dtype).replace("torch.", "") if dtype is not None else "float32",
        "trainable_parameters": trained.adapter_set.num_parameters(),
        "resolution": settings.resolution,
        "prior_target": settings.prior_target,
        "trigger_word_prior": settings.trigger_word_prior,
        "seed": settings.seed,
    }


def _summary(used: dict[str, Any]) -> str:
    return (
        f"trained {used['steps']} steps at learning rate {used['learning_rate']:g}, batch {used['batch_size']}"
        f" x {used['gradient_accumulation']} accumulation, {used['precision']}, "
        f"{used['trainable_parameters']:,} trainable parameters, {used['resolution']} px, seed {used['seed']}"
        + (", the base model as the prior's target" if used.get("prior_target") == "base_model" else "")
        + (f", trigger word prior {used['trigger_word_prior']:g}" if used.get("trigger_word_prior") else "")
    )


def _cancelled(result: Any, trained: Any, saves: Any, node_id: Any) -> None:
    """Cancel: the last completed step's adapter as a file, the message, then stop the whole prompt."""
    step = result.steps_done
    if step:
        name = saves.write(trained.adapter_set, trained.base, step, dict(trained.info))
        checkpoint = Path(result.checkpoints[-1]) if result.checkpoints else None
        where = (
            f"output/taptune/checkpoints/{checkpoint.relative_to(checkpoint_root()).as_posix()}"
            if checkpoint
            else "none"
        )
        message = (
            f"cancelled after step {step}: resumable checkpoint {where} (pick it in TapTune Training Settings' "
            f"resume_from), adapter models/adapters/{name} (TapTune Load Adapter lists it)"
        )
    else:
        message = "cancelled before the first step: nothing was written"
    log.warning("TapTune: %s", message)
    _progress_text(message, node_id)
    raise comfy.model_management.InterruptProcessingException()


def _progress_text(text: str, node_id: Any) -> None:
    """Text under the node, through the server when one is running."""
    try:
        from server import PromptServer

        instance = getattr(PromptServer, "instance", None)
        if instance is not None and node_id is not None:
            instance.send_progress_text(text, node_id)
    except Exception:  # a progress message must never break training
        log.debug("progress text not sent", exc_info=True)
