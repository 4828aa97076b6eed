"""DreamBooth with prior preservation for any adapter kind, on a ComfyUI MODEL (specification §3).

Each step draws ``batch_size`` instance latents (with their prompts) and as many class latents
(with the class prompt), gives every sample its own timestep and noise, and minimises
``instance error + prior_loss_weight * class error`` on the model's own prediction (plus, with
``trigger_word_prior``, the trigger word's own prior on the instance latents); only the
adapter's parameters train. What differs between kinds (which parameter group each
:class:`~..adapter_core.kind.Phase` trains, what runs after each step, how the model computes
through the adapters) comes from the spec.

Nothing of the run stays in the model: the training clone is unloaded in ``finally`` (which
removes its patches) and the base weights' ``requires_grad`` flags are put back. Cancel
(ComfyUI's interrupt) ends the run after the last completed step, whose adapter is returned;
a run with a checkpoint folder also writes that step's checkpoint, so a cancelled run can resume
(whatever ``checkpoint_every`` says about checkpoints on the way). A checkpoint that cannot be written stops the run with :class:`CheckpointWriteError`.

The same trainer runs inside ComfyUI's executor (``TapTuneDreamBoothTrain``), headless and
data-parallel (``headless/``): a :class:`~.sync.GradientSync` says which rows of each global
batch this process computes and averages the adapter gradients; the default,
:class:`~.sync.SingleProcess`, does nothing, so the node's run is exactly the single-process loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import comfy.model_management
import torch
from PIL import Image

from ..adapter_core.bypass import adapters_bypassed
from ..adapter_core.errors import ConfigError
from ..adapter_core.kind import AdapterSetBase, AdapterSpec, Phase, trainable_parameters
from ..adapter_core.registry import kind_of_spec
from ..patching.model_access import diffusion_model, model_view
from ..patching.training_clone import loaded_for_training, training_clone, training_memory
from .conditioning import ConditioningCache
from .data import Batch
from .errors import CheckpointWriteError, TrainingDivergedError, TrainingInputError
from .objective import noisy_latents, prediction_error, prior_preservation_loss, sample_sigmas
from .optimisation import (
    PhaseOptimisation,
    build_optimizer,
    check_optimizer_state,
    follow_schedule,
    gradients_finite,
    loss_scaler,
    phase_at,
)
from .prompts import prompts_for_images, trigger_and_class_words, trigger_word_pairs
from .run_data import RunData, check_data, prepare_run_data
from .run_inputs import RunInputs
from .run_result import TrainResult, frozen_except
from .run_state import RunState
from .schedule import LearningRateSchedule
from .settings import check_settings, resolve_precision
from .sync import GradientSync, SingleProcess
from .visuals import sample_images, to_pil

log = logging.getLogger("taptune.training")

#: (step, total steps, loss of the step, preview image or None)
Reporter = Callable[[int, int, float, Image.Image | None], None]


def _spans(counts: list[int]) -> list[slice]:
    """Consecutive row ranges of ``counts`` rows each."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [slice(start, start + count) for start, count in zip(starts, counts, strict=True)]


