"""DreamBooth training on a stock-loaded SD 1.x checkpoint: learning, prior preservation, cancel, resume, errors."""

from __future__ import annotations

import comfy.model_management
import comfy.sampler_helpers
import pytest
import torch

from taptune.patching.apply import apply_adapter_set
from taptune.training.conditioning import ConditioningCache
from taptune.training.data import BatchSampler, Pool
from taptune.training.errors import TrainingDivergedError, TrainingInputError
from taptune.training.settings import TrainSettings

from .training_helpers import denoising_error, oft_spec, prediction_drift, smooth_image, tap_spec, train
from .unet_io import fixed_inputs, unet_output

INSTANCE = [smooth_image(i) for i in range(3)]
CLASSES = [smooth_image(100 + i) for i in range(4)]


@pytest.mark.parametrize("kind", ["tap", "oft"])
def test_training_lowers_the_denoising_error_on_the_instance_images(sd15, kind):
    model, clip, vae = sd15
    spec, lr = (tap_spec(), 3e-3) if kind == "tap" else (oft_spec(), 1e-2)
    before = denoising_error(model, clip, vae, INSTANCE, "a photo of sks dog")
    result = train(sd15, spec, INSTANCE, steps=40, learning_rate=lr, batch_size=3)
    after = denoising_error(apply_adapter_set(model, result.adapter_set), clip, vae, INSTANCE, "a photo of sks dog")
    assert result.steps_done == 40 and not result.cancelled
    assert after < 0.85 * before, (before, after)
    # The base model is where it was.
    assert denoising_error(model, clip, vae, INSTANCE, "a photo of sks dog") == before


def test_prior_preservation_keeps_the_class_prediction_closer_to_the_base(sd15):
    """A random model has no prior to preserve, so the base here first learns the class.

    Stage 1 trains an adapter on the class images with the class prompt until the class
    loss has settled: that model is "the base model" (it now denoises its class), and its
    class images play the part of the generated prior-preservation images. Stage 2 is the
    DreamBooth run on top of it, once without and once with prior preservation.
    """
    model, clip, vae = sd15
    size = 32
    instance = [smooth_image(i, size=size) for i in range(3)]
    classes = [smooth_image(100 + i, size=size) for i in range(2)]
    stage1 = train(
        sd15, tap_spec(), classes, steps=300, learning_rate=1e-2, instance_prompt="a photo of dog", resolution=size
    )
    base = apply_adapter_set(model, stage1.adapter_set)
    drift = {}
    for weight in (0.0, 1.0):
        result = train(
            (base, clip, vae), tap_spec(), instance, classes, steps=25, prior_loss_weight=weight, resolution=size
        )
        adapted = apply_adapter_set(base, result.adapter_set)
        drift[weight] = (
            sum(prediction_drift(adapted, base, clip, vae, classes, "a photo of dog", seed=s) for s in range(6)) / 6
        )
    assert drift[1.0] < 0.75 * drift[0.0], drift


def test_the_trigger_word_prior_keeps_the_prompt_without_the_trigger_word(sd15):
    """``trigger_word_prior``: the instance images with the trigger word taken out of their prompt keep the
    base model's prediction, so the adapter changes what ``a photo of dog`` computes on them far less,
    while ``a photo of sks dog`` still learns them (more slowly: on this random model the two prompts
    differ little, so most of what the adapter may change is held)."""
    model, clip, vae = sd15
    before = denoising_error(model, clip, vae, INSTANCE, "a photo of sks dog")
    drift, learnt = {}, {}
    for weight in (0.0, 10.0):
        result = train(sd15, tap_spec(), INSTANCE, steps=40, batch_size=3, trigger_word_prior=weight)
        adapted = apply_adapter_set(model, result.adapter_set)
        drift[weight] = sum(
            prediction_drift(adapted, model, clip, vae, INSTANCE, "a photo of dog", s) for s in range(4)
        )
        learnt[weight] = denoising_error(adapted, clip, vae, INSTANCE, "a photo of sks dog")
    assert drift[10.0] < 0.5 * drift[0.0], drift
    assert learnt[10.0] < 0.95 * before, (before, learnt)


