"""Faults during training leave no trace: cancel, exceptions, NaN and failed checkpoint writes.

One test walks through many fault points (drawn from a seeded generator, so a failure
reproduces): Cancel at a step (ComfyUI's interrupt flag, landing inside the next forward pass
or thrown from the progress report), an exception raised in the forward pass, the backward
pass, the optimiser step, the data order, the progress report or a preview, a NaN loss,
infinite gradients, and checkpoint writes that fail half-way or cannot start. After every
fault the base MODEL computes bit-identical outputs and has bit-identical weights, carries
exactly the patches it had, no training clone stays in ComfyUI's model management, the
interrupt flag is clear, no half-written checkpoint lies under a final name, and the next run
trains and samples.

Faults are injected through real mechanisms: ComfyUI's interrupt, the trainer's report
callback, torch hooks (gradient hooks, optimiser step hooks), and monkeypatched *pack*
functions (the loss, the data sampler, the preview sampler); ComfyUI itself is never mocked.
"""

from __future__ import annotations

import errno
import io
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import comfy.model_management
import pytest
import torch

import taptune.training.trainer as trainer_module
from devtools.checkpoints import SD15_TINY, build_model_patcher
from devtools.standins import FixedTextEncoder, PixelVAE
from taptune.adapter_core.errors import TapTuneError
from taptune.adapter_core.safe_write import TEMP_SUFFIX
from taptune.patching.apply import apply_adapter_set
from taptune.training.data import BatchSampler
from taptune.training.errors import TrainingDivergedError
from taptune.training.run_state import RunState
from taptune.training.visuals import sample_images

from .training_helpers import oft_spec, smooth_image, tap_spec, train
from .unet_io import fixed_inputs, unet_output

SIZE = 32  # 4x4 latents: every step is cheap, the code paths are the same as at 512
STEPS = 3
CHECKPOINT_EVERY = 2
INSTANCE = [smooth_image(i, size=SIZE) for i in range(2)]
SEED = 11  # the fault points below are drawn from this seed


class DecodingPixelVAE(PixelVAE):
    """The pooling VAE stand-in, with a decoder (previews and samples need one): latents back to pixels."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = torch.nn.functional.interpolate(latents[:, :3].float(), scale_factor=8, mode="nearest")
        return pixels.clamp(0, 1).movedim(1, -1)


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE): a narrow SD 1.x UNet in a ComfyUI ModelPatcher, and stand-ins for CLIP and VAE.

    Dozens of runs follow one another here; the narrow UNet and the stand-ins keep each run cheap
    while every path (model management, patches, sampler) is ComfyUI's own.
    """
    return build_model_patcher("SD15", SD15_TINY, seed=5), FixedTextEncoder(768), DecodingPixelVAE()


class InjectedError(RuntimeError):
    """The exception the test injects (distinguishable from anything the code raises itself)."""


# -- what the base model is, to compare after each fault --------------------------------------------------


def _identities(value: Any) -> Any:
    """A structure of object ids mirroring dicts, lists and tuples (a patch swapped or added shows up)."""
    if isinstance(value, dict):
        return {k: _identities(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_identities(v) for v in value]
    return id(value)


def model_snapshot(model: Any) -> dict[str, Any]:
    """What a node must never change on the MODEL it was given (besides its outputs)."""
    unet = model.model.diffusion_model
    return {
        "patches": _identities(model.patches),
        "patches_uuid": model.patches_uuid,
        "object_patches": _identities(model.object_patches),
        "model_options": _identities(model.model_options),
        "modules": [(name, type(m)) for name, m in unet.named_modules()],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in unet.modules()
        ),
    }


def requires_grad_flags(model: Any) -> list[tuple[str, bool]]:
    """The UNet parameters' ``requires_grad`` flags (training freezes and unfreezes them)."""
    return [(name, p.requires_grad) for name, p in model.model.diffusion_model.named_parameters()]


