"""What a training run trains on, checked and prepared once: pools, batches, encodings, the run key.

Images are prepared (cropped or bucketed) and encoded to latents once; every prompt is encoded
once, before the training model is loaded (loading the text encoder later could make ComfyUI
partially unload the training model). The run key names everything that defines the run, so a
checkpoint resumes only under the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .conditioning import ConditioningCache
from .data import BatchSampler, Pool, encode_latents
from .errors import TrainingInputError
from .images import prepare_images
from .prompts import prompts_for_images
from .run_state import run_key
from .settings import TrainSettings

#: Longest prompt text (one line per image) and most images per pool.
MAX_PROMPT_CHARS = 1_000_000
MAX_IMAGES = 100_000
#: Settings that define a run (with spec, data and prompts): a checkpoint resumes only under the same ones.
RUN_DEFINING_SETTINGS = (
    "batch_size",
    "seed",
    "prior_loss_weight",
    "gradient_accumulation",
    "optimizer",
    "weight_decay",
    "lr_schedule",
    "warmup_steps",
    "precision",
    "resolution",
    "resize_mode",
)


@dataclass
class RunData:
    """The prepared data of a run."""

    samplers: dict[str, BatchSampler]
    conds: ConditioningCache
    run_key: str
    latent_shape: tuple[int, ...]
    validation: dict[str, Any] | None


def run_defining_settings(s: TrainSettings) -> dict[str, Any]:
    """The settings that define a run (and its key), by name.

    A setting added later enters only when it is not at its default (and matters: the prior's
    target only with a prior; the trigger word's prior when on), so runs made before it existed keep their keys (their
    checkpoints still resume).
    """
    out = {k: getattr(s, k) for k in RUN_DEFINING_SETTINGS}
    if s.prior_target != "class_images" and s.prior_loss_weight > 0:
        out["prior_target"] = s.prior_target
    if s.trigger_word_prior > 0:
        out["trigger_word_prior"] = s.trigger_word_prior
    return out


def check_data(
    settings: TrainSettings,
    instance_images: list[torch.Tensor],
    instance_prompt: object,
    class_prompt: object,
    class_images: list[torch.Tensor] | None,
) -> None:
    """Raise :class:`TrainingInputError` naming the input when the data cannot make a run."""
    for name, text in (("instance_prompt", instance_prompt), ("class_prompt", class_prompt)):
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            raise TrainingInputError(name, f"must be text of at most {MAX_PROMPT_CHARS} characters")
    if not instance_images:
        raise TrainingInputError("instance_images", "no images: connect at least one image of the subject")
    if len(instance_images) > MAX_IMAGES or len(class_images or []) > MAX_IMAGES:
        raise TrainingInputError("instance_images", f"at most {MAX_IMAGES} images per pool")
    if settings.prior_loss_weight > 0:
        assert isinstance(class_prompt, str)
        if not class_prompt.strip():
            raise TrainingInputError(
                "class_prompt",
                "prior preservation is on (prior_loss_weight > 0) but there is no class prompt, e.g. 'a photo of dog'",
            )
        if not class_images:
            raise TrainingInputError(
                "class_images",
                "prior preservation is on but no class images are connected: generate them with TapTuneClassImages, "
                "or set prior_loss_weight to 0",
            )
        prompts_for_images(class_prompt, len(class_images), "class_prompt")  # one line, or one per image


def prepare_run_data(
    model: Any,
    clip: Any,
    vae: Any,
    settings: TrainSettings,
    instance: tuple[list[torch.Tensor], list[str]],
    classes: tuple[list[torch.Tensor], str],
    key_inputs: dict[str, Any],
) -> RunData:
    """Latents and encodings of instance (images, prompts) and class (images, prompt) data, and the run key.

    ``key_inputs`` adds what else defines the run (the spec, the learning rate).
    """
    s = settings
    instance_pixels = prepare_images(instance[0], s.resize_mode, s.resolution, "instance_images")
    instance_pool = Pool(encode_latents(vae, model, instance_pixels), instance[1])
    samplers = {"instance": BatchSampler(instance_pool, s.batch_size)}
    pixels = list(instance_pixels)
    class_prompt = classes[1]
    if s.prior_loss_weight > 0:
        class_pixels = prepare_images(classes[0], s.resize_mode, s.resolution, "class_images")
        class_prompts = prompts_for_images(class_prompt, len(class_pixels), "class_prompt")
        class_pool = Pool(encode_latents(vae, model, class_pixels), class_prompts)
        samplers["class"] = BatchSampler(class_pool, s.batch_size)
        pixels += class_pixels
    conds = ConditioningCache(model, clip, model.load_device)
    for prompt in {p for sampler in samplers.values() for p in sampler.pool.prompts}:
        conds.conditioning(prompt)
    validation = None
    if s.validation_every and s.validation_prompt.strip():
        validation = {
            "positive": conds.conditioning(s.validation_prompt.strip()),
            "negative": conds.conditioning(""),
            "shape": tuple(instance_pool.latents[0].shape),
        }
    key = run_key(
        {
            "spec": key_inputs["spec"],
            # Pixels, not latents: latents vary across devices.
            "pixels": [(tuple(p.shape), round(float(p.double().sum()), 6)) for p in pixels],
            "prompts": [*instance[1], class_prompt if s.prior_loss_weight > 0 else None],
            "settings": run_defining_settings(s),
            "lr": key_inputs["lr"],
        }
    )
    return RunData(samplers, conds, key, tuple(instance_pool.latents[0].shape), validation)