class DreamBoothTrainer:
    """One training run of an adapter spec with prior preservation."""

    def __init__(
        self,
        model: Any,
        clip: Any,
        vae: Any,
        spec: AdapterSpec,
        inputs: RunInputs,
        report: Reporter | None = None,
        sync: GradientSync | None = None,
    ) -> None:
        kind_of_spec(spec)  # a spec of a registered kind, or ConfigError naming the input
        self.model, self.clip, self.vae, self.spec = model, clip, vae, spec
        settings = inputs.settings
        instance_images, instance_prompt = inputs.instance.images, inputs.instance.prompt
        class_images, class_prompt = inputs.classes.images, inputs.classes.prompt
        self.settings = settings
        self.report = report or (lambda *args: None)
        self.sync: GradientSync = sync if sync is not None else SingleProcess()
        self.device = model.load_device
        self.lr = settings.learning_rate or spec.learning_rate
        check_settings(settings, self.lr)
        if settings.batch_size % self.sync.world_size:
            raise TrainingInputError(
                "batch_size",
                f"the batch ({settings.batch_size}) must divide evenly among {self.sync.world_size} processes",
            )
        check_data(settings, instance_images, instance_prompt, class_prompt, class_images)
        self.generator = torch.Generator().manual_seed(int(settings.seed))
        self.checkpoints: list[str] = []
        self.instance_prompts = prompts_for_images(instance_prompt, len(instance_images), "instance_prompt")
        self.class_prompt = class_prompt.strip()
        self.instance_images = instance_images
        self.class_images = class_images or []
        self.trigger_word, self.class_word = trigger_and_class_words(instance_prompt, class_prompt)
        #: instance prompt -> the same without the trigger word; empty while trigger_word_prior is 0.
        self.trigger_pairs: dict[str, str] = (
            trigger_word_pairs(self.instance_prompts, self.trigger_word) if settings.trigger_word_prior > 0 else {}
        )
        self.view = model_view(model)
        try:
            with torch.inference_mode(False):  # trainable parameters must not be inference tensors
                self.adapter_set: AdapterSetBase[Any] = spec.build(self.view, int(settings.seed))
        except ConfigError as exc:
            raise TrainingInputError("spec", f"does not fit this MODEL: {exc.message}") from None
        self.autocast_dtype = resolve_precision(settings.precision, self.device)
        self.resume_state = RunState.load(settings.resume_from) if settings.resume_from else None

    # -- the run ----------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train; returns the adapter of the last completed step (also when cancelled)."""
        s = self.settings
        data = prepare_run_data(
            self.model,
            self.clip,
            self.vae,
            s,
            (self.instance_images, self.instance_prompts),
            (self.class_images, self.class_prompt),
            {"spec": self.spec.to_json(), "lr": self.lr},
        )
        train_model = training_clone(
            self.model,
            self.spec.training_plan(self.adapter_set, self.view),
            gradient_checkpointing=s.gradient_checkpointing,
        )
        batch = s.batch_size * (1 + (s.prior_loss_weight > 0) + (s.trigger_word_prior > 0))
        memory = training_memory(
            train_model, [batch, *data.latent_shape], self.adapter_set.num_parameters(), s.gradient_checkpointing
        )
        total = s.steps + self.spec.post_steps
        losses: list[float] = []
        step = 0
        cancelled = False
        optimisation: PhaseOptimisation | None = None
        step_start: RunState | None = None
        with loaded_for_training(train_model, memory) as unet:
            optimisation = self._optimisation(phase_at(0, s.steps))
            if self.resume_state is not None:
                step, losses, optimisation = self._resume(data, optimisation)
            try:
                with (
                    torch.inference_mode(False),
                    torch.enable_grad(),
                    frozen_except(unet, self._trainable(optimisation.phase)),
                ):
                    while step < total:
                        comfy.model_management.throw_exception_if_processing_interrupted()
                        # Cancel usually lands inside a step (ComfyUI checks in every op): keep the
                        # random state of the step's start, so that the checkpoint of the last
                        # completed step resumes exactly.
                        step_start = self._data_order(data, step)
                        self._place_trainable()
                        if phase_at(step, s.steps) != optimisation.phase:
                            optimisation = self._enter_phase(phase_at(step, s.steps))
                        loss = self._step(train_model, data, optimisation, step)
                        optimisation.scheduler.step()
                        step += 1
                        losses.append(loss)
                        if s.checkpoint_every and step % s.checkpoint_every == 0:
                            self._checkpoint(data, step, losses, optimisation)
                        preview = None
                        if (
                            data.validation is not None
                            and self.sync.writes_files
                            and (step % s.validation_every == 0 or step == total)
                        ):
                            preview = self._preview(train_model, data.validation)
                        self.report(step, total, loss, preview)
            except comfy.model_management.InterruptProcessingException:
                cancelled = True
                self._after_cancel(data, step, losses, optimisation, step_start)
        return TrainResult(
            self.adapter_set.frozen_copy(),
            losses,
            step,
            cancelled,
            self.trigger_word,
            self.class_word,
            self.spec.to_json(),
            self.checkpoints,
            self.lr,
        )

    def _after_cancel(
        self,
        data: RunData,
        step: int,
        losses: list[float],
        optimisation: PhaseOptimisation | None,
        step_start: RunState | None,
    ) -> None:
        if step_start is not None and step_start.step == step:  # interrupted inside the step
            self.generator.set_state(step_start.generator)
            for name, queue in step_start.samplers.items():
                data.samplers[name].restore(queue)
        log.info("TapTune: training cancelled after %d completed steps; keeping that adapter", step)
        already_saved = bool(self.checkpoints) and self.checkpoints[-1].endswith(f"{step:06d}.ckpt")
        if self.settings.checkpoint_dir and step and optimisation is not None and not already_saved:
            self._checkpoint(data, step, losses, optimisation)

    def _data_order(self, data: RunData, step: int) -> RunState:
        """The random state at the start of ``step`` (only the fields cancel needs)."""
        return RunState(
            run_key=data.run_key,
            step=step,
            phase=Phase.MAIN,
            losses=[],
            parameters=[],
            optimizer={},
            scheduler={},
            generator=self.generator.get_state(),
            samplers={n: b.state() for n, b in data.samplers.items()},
        )

    def _place_trainable(self) -> None:
        """Trainable parameters on the training device (a partial unload by ComfyUI may have moved them)."""
        for p in self.adapter_set.parameters():
            if p.device != self.device:
                p.data = p.data.to(self.device)

    # -- optimisation -------------------------------------------------------------------------------

    def _trainable(self, phase: Phase) -> list[torch.nn.Parameter]:
        return trainable_parameters(self.spec, self.adapter_set, phase)

    def _schedule(self, phase: Phase) -> LearningRateSchedule:
        s = self.settings
        steps = s.steps if phase is Phase.MAIN else max(1, self.spec.post_steps)
        return LearningRateSchedule(s.lr_schedule, steps, s.warmup_steps)

    def _optimisation(self, phase: Phase, scaler: torch.amp.GradScaler | None = None) -> PhaseOptimisation:
        s = self.settings
        optimizer, scheduler = build_optimizer(
            s.optimizer, self._trainable(phase), self.lr, s.weight_decay, self._schedule(phase)
        )
        if scaler is None:
            scaler = loss_scaler(self.device, self.autocast_dtype)
        return PhaseOptimisation(phase, optimizer, scheduler, scaler)

    def _enter_phase(self, phase: Phase) -> PhaseOptimisation:
        """A new optimiser for ``phase``; only its parameters get gradients from now on."""
        optimisation = self._optimisation(phase)
        active = {id(p) for p in self._trainable(phase)}
        for p in self.adapter_set.parameters():
            p.requires_grad_(id(p) in active)
        return optimisation

    def _step(self, model: Any, data: RunData, optimisation: PhaseOptimisation, step: int) -> float:
        s = self.settings
        optimizer, scaler = optimisation.optimizer, optimisation.scaler
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(s.gradient_accumulation):
            batches = {name: sampler.next(self.generator) for name, sampler in data.samplers.items()}
            loss = self._loss(model, batches, data.conds)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {float(loss.detach())} at step {step + 1}: lower the learning_rate (now {self.lr:g}), "
                    "or train with precision bf16 or fp32 instead of fp16. Nothing was returned or saved; with "
                    "checkpoint_every, the last checkpoint holds the last good state",
                    input_name="learning_rate",
                )
            scaled = loss / s.gradient_accumulation
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total += float(loss.detach()) / s.gradient_accumulation
        # Data parallel: one step per global batch, on the gradient of the whole batch (no-op alone).
        self.sync.average_gradients(self._trainable(optimisation.phase))
        total = self.sync.average(total)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            if not gradients_finite(optimizer):
                raise TrainingDivergedError(
                    f"gradients became infinite at step {step + 1}: lower the learning_rate (now {self.lr:g}) or use "
                    "precision fp32. Nothing was returned or saved; with checkpoint_every, the last checkpoint holds "
                    "the last good state",
                    input_name="learning_rate",
                )
            optimizer.step()
        with torch.no_grad():
            self.spec.after_step(self.adapter_set, optimisation.phase)
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
            counts = [batches[n].latents.shape[0] for n in group]
            if self.sync.world_size > 1:
                # Every process drew the whole batch (same random state everywhere); each computes its rows.
                rows = self._rows(counts)
                latents, sigma, x_t = latents[rows], sigma[rows], x_t[rows]
                prompts = [prompts[i] for i in rows.tolist()]
                counts = [len(range(count)[self.sync.shard(count)]) for count in counts]
            spans = dict(zip(group, _spans(counts), strict=True))
            if self.trigger_pairs and "instance" in spans:
                # The instance images once more, with the trigger word taken out of their prompts and noise of
                # their own (drawn for the whole batch, as above): only that word may bring the subject.
                pair = batches["instance"]
                pair_latents = pair.latents.to(self.device)
                pair_sigma = sample_sigmas(sampling, pair_latents.shape[0], self.generator).to(self.device)
                pair_noise = torch.randn(pair_latents.shape, generator=self.generator).to(self.device)
                pair_prompts = [self.trigger_pairs[p] for p in pair.prompts]
                if self.sync.world_size > 1:
                    rows = self._rows([pair_latents.shape[0]])
                    pair_latents, pair_sigma, pair_noise = pair_latents[rows], pair_sigma[rows], pair_noise[rows]
                    pair_prompts = [pair_prompts[i] for i in rows.tolist()]
                spans["trigger"] = slice(x_t.shape[0], x_t.shape[0] + pair_latents.shape[0])
                latents, sigma = torch.cat([latents, pair_latents]), torch.cat([sigma, pair_sigma])
                x_t = torch.cat([x_t, noisy_latents(sampling, pair_sigma, pair_noise, pair_latents)])
                prompts = prompts + pair_prompts
            inputs = conds.batch(prompts, tuple(latents.shape[1:]))
            options = dict(model.model_options.get("transformer_options", {}))
            with self._autocast():
                denoised = model.model.apply_model(x_t, sigma, transformer_options=options, **inputs)
            taught = [
                n for n in spans if n == "trigger" or (n == "class" and self.settings.prior_target == "base_model")
            ]
            target = latents
            if taught:
                # Every row held to the base model's prediction in one teacher forward, not one per term.
                index = torch.cat([torch.arange(x_t.shape[0], device=x_t.device)[spans[n]] for n in taught])
                target = latents.float().clone()
                target[index] = self._base_prediction(
                    model, conds, x_t[index], sigma[index], [prompts[i] for i in index.tolist()], options
                ).float()
            error = prediction_error(sampling, sigma, x_t, denoised, target)
            errors.update({n: error[rows] for n, rows in spans.items()})
        s = self.settings
        loss = prior_preservation_loss(errors["instance"], errors.get("class"), s.prior_loss_weight)
        if "trigger" in errors:
            loss = loss + s.trigger_word_prior * errors["trigger"].mean()
        return loss

    def _base_prediction(
        self,
        model: Any,
        conds: ConditioningCache,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        prompts: list[str],
        options: dict[str, Any],
    ) -> torch.Tensor:
        """The given MODEL's denoised prediction on these rows: this run's adapters bypassed, no gradient.

        With ``prior_target`` ``base_model`` the class images' target is what the model predicted
        before training on the same noisy input, not the clean image: the class term then measures
        only how far the adapters moved the class, without the prediction's own error.
        """
        inputs = conds.batch(prompts, tuple(x_t.shape[1:]))
        run = self.adapter_set.parameters()
        with torch.no_grad(), adapters_bypassed(diffusion_model(model), run), self._autocast():
            return model.model.apply_model(x_t, sigma, transformer_options=options, **inputs).detach()

    def _rows(self, counts: list[int]) -> torch.Tensor:
        """Indices of this process's rows in a concatenation of pool batches of ``counts`` samples."""
        rows: list[int] = []
        offset = 0
        for count in counts:
            rows += [offset + i for i in range(count)[self.sync.shard(count)]]
            offset += count
        return torch.tensor(rows, dtype=torch.long)

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- checkpoints, resume and previews --------------------------------------------------------------

    def _checkpoint(self, data: RunData, step: int, losses: list[float], optimisation: PhaseOptimisation) -> None:
        if not self.settings.checkpoint_dir or not self.sync.writes_files:
            return
        path = Path(self.settings.checkpoint_dir) / data.run_key / f"step_{step:06d}.ckpt"
        state = RunState(
            run_key=data.run_key,
            step=step,
            phase=phase_at(max(step - 1, 0), self.settings.steps),
            losses=list(losses),
            parameters=self.adapter_set.parameters(),
            optimizer=optimisation.optimizer.state_dict(),
            scheduler=optimisation.scheduler.state_dict(),
            generator=self.generator.get_state(),
            samplers={name: sampler.state() for name, sampler in data.samplers.items()},
            spec=self.spec.to_json(),
            scaler=optimisation.scaler.state_dict() if optimisation.scaler is not None else None,
            trigger_word=self.trigger_word,
            class_word=self.class_word,
        )
        try:
            state.save(path)
        except OSError as exc:
            # A run asked to keep checkpoints must not go on without them, nor end with a bare OSError: the
            # message names the file as resume_from lists it (never the server path) and the reason.
            reason = exc.strerror or type(exc).__name__
            raise CheckpointWriteError(
                f"could not write the training checkpoint ({reason}); the run stopped. Free disk space or make "
                "output/taptune/checkpoints writable, or set checkpoint_every to 0",
                input_name="checkpoint_every",
                file=f"{data.run_key}/{path.name}",
            ) from None
        self.checkpoints.append(str(path))
        log.info("TapTune: checkpoint %s", path)

    def _resume(self, data: RunData, optimisation: PhaseOptimisation) -> tuple[int, list[float], PhaseOptimisation]:
        state = self.resume_state
        assert state is not None
        if state.run_key != data.run_key:
            raise TrainingInputError(
                "resume_from",
                "this checkpoint was made from other inputs (spec, images, prompts or settings differ); resume with the "
                "same graph, changing only steps, validation or checkpoint settings",
            )
        parameters = self.adapter_set.parameters()
        if [tuple(p.shape) for p in parameters] != [tuple(p.shape) for p in state.parameters]:
            raise TrainingInputError("resume_from", "the checkpoint holds a different adapter")
        if state.phase is not Phase.MAIN and phase_at(state.step, self.settings.steps) is Phase.MAIN:
            raise TrainingInputError(
                "steps",
                f"the checkpoint is in the post-stage; steps must stay at most {state.step} to resume it",
            )
        with torch.no_grad():
            for p, saved in zip(parameters, state.parameters, strict=True):
                p.copy_(saved.to(p))
        if state.phase != optimisation.phase:
            optimisation = self._optimisation(state.phase, optimisation.scaler)
        try:
            optimisation.optimizer.load_state_dict(state.optimizer)
            optimisation.scheduler.load_state_dict(state.scheduler)
            check_optimizer_state(optimisation.optimizer)
            if optimisation.scaler is not None and state.scaler:
                optimisation.scaler.load_state_dict(state.scaler)
            self.generator.set_state(state.generator)
            for name, sampler in data.samplers.items():
                sampler.restore(state.samplers.get(name, []))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError):
            raise TrainingInputError(
                "resume_from", "the checkpoint's optimiser or data-order state is damaged"
            ) from None
        # The saved scheduler carries the old run's schedule (its total steps); use this run's.
        follow_schedule(optimisation.optimizer, optimisation.scheduler, self._schedule(optimisation.phase))
        log.info("TapTune: resuming at step %d from %s", state.step, self.settings.resume_from)
        return state.step, list(state.losses), optimisation

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