def clones_still_loaded(clones: list[Any]) -> list[Any]:
    """The ``clones`` that ComfyUI's model management still holds as loaded."""
    loaded = [entry.model for entry in comfy.model_management.current_loaded_models]
    return [clone for clone in clones if any(patcher is clone for patcher in loaded)]


@contextmanager
def recording_training_clones() -> Iterator[list[Any]]:
    """Keep every training clone a run makes (strongly: ComfyUI's loaded list holds only weak references)."""
    clones: list[Any] = []
    original = trainer_module.training_clone

    def recording(*args: Any, **kwargs: Any) -> Any:
        clone = original(*args, **kwargs)
        clones.append(clone)
        return clone

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "training_clone", recording)
        yield clones


# -- fault points ----------------------------------------------------------------------------------------


def fault_points(seed: int) -> list[tuple[str, str, int]]:
    """(fault, adapter kind, step) triples: 20 fault points, steps and kinds drawn at random."""
    rng = random.Random(seed)
    faults = [
        "cancel_flag",  # flag set in the report of a step: lands in the next step's forward pass
        "cancel_thrown",  # flag set and thrown, as ComfyUI's progress-bar hook does
        "cancel_in_preview",  # the flag lands inside a validation preview's sampling
        "error_forward",
        "oom_forward",
        "error_backward",
        "error_optimizer_step",
        "error_data_order",
        "error_report",
        "error_preview",
        "nan_loss",
        "inf_gradients",
        "checkpoint_write_fails",  # ENOSPC half-way through a checkpoint file
        "checkpoint_folder_unusable",  # the checkpoint folder cannot be created
        "checkpoint_fails_on_cancel",  # the checkpoint written on Cancel fails
    ]
    points = []
    for fault in faults + rng.sample(faults, 5):  # every fault once, five of them twice
        last = STEPS - 1 if fault in ("cancel_flag", "checkpoint_fails_on_cancel") else STEPS
        points.append((fault, rng.choice(["tap", "oft"]), rng.randint(1, last)))
    rng.shuffle(points)
    return points


