"""The pure parts of a training run, directly: schedules, buckets, prompts, batches, settings, run state.

No ComfyUI here: these are the pieces the trainer is assembled from, tested on their own.
"""

from __future__ import annotations

import math

import pytest
import torch

from taptune.adapter_core import TapTuneError
from taptune.adapter_core.kind import Phase
from taptune.training.data import BatchSampler, Pool
from taptune.training.errors import TrainingInputError
from taptune.training.images import bucket_sizes, cover_and_crop, flatten_images, nearest_bucket, prepare_images
from taptune.training.optimisation import build_optimizer, follow_schedule, phase_at
from taptune.training.prompts import (
    prompt_lines,
    prompts_for_images,
    trigger_and_class_words,
    trigger_word_pairs,
    without_word,
)
from taptune.training.run_state import RunState, run_key
from taptune.training.schedule import LearningRateSchedule
from taptune.training.settings import TrainSettings, check_settings

# -- learning-rate schedules --------------------------------------------------------------------


def test_constant_schedule_with_warmup():
    schedule = LearningRateSchedule("constant", total_steps=10, warmup_steps=4)
    assert [schedule(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_schedule_reaches_zero_at_the_end():
    schedule = LearningRateSchedule("linear", total_steps=10, warmup_steps=0)
    assert schedule(0) == 1.0
    assert schedule(5) == pytest.approx(0.5)
    assert schedule(10) == 0.0 and schedule(50) == 0.0


def test_cosine_schedule_after_warmup():
    schedule = LearningRateSchedule("cosine", total_steps=12, warmup_steps=2)
    assert schedule(1) == 1.0  # last warm-up step
    assert schedule(2) == pytest.approx(1.0)
    assert schedule(7) == pytest.approx(0.5)
    assert schedule(12) == pytest.approx(0.0, abs=1e-12)
    values = [schedule(s) for s in range(2, 13)]
    assert values == sorted(values, reverse=True)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        LearningRateSchedule("step", 10)


def test_a_restored_scheduler_follows_the_new_run_length():
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer, scheduler = build_optimizer("sgd", [p], 1.0, 0.0, LearningRateSchedule("linear", 10))
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    follow_schedule(optimizer, scheduler, LearningRateSchedule("linear", 20))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.75)


def test_phases():
    assert [phase_at(s, 3) for s in range(5)] == [Phase.MAIN] * 3 + [Phase.POST] * 2


# -- images and buckets ----------------------------------------------------------------------------


def test_buckets_keep_the_area_and_the_aspect_bound():
    buckets = bucket_sizes(512)
    assert (512, 512) in buckets
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0
        assert h * w <= 512 * 512
        assert max(h / w, w / h) <= 2.5


@pytest.mark.parametrize("size,expected_ratio", [((300, 600), 2.0), ((600, 300), 0.5), ((400, 400), 1.0)])
def test_nearest_bucket_follows_the_aspect_ratio(size, expected_ratio):
    h, w = nearest_bucket(*size, resolution=256)
    assert abs(w / h - expected_ratio) / expected_ratio < 0.35


def test_center_crop_covers_then_crops():
    img = torch.zeros(40, 80, 3)
    img[:, 20:60] = 1.0  # a white band in the middle third
    out = cover_and_crop(img, 32, 32)
    assert out.shape == (32, 32, 3)
    assert out[:, 8:24].mean() > 0.9  # the centre survived


def test_prepare_images_refuses_mixed_sizes_without_resizing():
    images = [torch.zeros(64, 64, 3), torch.zeros(64, 128, 3)]
    with pytest.raises(TrainingInputError, match="mixed sizes") as raised:
        prepare_images(images, "none", 64, "instance_images")
    assert raised.value.input_name == "instance_images"
    assert [i.shape for i in prepare_images(images, "center_crop", 64, "x")] == [(64, 64, 3)] * 2


def test_flatten_images_takes_batches_and_lists():
    assert len(flatten_images(torch.zeros(3, 8, 8, 4))) == 3
    assert [i.shape for i in flatten_images([torch.zeros(1, 8, 8, 3), torch.zeros(8, 8, 3)])] == [(8, 8, 3)] * 2
    assert flatten_images(None) == []


# -- prompts ------------------------------------------------------------------------------------------


def test_one_prompt_for_all_or_one_per_image():
    assert prompts_for_images("a photo of sks dog", 3, "instance_prompt") == ["a photo of sks dog"] * 3
    assert prompts_for_images("one\n\n two \nthree", 3, "instance_prompt") == ["one", "two", "three"]
    with pytest.raises(TrainingInputError, match="has 2 lines but there are 3 images"):
        prompts_for_images("one\ntwo", 3, "instance_prompt")
    with pytest.raises(TrainingInputError, match="is empty"):
        prompts_for_images("  \n", 2, "instance_prompt")
    assert prompt_lines(" a \n\n b ") == ["a", "b"]


@pytest.mark.parametrize(
    "instance,klass,expected",
    [
        ("a photo of sks dog", "a photo of dog", ("sks", "dog")),
        ("a sks star", "a star", ("sks", "star")),
        ("ohwx woman, studio light", "a photo of a woman", ("ohwx", "woman")),
        ("a dog", "", ("dog", "")),
    ],
)
def test_trigger_and_class_words(instance, klass, expected):
    assert trigger_and_class_words(instance, klass) == expected


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("a photo of sks dog", "a photo of dog"),
        ("SKS dog, sks  on grass", "dog, on grass"),
        ("a sksx dog and sks-dog", "a sksx dog and sks-dog"),  # whole words only, as the trigger word is found
    ],
)
def test_the_trigger_word_comes_out_of_a_prompt_as_a_whole_word(prompt, expected):
    assert without_word(prompt, "sks") == expected