def test_both_base_model_terms_share_one_teacher_forward_with_each_terms_own_rows(sd15, monkeypatch):
    """``prior_target: base_model`` and ``trigger_word_prior`` together: one teacher forward a step, over
    the class rows, then the trigger rows, and the losses are those of a teacher computed one row at a time."""
    from taptune.training.trainer import DreamBoothTrainer

    batched = DreamBoothTrainer._base_prediction
    calls: list[list[str]] = []

    def counted(self, model, conds, x_t, sigma, prompts, options):
        calls.append(list(prompts))
        return batched(self, model, conds, x_t, sigma, prompts, options)

    def row_by_row(self, model, conds, x_t, sigma, prompts, options):
        rows = [
            batched(self, model, conds, x_t[i : i + 1], sigma[i : i + 1], prompts[i : i + 1], options)
            for i in range(len(prompts))
        ]
        return torch.cat(rows)

    common = {
        "steps": 3,
        "batch_size": 2,
        "class_prompt": "a photo of a dog",
        "prior_loss_weight": 1.0,
        "prior_target": "base_model",
        "trigger_word_prior": 10.0,
    }
    monkeypatch.setattr(DreamBoothTrainer, "_base_prediction", counted)
    one = train(sd15, tap_spec(16), INSTANCE, CLASSES, **common)
    assert calls == [["a photo of a dog"] * 2 + ["a photo of dog"] * 2] * 3  # class rows, trigger rows; once a step
    monkeypatch.setattr(DreamBoothTrainer, "_base_prediction", row_by_row)
    reference = train(sd15, tap_spec(16), INSTANCE, CLASSES, **common)
    assert one.losses == pytest.approx(reference.losses, rel=1e-4)


def test_same_seed_same_weights_and_checkpointing_changes_nothing(sd15):
    first = train(sd15, tap_spec(16), INSTANCE, CLASSES, steps=3, prior_loss_weight=1.0)
    second = train(sd15, tap_spec(16), INSTANCE, CLASSES, steps=3, prior_loss_weight=1.0)
    recomputed = train(
        sd15, tap_spec(16), INSTANCE, CLASSES, steps=3, prior_loss_weight=1.0, gradient_checkpointing=True
    )
    for key, value in first.adapter_set.tensors().items():
        assert torch.equal(value, second.adapter_set.tensors()[key])
        torch.testing.assert_close(value, recomputed.adapter_set.tensors()[key], atol=1e-6, rtol=1e-5)
    assert first.losses == second.losses


@pytest.mark.parametrize("kind", ["tap", "oft"])
def test_resume_continues_exactly(sd15, kind, tmp_path):
    """6 steps straight, or Cancel pressed during step 4 and resumed from the checkpoint of step 3: the same adapter."""
    spec = tap_spec(16) if kind == "tap" else oft_spec(coft=True, eps=1e-3, magnitude_steps=2)
    common = {
        "learning_rate": 5e-3,
        "prior_loss_weight": 1.0,
        "checkpoint_dir": str(tmp_path),
        "lr_schedule": "cosine",
        "warmup_steps": 1,
    }
    straight = train(sd15, spec, INSTANCE, CLASSES, steps=6, **common)

    def stop_during_four(step, total, loss, preview):
        # As the Cancel button does: only set the flag. ComfyUI's ops then raise in the middle of
        # step 4's forward pass, after that step has drawn its noise and images.
        if step == 3:
            comfy.model_management.interrupt_current_processing(True)

    stopped = train(sd15, spec, INSTANCE, CLASSES, steps=6, checkpoint_every=100, report=stop_during_four, **common)
    assert stopped.cancelled and stopped.checkpoints[-1].endswith("step_000003.ckpt")
    resumed = train(sd15, spec, INSTANCE, CLASSES, steps=6, resume_from=stopped.checkpoints[-1], **common)
    assert resumed.steps_done == straight.steps_done == 6 + (2 if kind == "oft" else 0)
    for key, value in straight.adapter_set.tensors().items():
        torch.testing.assert_close(resumed.adapter_set.tensors()[key], value, atol=1e-6, rtol=1e-5)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    # Resuming with other inputs is refused.
    with pytest.raises(TrainingInputError, match="made from other inputs"):
        train(sd15, spec, INSTANCE[:2], CLASSES, steps=6, resume_from=stopped.checkpoints[-1], **common)