@contextmanager
def injected(fault: str, step: int, checkpoints: Path) -> Iterator[dict[str, Any]]:
    """Arrange ``fault`` at 1-based ``step``; yields the run's extra settings (report callback included)."""
    extra: dict[str, Any] = {"checkpoint_every": CHECKPOINT_EVERY, "checkpoint_dir": str(checkpoints)}
    calls = {"loss": 0, "batches": 0, "previews": 0}
    with pytest.MonkeyPatch.context() as mp:

        def loss_hook(effect: Callable[[torch.Tensor], torch.Tensor]) -> None:
            # prediction_error runs once per step here (batch 1, no prior preservation, one micro-batch).
            original = trainer_module.prediction_error

            def patched(*args: Any) -> torch.Tensor:
                calls["loss"] += 1
                error = original(*args)
                return effect(error) if calls["loss"] == step else error

            mp.setattr(trainer_module, "prediction_error", patched)

        if fault == "cancel_flag":

            def report(done: int, total: int, loss: float, preview: Any) -> None:
                if done == step:
                    comfy.model_management.interrupt_current_processing(True)

            extra["report"] = report
        elif fault == "cancel_thrown":

            def report(done: int, total: int, loss: float, preview: Any) -> None:
                if done == step:
                    comfy.model_management.interrupt_current_processing(True)
                    comfy.model_management.throw_exception_if_processing_interrupted()

            extra["report"] = report
        elif fault in ("cancel_in_preview", "error_preview"):
            original_sample = trainer_module.sample_images

            def sample(*args: Any, **kwargs: Any) -> torch.Tensor:
                calls["previews"] += 1
                if calls["previews"] == step:
                    if fault == "error_preview":
                        raise InjectedError("preview")
                    comfy.model_management.interrupt_current_processing(True)  # ComfyUI's sampler raises
                return original_sample(*args, **kwargs)

            mp.setattr(trainer_module, "sample_images", sample)
            extra.update(validation_prompt="a photo of sks dog", validation_every=1, validation_steps=1)
        elif fault == "error_forward":
            loss_hook(lambda error: _raise(InjectedError("forward")))
        elif fault == "oom_forward":
            loss_hook(lambda error: _raise(torch.OutOfMemoryError("injected: out of memory")))
        elif fault == "error_backward":

            def raising_hook(grad: torch.Tensor) -> torch.Tensor:
                raise InjectedError("backward")

            loss_hook(lambda error: _with_grad_hook(error, raising_hook))
        elif fault == "inf_gradients":
            loss_hook(lambda error: _with_grad_hook(error, lambda grad: grad * math.inf))
        elif fault == "nan_loss":
            loss_hook(lambda error: error * math.nan)
        elif fault == "error_optimizer_step":
            original_build = trainer_module.build_optimizer

            def build(*args: Any, **kwargs: Any) -> Any:
                optimizer, scheduler = original_build(*args, **kwargs)

                def pre_step(opt: Any, a: Any, k: Any) -> None:
                    calls["loss"] += 1
                    if calls["loss"] == step:
                        raise InjectedError("optimizer step")

                optimizer.register_step_pre_hook(pre_step)
                return optimizer, scheduler

            mp.setattr(trainer_module, "build_optimizer", build)
        elif fault == "error_data_order":
            original_next = BatchSampler.next

            def next_batch(self: BatchSampler, generator: torch.Generator) -> Any:
                calls["batches"] += 1
                if calls["batches"] == step:
                    raise InjectedError("data order")
                return original_next(self, generator)

            mp.setattr(BatchSampler, "next", next_batch)
        elif fault == "error_report":

            def report(done: int, total: int, loss: float, preview: Any) -> None:
                if done == step:
                    raise InjectedError("report")

            extra["report"] = report
        elif fault in ("checkpoint_write_fails", "checkpoint_fails_on_cancel"):
            # The disk fills up half-way through the file: torch.save has written part of it.
            real_save = torch.save

            def failing_save(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                Path(target).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")

            if fault == "checkpoint_write_fails":
                extra["checkpoint_every"] = step
            else:  # checkpoints only on Cancel, which is pressed during the step after ``step``

                def report(done: int, total: int, loss: float, preview: Any) -> None:
                    if done == step:
                        comfy.model_management.interrupt_current_processing(True)

                extra.update(report=report, checkpoint_every=100)
            mp.setattr(torch, "save", failing_save)
        elif fault == "checkpoint_folder_unusable":
            blocker = checkpoints.parent / f"{checkpoints.name}-a-file"
            blocker.write_text("not a folder")
            extra.update(checkpoint_dir=str(blocker / "checkpoints"), checkpoint_every=step)
        else:
            raise AssertionError(fault)
        yield extra


def _raise(exc: BaseException) -> torch.Tensor:
    """Raise ``exc`` (from a lambda, which cannot hold a raise statement)."""
    raise exc


def _with_grad_hook(error: torch.Tensor, hook: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    error = error * 1.0  # a fresh node of the graph, whose gradient the hook sees during backward
    error.register_hook(hook)
    return error


def expected_outcome(fault: str, step: int, outcome: Any) -> None:
    """What a run with ``fault`` at ``step`` must have ended with (a result or an exception)."""
    if fault in ("cancel_flag", "cancel_thrown", "cancel_in_preview"):
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.cancelled and outcome.steps_done == step and len(outcome.losses) == step
        assert all(torch.isfinite(t).all() for t in outcome.adapter_set.tensors().values())
    elif fault in ("nan_loss", "inf_gradients"):
        assert isinstance(outcome, TrainingDivergedError), outcome
        assert outcome.input_name == "learning_rate"
        assert ("loss became nan" if fault == "nan_loss" else "gradients became infinite") in str(outcome)
        assert f"at step {step}:" in str(outcome)
    elif fault.startswith("checkpoint_"):
        assert isinstance(outcome, TapTuneError), outcome
        assert outcome.input_name in ("checkpoint_every", "checkpoint_dir")
        assert "checkpoint" in str(outcome)
        if fault != "checkpoint_folder_unusable":
            assert "No space left on device" in str(outcome)
            assert outcome.file is not None and outcome.file.endswith(f"step_{step:06d}.ckpt")
    elif fault == "oom_forward":
        assert isinstance(outcome, torch.OutOfMemoryError), outcome
    else:
        assert isinstance(outcome, InjectedError), outcome


def checkpoint_files_sound(folder: Path) -> None:
    """Every checkpoint under a final name loads; no temporary of this (live) process is left behind."""
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        assert not path.name.endswith(TEMP_SUFFIX), f"temporary left behind: {path}"
        if path.is_file():
            state = RunState.load(path)
            assert path.name == f"step_{state.step:06d}.ckpt"


def next_run_trains_and_samples(models: Any, kind: str) -> None:
    """A clean run after a fault: trains, previews (samples through ComfyUI's sampler), and its adapter samples."""
    model, clip, vae = models
    previews = []
    spec = tap_spec(8) if kind == "tap" else oft_spec()
    result = train(
        models,
        spec,
        INSTANCE,
        steps=1,
        batch_size=1,
        resolution=SIZE,
        validation_prompt="a photo of sks dog",
        validation_every=1,
        validation_steps=1,
        report=lambda step, total, loss, preview: previews.append(preview),
    )
    assert result.steps_done == 1 + spec.post_steps and not result.cancelled
    assert all(math.isfinite(v) for v in result.losses)
    assert previews[-1] is not None and previews[-1].size == (SIZE, SIZE)
    adapted = apply_adapter_set(model, result.adapter_set)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of sks dog"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    image = sample_images(adapted, vae, positive, negative, (4, SIZE // 8, SIZE // 8), [3], 1, cfg=7.0)
    assert image.shape == (1, SIZE, SIZE, 3) and torch.isfinite(image).all()


def test_faults_during_training_leave_the_base_model_untouched(tiny, tmp_path):
    model = tiny[0]
    x, sigma, ctx, _ = fixed_inputs(768, seed=31, size=8)
    before = unet_output(model, x, sigma, ctx)
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    snapshot = model_snapshot(model)

    def assert_untouched(where: str, clones: list[Any]) -> None:
        assert clones, where  # the run got as far as making its training clone
        assert clones_still_loaded(clones) == [], where
        assert not comfy.model_management.processing_interrupted(), where
        assert torch.equal(unet_output(model, x, sigma, ctx), before), where
        assert model_snapshot(model) == snapshot, where
        for key, value in model.model.diffusion_model.state_dict().items():
            assert torch.equal(value, weights[key]), (where, key)

    points = fault_points(SEED)
    assert len(points) == 20 and len({p[0] for p in points}) == 15
    for index, (fault, kind, step) in enumerate(points):
        where = f"fault {index} {fault} ({kind}) at step {step}"
        checkpoints = tmp_path / f"run{index}"
        spec = tap_spec(8) if kind == "tap" else oft_spec()
        # Taken per run: ComfyUI itself resets these flags when it unpatches weights after sampling
        # (the previous round's adapted model); the training run must put back whatever it found.
        flags = requires_grad_flags(model)
        with recording_training_clones() as clones, injected(fault, step, checkpoints) as extra:
            try:
                outcome: Any = train(tiny, spec, INSTANCE, steps=STEPS, batch_size=1, resolution=SIZE, **extra)
            except (Exception, comfy.model_management.InterruptProcessingException) as exc:
                outcome = exc
        expected_outcome(fault, step, outcome)
        # Before anything loads the base again: the run itself left no patch in the module tree.
        assert model_snapshot(model) == snapshot, where
        assert requires_grad_flags(model) == flags, where
        assert_untouched(where, clones)
        checkpoint_files_sound(checkpoints)
        with recording_training_clones() as clones:
            next_run_trains_and_samples(tiny, kind)
        assert_untouched(f"the run after {where}", clones)