def test_the_trigger_word_prior_pairs_every_instance_prompt_or_names_the_line_without_it():
    assert trigger_word_pairs(["a sks star", "a sks star on a red background"], "sks") == {
        "a sks star": "a star",
        "a sks star on a red background": "a star on a red background",
    }
    with pytest.raises(TrainingInputError, match="line 2") as raised:
        trigger_word_pairs(["a sks star", "a star"], "sks")
    assert raised.value.input_name == "instance_prompt"
    with pytest.raises(TrainingInputError, match="needs a trigger word"):
        trigger_word_pairs(["a star"], "")


# -- batches ---------------------------------------------------------------------------------------


def _pool(shapes: list[tuple[int, int]]) -> Pool:
    latents = [torch.full((4, h, w), float(i)) for i, (h, w) in enumerate(shapes)]
    return Pool(latents, [f"prompt {i}" for i in range(len(shapes))])


def test_batches_pair_images_with_their_prompts_and_cover_an_epoch():
    pool = _pool([(8, 8)] * 6)
    sampler = BatchSampler(pool, 2)
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(3):
        batch = sampler.next(g)
        for index, latent, prompt in zip(batch.indices, batch.latents, batch.prompts, strict=True):
            assert float(latent[0, 0, 0]) == index and prompt == f"prompt {index}"
        seen += batch.indices
    assert sorted(seen) == list(range(6))


def test_a_batch_stays_inside_one_bucket():
    pool = _pool([(8, 8), (8, 16), (8, 8), (8, 16), (8, 16)])
    sampler = BatchSampler(pool, 2)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        batch = sampler.next(g)
        assert len({tuple(pool.latents[i].shape) for i in batch.indices}) == 1


def test_a_sampler_resumes_the_same_sequence():
    pool = _pool([(8, 8)] * 5)
    a, b = BatchSampler(pool, 2), BatchSampler(pool, 2)
    g = torch.Generator().manual_seed(1)
    a.next(g)
    saved_queue, saved_generator = a.state(), g.get_state()
    expected = [a.next(g).indices for _ in range(4)]
    g2 = torch.Generator()
    g2.set_state(saved_generator)
    b.restore(saved_queue)
    assert [b.next(g2).indices for _ in range(4)] == expected
    with pytest.raises(ValueError, match="does not fit this pool"):
        b.restore([0, 99])


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,input_name",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 65}, "batch_size"),
        ({"prior_loss_weight": math.nan}, "prior_loss_weight"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"precision": "fp8"}, "precision"),
        ({"resolution": 100}, "resolution"),
        ({"steps": True}, "steps"),
        ({"weight_decay": math.inf}, "weight_decay"),
        ({"prior_target": "teacher"}, "prior_target"),
        ({"trigger_word_prior": -1.0}, "trigger_word_prior"),
        ({"trigger_word_prior": math.nan}, "trigger_word_prior"),
    ],
)
def test_settings_name_the_input_at_fault(change, input_name):
    with pytest.raises(TrainingInputError) as raised:
        check_settings(TrainSettings(**change), 1e-4)
    assert raised.value.input_name == input_name
    assert isinstance(raised.value, TapTuneError)


def test_learning_rate_must_be_positive_and_finite():
    check_settings(TrainSettings(), 1e-4)
    for rate in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(TrainingInputError) as raised:
            check_settings(TrainSettings(), rate)
        assert raised.value.input_name == "learning_rate"


# -- run state --------------------------------------------------------------------------------------


def _state(step: int = 3) -> RunState:
    p = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = torch.optim.AdamW([p], lr=1e-3, foreach=False)
    p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return RunState(
        run_key=run_key({"a": 1}),
        step=step,
        phase=Phase.POST,
        losses=[0.5] * step,
        parameters=[p],
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        generator=torch.Generator().manual_seed(9).get_state(),
        samplers={"instance": [2, 0, 1]},
        spec={"kind": "tap"},
        trigger_word="sks",
        class_word="dog",
    )


def test_run_state_round_trip(tmp_path):
    state = _state()
    path = state.save(tmp_path / "run" / "step_000003.ckpt")
    loaded = RunState.load(path)
    assert loaded.run_key == state.run_key and loaded.step == 3 and loaded.phase == Phase.POST
    assert loaded.losses == state.losses and loaded.samplers == state.samplers
    assert torch.equal(loaded.parameters[0], state.parameters[0].detach())
    assert torch.equal(loaded.generator, state.generator)
    assert loaded.trigger_word == "sks" and loaded.spec == {"kind": "tap"}
    # Saving the same step again replaces the run's own checkpoint.
    state.save(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_checkpoints_of_earlier_versions_load(tmp_path):
    state = _state()
    legacy = {
        "format": "taptune-train/1",
        "fingerprint": state.run_key,
        "spec": {},
        "step": 3,
        "phase": "magnitude",
        "losses": state.losses,
        "parameters": [t.detach() for t in state.parameters],
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "scaler": None,
        "generator": state.generator,
        "samplers": state.samplers,
        "trigger_word": "sks",
        "class_word": "dog",
    }
    torch.save(legacy, tmp_path / "old.ckpt")
    loaded = RunState.load(tmp_path / "old.ckpt")
    assert loaded.phase == Phase.POST and loaded.run_key == state.run_key


@pytest.mark.parametrize(
    "content",
    [
        b"not a checkpoint",
        {"format": "taptune-train/9"},
        {"format": "taptune-train/1", "fingerprint": "x"},
        "a string",
    ],
)
def test_damaged_checkpoints_are_refused_naming_resume_from(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(TrainingInputError) as raised:
        RunState.load(path)
    assert raised.value.input_name == "resume_from"
    with pytest.raises(TrainingInputError):
        RunState.load(tmp_path)  # a folder
