"""The DreamBooth training loop: prepare, train, checkpoint, preview, stop cleanly.

Everything the run touches in the shared model is undone in ``finally``: the training
clone is unloaded (which removes its object patches), and the ``requires_grad`` flags of
the base weights are put back. Cancel (ComfyUI's interrupt) ends the loop after the last
completed step, whose adapter is returned.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import comfy.model_management
import torch
from PIL import Image

from ..adapter_core.oft import OFTConfigError
from ..adapter_core.tap_points import TapConfigError
from ..patching.autograd_weights import with_autograd_weights
from ..patching.tap_patches import with_gradient_checkpointing
from .checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from .conditioning import ConditioningCache
from .data import Batch, BatchSampler, Pool, encode_latents
from .errors import TrainingDivergedError, TrainingInputError
from .images import prepare_images
from .objective import noisy_latents, prediction_error, prior_preservation_loss, sample_sigmas
from .prompts import prompt_lines, prompts_for_images, trigger_and_class_words
from .schedule import LearningRateSchedule
from .spec import DEFAULT_LEARNING_RATE, AdapterSpec
from .visuals import sample_images, to_pil

log = logging.getLogger("taptune.training")

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

#: (step, total steps, loss of the step, preview image or None)
Reporter = Callable[[int, int, float, Image.Image | None], None]


@dataclass
class TrainSettings:
    """Everything about a run that is not data: the node's widgets."""

    steps: int = 400
    learning_rate: float | None = None
    batch_size: int = 1
    seed: int = 0
    prior_loss_weight: float = 1.0
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


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = no autocast) for a precision choice on ``device``."""
    if choice not in PRECISIONS:
        raise TrainingInputError("precision", f"unknown precision {choice!r}; allowed: {', '.join(PRECISIONS)}")
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


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


def release(model: Any) -> None:
    """Unload a training clone from ComfyUI's model management (this removes its patches)."""
    loaded = comfy.model_management.current_loaded_models
    for i in reversed(range(len(loaded))):
        if loaded[i].model is model:
            loaded[i].model_unload()
            loaded.pop(i)
    comfy.model_management.soft_empty_cache()