def test_resume_with_more_steps_stretches_the_schedule(sd15, tmp_path):
    common = {"learning_rate": 5e-3, "checkpoint_dir": str(tmp_path), "lr_schedule": "linear"}
    short = train(sd15, tap_spec(16), INSTANCE, steps=4, checkpoint_every=4, **common)
    longer = train(sd15, tap_spec(16), INSTANCE, steps=8, resume_from=short.checkpoints[-1], **common)
    straight = train(sd15, tap_spec(16), INSTANCE, steps=8, **common)
    changed = max(
        float((longer.adapter_set.tensors()[k] - v).abs().max()) for k, v in short.adapter_set.tensors().items()
    )
    assert changed > 1e-6  # the old schedule would have reached a learning rate of 0 at step 4
    assert longer.steps_done == 8 and len(longer.losses) == 8
    assert straight.losses[:1] == pytest.approx(longer.losses[:1])


def test_cancel_keeps_the_last_completed_step_and_the_base(sd15, tmp_path):
    model = sd15[0]
    x, sigma, ctx, _ = fixed_inputs(768, seed=21)
    before = unet_output(model, x, sigma, ctx)

    def cancel_at_three(step, total, loss, preview):
        if step == 3:
            comfy.model_management.interrupt_current_processing(True)
            comfy.model_management.throw_exception_if_processing_interrupted()

    cancelled = train(
        sd15, tap_spec(16), INSTANCE, steps=10, report=cancel_at_three, checkpoint_every=5, checkpoint_dir=str(tmp_path)
    )
    three = train(sd15, tap_spec(16), INSTANCE, steps=3)
    assert cancelled.cancelled and cancelled.steps_done == 3 and len(cancelled.losses) == 3
    for key, value in three.adapter_set.tensors().items():
        assert torch.equal(cancelled.adapter_set.tensors()[key], value)
    assert cancelled.checkpoints and cancelled.checkpoints[-1].endswith("step_000003.ckpt")
    assert not comfy.model_management.processing_interrupted()
    assert torch.equal(unet_output(model, x, sigma, ctx), before)


def test_nan_loss_stops_with_a_clear_error_and_no_nan_weights(sd15):
    model = sd15[0]
    x, sigma, ctx, _ = fixed_inputs(768, seed=22)
    before = unet_output(model, x, sigma, ctx)
    broken = [smooth_image(0), smooth_image(1).clone()]
    broken[1][5, 5, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"at step 1: lower the learning_rate .* bf16 or fp32"):
        train(sd15, tap_spec(16), broken, steps=3, batch_size=2)
    assert torch.equal(unet_output(model, x, sigma, ctx), before)