class DreamBoothTrainer:
    """One training run of tap-point or OFT adapters with prior preservation."""

    def __init__(
        self,
        model: Any,
        clip: Any,
        vae: Any,
        spec: AdapterSpec,
        instance_images: list[torch.Tensor],
        instance_prompt: str,
        class_prompt: str,
        class_images: list[torch.Tensor] | None,
        settings: TrainSettings,
        report: Reporter | None = None,
    ) -> None:
        self.model, self.clip, self.vae, self.spec = model, clip, vae, spec
        self.settings = settings
        self.report = report or (lambda *args: None)
        self.device = model.load_device
        self.generator = torch.Generator().manual_seed(int(settings.seed))
        self.lr = settings.learning_rate or DEFAULT_LEARNING_RATE[spec.kind]
        self.checkpoints: list[str] = []
        self._validate(instance_images, instance_prompt, class_prompt, class_images)
        self.instance_prompts = prompts_for_images(instance_prompt, len(instance_images), "instance_prompt")
        self.class_prompt = class_prompt.strip()
        self.instance_images = instance_images
        self.class_images = class_images or []
        self.trigger_word, self.class_word = trigger_and_class_words(instance_prompt, class_prompt)
        try:
            with torch.inference_mode(False):  # trainable parameters must not be inference tensors
                self.adapter_set = spec.build(model, int(settings.seed))
        except (TapConfigError, OFTConfigError, TypeError) as exc:
            raise TrainingInputError("spec", f"does not fit this MODEL: {exc}") from None
        self.autocast_dtype = resolve_precision(settings.precision, self.device)
        self.resume_state = self._read_resume() if settings.resume_from else None

    # -- checks before anything heavy ---------------------------------------------------------------

    def _validate(
        self,
        instance_images: list[torch.Tensor],
        instance_prompt: str,
        class_prompt: str,
        class_images: list[torch.Tensor] | None,
    ) -> None:
        s = self.settings
        if not instance_images:
            raise TrainingInputError("instance_images", "no images: connect at least one image of the subject")
        if s.steps < 1:
            raise TrainingInputError("steps", "must be at least 1")
        if s.batch_size < 1 or s.gradient_accumulation < 1:
            raise TrainingInputError("batch_size", "batch_size and gradient_accumulation must be at least 1")
        if s.optimizer not in OPTIMIZERS:
            raise TrainingInputError(
                "optimizer", f"unknown optimizer {s.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainingInputError("learning_rate", f"must be a positive number, got {self.lr}")
        if s.prior_loss_weight < 0:
            raise TrainingInputError("prior_loss_weight", "must be 0 (off) or positive")
        if s.prior_loss_weight > 0:
            if not class_prompt.strip():
                raise TrainingInputError(
                    "class_prompt",
                    "prior preservation is on (prior_loss_weight > 0) but there is no class prompt, e.g. 'a photo of dog'",
                )
            if len(prompt_lines(class_prompt)) > 1:
                raise TrainingInputError("class_prompt", "give one class prompt (one line)")
            if not class_images:
                raise TrainingInputError(
                    "class_images",
                    "prior preservation is on but no class images are connected: generate them with TapTuneClassImages, "
                    "or set prior_loss_weight to 0",
                )
        LearningRateSchedule(s.lr_schedule, s.steps, s.warmup_steps)  # raises for an unknown schedule
        if s.resume_from and not Path(s.resume_from).is_file():
            raise TrainingInputError("resume_from", f"no checkpoint at {s.resume_from}")

    def _read_resume(self) -> dict[str, Any]:
        try:
            return load_checkpoint(self.settings.resume_from)
        except ValueError as exc:
            raise TrainingInputError("resume_from", str(exc)) from None

    # -- data -------------------------------------------------------------------------------------------

    def _pools(self) -> tuple[Pool, Pool | None, list[torch.Tensor]]:
        """The instance and class pools, and the prepared pixels they were encoded from."""
        s = self.settings
        instance = prepare_images(self.instance_images, s.resize_mode, s.resolution, "instance_images")
        pool = Pool(encode_latents(self.vae, self.model, instance), self.instance_prompts)
        if s.prior_loss_weight <= 0:
            return pool, None, instance
        classes = prepare_images(self.class_images, s.resize_mode, s.resolution, "class_images")
        class_pool = Pool(encode_latents(self.vae, self.model, classes), [self.class_prompt] * len(classes))
        return pool, class_pool, instance + classes

    def _fingerprint(self, pixels: list[torch.Tensor]) -> str:
        """What defines the run: spec, pixels (not latents: those vary across devices), prompts, settings."""
        s = self.settings
        keys = (
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
        return run_fingerprint(
            {
                "spec": self.spec.describe(),
                "pixels": [(tuple(p.shape), round(float(p.double().sum()), 6)) for p in pixels],
                "prompts": [*self.instance_prompts, self.class_prompt if s.prior_loss_weight > 0 else None],
                "settings": {k: getattr(s, k) for k in keys},
                "lr": self.lr,
            }
        )

    # -- the run ----------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train; returns the adapter of the last completed step (also when cancelled)."""
        s = self.settings
        instance, classes, pixels = self._pools()
        fingerprint = self._fingerprint(pixels)
        samplers = {"instance": BatchSampler(instance, s.batch_size)}
        if classes is not None:
            samplers["class"] = BatchSampler(classes, s.batch_size)
        conds = ConditioningCache(self.model, self.clip, self.device)
        # Every prompt is encoded before the training model is loaded: loading the text encoder
        # later could make ComfyUI partially unload the training model.
        for prompt in {*instance.prompts, *(classes.prompts if classes else [])}:
            conds.conditioning(prompt)
        validation = self._validation_setup(instance, conds)
        train_model = self._training_model()
        total = s.steps + self.spec.extra_steps
        losses: list[float] = []
        step = 0
        cancelled = False
        optimizer = scheduler = scaler = None
        snapshot: tuple[Any, dict[str, list[int]], int] | None = None
        try:
            with torch.inference_mode(False):
                comfy.model_management.load_models_gpu(
                    [train_model], memory_required=self._memory_estimate(train_model, instance), force_full_load=True
                )
            unet = train_model.model.diffusion_model
            phase = self._phase(0)
            optimizer, scheduler = self._optimizer(phase)
            scaler = torch.amp.GradScaler(self.device.type) if self.autocast_dtype == torch.float16 else None
            if self.resume_state is not None:
                step, losses, phase, optimizer, scheduler = self._resume(
                    fingerprint, samplers, optimizer, scheduler, scaler
                )
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                frozen_except(unet, self.spec.trainable(self.adapter_set, phase)),
            ):
                while step < total:
                    comfy.model_management.throw_exception_if_processing_interrupted()
                    # Cancel usually lands inside a step (ComfyUI checks in every op): keep the
                    # random state of the step's start, so a checkpoint of the last completed
                    # step resumes exactly.
                    snapshot = (self.generator.get_state(), {n: b.state() for n, b in samplers.items()}, step)
                    self._place_trainable()
                    if self._phase(step) != phase:
                        phase = self._phase(step)
                        optimizer, scheduler = self._optimizer(phase)
                        active = {id(p) for p in self.spec.trainable(self.adapter_set, phase)}
                        for p in self.adapter_set.parameters():
                            p.requires_grad_(id(p) in active)
                    loss = self._step(train_model, samplers, conds, optimizer, scaler, step, phase)
                    scheduler.step()
                    step += 1
                    losses.append(loss)
                    if s.checkpoint_every and step % s.checkpoint_every == 0:
                        self._checkpoint(fingerprint, step, losses, phase, samplers, optimizer, scheduler, scaler)
                    preview = None
                    if (
                        validation is not None
                        and s.validation_every
                        and (step % s.validation_every == 0 or step == total)
                    ):
                        preview = self._preview(train_model, validation)
                    self.report(step, total, loss, preview)
        except comfy.model_management.InterruptProcessingException:
            cancelled = True
            if snapshot is not None and snapshot[2] == step:  # interrupted inside the step
                self.generator.set_state(snapshot[0])
                for name, queue in snapshot[1].items():
                    samplers[name].restore(queue)
            log.info("TapTune: training cancelled after %d completed steps; keeping that adapter", step)
            if (
                s.checkpoint_every
                and step
                and (not self.checkpoints or not self.checkpoints[-1].endswith(f"{step:06d}.ckpt"))
            ):
                self._checkpoint(
                    fingerprint, step, losses, self._phase(max(step - 1, 0)), samplers, optimizer, scheduler, scaler
                )
        finally:
            release(train_model)
        return TrainResult(
            self.adapter_set.frozen_copy(),
            losses,
            step,
            cancelled,
            self.trigger_word,
            self.class_word,
            self.spec.describe(),
            self.checkpoints,
            self.lr,
        )

    def _training_model(self) -> Any:
        model = self.spec.training_model(self.model, self.adapter_set)
        if self.settings.gradient_checkpointing:
            model = with_gradient_checkpointing(model)
        return with_autograd_weights(model)

    def _place_trainable(self) -> None:
        """Trainable parameters on the training device (a partial unload by ComfyUI may have moved them)."""
        for p in self.adapter_set.parameters():
            if p.device != self.device:
                p.data = p.data.to(self.device)

    def _memory_estimate(self, model: Any, pool: Pool) -> float:
        shape = list(pool.latents[0].shape)
        batch = self.settings.batch_size * (2 if self.settings.prior_loss_weight > 0 else 1)
        activations = model.memory_required([batch, *shape]) * (2.0 if self.settings.gradient_checkpointing else 4.0)
        adapters = sum(p.numel() for p in self.adapter_set.parameters()) * 4 * 4  # fp32 weight, grad, 2 moments
        return activations + adapters

    def _phase(self, step: int) -> str:
        return "main" if step < self.settings.steps else "magnitude"

    def _optimizer(self, phase: str) -> tuple[torch.optim.Optimizer, Any]:
        s = self.settings
        params = self.spec.trainable(self.adapter_set, phase)
        kwargs: dict[str, Any] = {"lr": self.lr}
        if s.weight_decay:
            kwargs["weight_decay"] = s.weight_decay
        if s.optimizer in ("adamw", "adam"):
            kwargs["foreach"] = False  # the same arithmetic on every device, for reproducible runs
        optimizer = OPTIMIZERS[s.optimizer](params, **kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule(phase))
        return optimizer, scheduler

    def _schedule(self, phase: str) -> LearningRateSchedule:
        s = self.settings
        steps = s.steps if phase == "main" else max(1, self.spec.extra_steps)
        return LearningRateSchedule(s.lr_schedule, steps, s.warmup_steps)

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _step(
        self,
        model: Any,
        samplers: dict[str, BatchSampler],
        conds: ConditioningCache,
        optimizer: Any,
        scaler: Any,
        step: int,
        phase: str,
    ) -> float:
        s = self.settings
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(s.gradient_accumulation):
            self.spec.before_forward(self.adapter_set, phase)  # COFT's projection, for OFT
            batches = {name: sampler.next(self.generator) for name, sampler in samplers.items()}
            loss = self._loss(model, batches, conds)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {float(loss.detach())} at step {step + 1}: lower the learning_rate (now {self.lr:g}), "
                    "or train with precision bf16 or fp32 instead of fp16. Nothing was returned or saved; with "
                    "checkpoint_every, the last checkpoint holds the last good state"
                )
            scaled = loss / s.gradient_accumulation
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total += float(loss.detach()) / s.gradient_accumulation
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if any(not torch.isfinite(g).all() for g in grads):
                raise TrainingDivergedError(
                    f"gradients became infinite at step {step + 1}: lower the learning_rate (now {self.lr:g}) or use "
                    "precision fp32. Nothing was returned or saved; with checkpoint_every, the last checkpoint holds "
                    "the last good state"
                )
            optimizer.step()
        return total

    def _loss(self, model: Any, batches: dict[str, Batch], conds: ConditioningCache) -> torch.Tensor:
        """Instance and class samples, each with its own noise level and noise, in as few forwards as possible."""
        sampling = model.get_model_object("model_sampling")
        names = list(batches)
        shapes = {tuple(b.latents.shape[1:]) for b in batches.values()}
        groups = [names] if len(shapes) == 1 else [[n] for n in names]
        errors: dict[str, torch.Tensor] = {}
        for group in groups:
            latents = torch.cat([batches[n].latents for n in group]).to(self.device)
            prompts = [p for n in group for p in batches[n].prompts]
            sigma = sample_sigmas(sampling, latents.shape[0], self.generator).to(self.device)
            noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
            x_t = noisy_latents(sampling, sigma, noise, latents)
            inputs = conds.batch(prompts, tuple(latents.shape[1:]))
            options = dict(model.model_options.get("transformer_options", {}))
            with self._autocast():
                denoised = model.model.apply_model(x_t, sigma, transformer_options=options, **inputs)
            error = prediction_error(sampling, sigma, x_t, denoised, latents)
            offset = 0
            for n in group:
                count = batches[n].latents.shape[0]
                errors[n] = error[offset : offset + count]
                offset += count
        return prior_preservation_loss(errors["instance"], errors.get("class"), self.settings.prior_loss_weight)

    # -- checkpoints, resume and previews --------------------------------------------------------------

    def _checkpoint(
        self,
        fingerprint: str,
        step: int,
        losses: list[float],
        phase: str,
        samplers: dict[str, BatchSampler],
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
    ) -> None:
        if not self.settings.checkpoint_dir or optimizer is None:
            return
        path = Path(self.settings.checkpoint_dir) / fingerprint / f"step_{step:06d}.ckpt"
        save_checkpoint(
            path,
            {
                "fingerprint": fingerprint,
                "spec": self.spec.describe(),
                "step": step,
                "phase": phase,
                "losses": list(losses),
                "parameters": [p.detach().cpu().clone() for p in self.adapter_set.parameters()],
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "generator": self.generator.get_state(),
                "samplers": {name: sampler.state() for name, sampler in samplers.items()},
                "trigger_word": self.trigger_word,
                "class_word": self.class_word,
            },
        )
        self.checkpoints.append(str(path))
        log.info("TapTune: checkpoint %s", path)

    def _resume(
        self, fingerprint: str, samplers: dict[str, BatchSampler], optimizer: Any, scheduler: Any, scaler: Any
    ) -> tuple[int, list[float], str, Any, Any]:
        state = self.resume_state
        assert state is not None
        if state["fingerprint"] != fingerprint:
            raise TrainingInputError(
                "resume_from",
                "this checkpoint was made from other inputs (spec, images, prompts or settings differ); resume with the "
                "same graph, changing only steps, validation or checkpoint settings",
            )
        parameters = self.adapter_set.parameters()
        if len(parameters) != len(state["parameters"]):
            raise TrainingInputError("resume_from", "the checkpoint holds a different adapter")
        with torch.no_grad():
            for p, saved in zip(parameters, state["parameters"], strict=True):
                p.copy_(saved.to(p))
        phase = state["phase"]
        if phase == "magnitude" and self._phase(int(state["step"])) == "main":
            raise TrainingInputError(
                "steps",
                f"the checkpoint is in the magnitude phase; steps must stay at most {state['step']} to resume it",
            )
        if phase != "main":
            optimizer, scheduler = self._optimizer(phase)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The saved state carries the old run's schedule (its total steps); use this run's.
        schedule = self._schedule(phase)
        scheduler.lr_lambdas = [schedule]
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * schedule(scheduler.last_epoch)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        for name, sampler in samplers.items():
            sampler.restore(state["samplers"].get(name, []))
        log.info("TapTune: resuming at step %d from %s", state["step"], self.settings.resume_from)
        return int(state["step"]), list(state["losses"]), phase, optimizer, scheduler

    def _validation_setup(self, pool: Pool, conds: ConditioningCache) -> dict[str, Any] | None:
        s = self.settings
        if not (s.validation_every and s.validation_prompt.strip()):
            return None
        return {
            "positive": conds.conditioning(s.validation_prompt.strip()),
            "negative": conds.conditioning(""),
            "shape": tuple(pool.latents[0].shape),
        }

    def _preview(self, model: Any, validation: dict[str, Any]) -> Image.Image:
        with torch.inference_mode(False), torch.no_grad():
            image = sample_images(
                model,
                self.vae,
                validation["positive"],
                validation["negative"],
                validation["shape"],
                [self.settings.seed],
                self.settings.validation_steps,
                cfg=7.0,
            )
        return to_pil(image)