@pytest.mark.parametrize("kind", ["tap", "oft"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_with_fp32_master_weights(sd15, precision, kind):
    spec = tap_spec(16) if kind == "tap" else oft_spec()
    result = train(sd15, spec, INSTANCE, steps=2, precision=precision)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(t.dtype == torch.float32 for t in result.adapter_set.tensors().values())


@pytest.mark.parametrize(
    "case,input_name,message",
    [
        ("no_images", "instance_images", "no images"),
        ("mixed_sizes", "instance_images", "images of mixed sizes"),
        ("spec_does_not_fit", "spec", "input width 320 does not divide into r=7 blocks"),
        ("untrainable_layer", "spec", "'time_embed.0' cannot be trained with OFT"),
        ("no_class_prompt", "class_prompt", "prior preservation is on"),
        ("no_class_images", "class_images", "no class images are connected"),
        ("prompt_lines", "instance_prompt", "has 2 lines but there are 3 images"),
        ("no_trigger_word", "instance_prompt", "trigger_word_prior needs a trigger word"),
        (
            "a_line_without_the_trigger_word",
            "instance_prompt",
            "line 2 ('a photo of dog') lacks the trigger word 'sks'",
        ),
    ],
)
def test_bad_input_is_refused_before_training(sd15, case, input_name, message):
    from taptune.adapter_core import OFTConfig, OFTSpec

    reports = []
    kwargs = {"report": lambda *a: reports.append(a)}
    images, classes, spec = INSTANCE, None, tap_spec(8)
    if case == "no_images":
        images = []
    elif case == "mixed_sizes":
        images = [smooth_image(0), smooth_image(1, size=96)]
        kwargs["resize_mode"] = "none"
    elif case == "spec_does_not_fit":
        spec = OFTSpec(OFTConfig(r=7))
    elif case == "untrainable_layer":
        spec = OFTSpec(OFTConfig(r=4), targets=("time_embed.0",))
    elif case == "no_class_prompt":
        kwargs.update(prior_loss_weight=1.0, class_prompt="  ")
        classes = CLASSES
    elif case == "no_class_images":
        kwargs.update(prior_loss_weight=1.0)
    elif case == "prompt_lines":
        kwargs["instance_prompt"] = "a photo of sks dog\na photo of sks dog sitting"
    elif case == "no_trigger_word":
        kwargs.update(instance_prompt="a photo of dog", trigger_word_prior=1.0)
    elif case == "a_line_without_the_trigger_word":
        kwargs.update(instance_prompt="a photo of sks dog\na photo of dog\nsks dog", trigger_word_prior=1.0)
    with pytest.raises(TrainingInputError) as caught:
        train(sd15, spec, images, classes, **kwargs)
    assert caught.value.input_name == input_name
    assert message in str(caught.value)
    assert reports == []


def test_batches_pair_every_image_with_its_own_prompt(sd15):
    model, clip, _ = sd15
    latents = [torch.full((4, 8, 8), float(i)) for i in range(5)]
    prompts = [f"a photo of sks dog number {i}" for i in range(5)]
    sampler = BatchSampler(Pool(latents, prompts), batch_size=3)
    cache = ConditioningCache(model, clip, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(6):
        batch = sampler.next(g)
        seen.update(batch.indices)
        assert batch.prompts == [prompts[i] for i in batch.indices]
        assert [int(t[0, 0, 0]) for t in batch.latents] == batch.indices
        context = cache.batch(batch.prompts, (4, 8, 8))["c_crossattn"]
        for row, i in enumerate(batch.indices):
            single = comfy.sampler_helpers.convert_cond(cache.conditioning(prompts[i]))[0]["cross_attn"]
            assert torch.equal(context[row], single[0])
    assert seen == set(range(5))


def test_a_later_setting_at_its_default_leaves_the_run_key_as_it_was():
    """Checkpoints written before ``prior_target`` existed still resume: its default is not in the key."""
    from taptune.training.run_data import RUN_DEFINING_SETTINGS, run_defining_settings
    from taptune.training.run_state import run_key

    plain = TrainSettings()
    # The settings that defined a run before prior_target existed, by name.
    assert (
        set(run_defining_settings(plain))
        == {
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
        }
        == set(RUN_DEFINING_SETTINGS)
    )
    teacher = run_defining_settings(TrainSettings(prior_target="base_model"))
    assert teacher["prior_target"] == "base_model"
    assert run_key({"settings": teacher}) != run_key({"settings": run_defining_settings(plain)})
    # Without a prior the target changes nothing, so it does not split the runs' keys either.
    no_prior = TrainSettings(prior_loss_weight=0.0)
    assert run_defining_settings(TrainSettings(prior_loss_weight=0.0, prior_target="base_model")) == (
        run_defining_settings(no_prior)
    )
    # The trigger word's prior (added later still) splits keys only when it is on.
    trigger = run_defining_settings(TrainSettings(trigger_word_prior=10.0))
    assert trigger["trigger_word_prior"] == 10.0
    assert run_key({"settings": trigger}) != run_key({"settings": run_defining_settings(plain)})


def test_class_images_take_one_prompt_or_one_per_image():
    from taptune.training.prompts import trigger_and_class_words
    from taptune.training.run_data import check_data

    settings = TrainSettings(prior_loss_weight=1.0)
    images = [torch.zeros(1, 8, 8, 3)] * 3
    check_data(settings, images, "a sks star", "a star", images)
    check_data(settings, images, "a sks star", "a star\na red star\na blue star", images)
    with pytest.raises(TrainingInputError) as raised:
        check_data(settings, images, "a sks star", "a star\na red star", images)
    assert raised.value.input_name == "class_prompt" and "has 2 lines but there are 3 images" in str(raised.value)
    assert trigger_and_class_words("a sks star", "a star\na red star on a blue background") == ("sks", "star")
