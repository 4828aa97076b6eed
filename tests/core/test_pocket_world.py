"""The pocket world, its subjects, the judge and the metrics (pure numpy/PIL/torch, no ComfyUI)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from taptune.pocket import metrics, world
from taptune.pocket.judge import WEIGHTS_FILE, Judge, judge_info, label_indices, load_judge, scene_labels
from taptune.pocket.subjects import SUBJECTS, subject, subject_looks


def test_world_sets_are_deterministic_from_the_seed():
    a_images, a_captions, _ = world.world_set(7, 40)
    b_images, b_captions, _ = world.world_set(7, 40)
    c_images, _, _ = world.world_set(8, 40)
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert not np.array_equal(a_images, c_images)
    assert a_images.shape == (40, 64, 64, 3) and a_images.dtype == np.uint8
    assert np.array_equal(world.codec_set(3, 8)[0], world.codec_set(3, 8)[0])
    assert np.array_equal(world.judge_set(3, 8)[0], world.judge_set(3, 8)[0])


def test_captions_cover_the_vocabulary_in_the_exact_form():
    captions = world.all_captions()
    assert len(captions) == len(set(captions)) == 4 * 6 * 5
    assert {"red", "green", "blue", "yellow", "white", "black"} <= set(world.COLOURS)
    assert {"circle", "square", "triangle", "star"} <= set(world.SHAPES)
    for text in captions:
        colour, shape, background = world.parse_caption(text)
        assert text == f"a {colour} {shape} on a {background} background"
        assert colour != background
    _, set_captions, scenes = world.world_set(0, 2 * len(captions))
    assert sorted(set_captions) == sorted(captions * 2)  # balanced: every caption twice
    assert all(s.caption() == c for s, c in zip(scenes, set_captions, strict=True))
    with pytest.raises(ValueError):
        world.world_scene(np.random.default_rng(0), "star", "red", "red")


def test_palette_colours_are_far_apart():
    rgb = np.array(list(world.COLOURS.values()), dtype=float)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(distances) > 120


def _on_segment(images: np.ndarray, scenes: list[world.Scene]) -> np.ndarray:
    """Largest distance of any pixel from the segment object-colour -- background colour."""
    out = []
    for img, s in zip(images, scenes, strict=True):
        a, b = np.array(world.rgb(s.colour), float), np.array(world.rgb(s.background), float)
        p = img.reshape(-1, 3).astype(float)
        t = np.clip(((p - b) @ (a - b)) / ((a - b) @ (a - b)), 0, 1)
        out.append(np.linalg.norm(p - (b + t[:, None] * (a - b)), axis=1).max())
    return np.array(out)


def test_the_training_world_never_holds_a_patterned_object():
    images, _, scenes = world.world_set(1, 300)
    assert all(s.fill.pattern == "plain" for s in scenes)
    # Pixel-level: every pixel is a mix of the object's colour and the background's (anti-aliasing only).
    assert _on_segment(images, scenes).max() < 3.0
    # ... while every subject photo has pixels of a third colour: a subject is never a world picture.
    for sub in SUBJECTS.values():
        assert _on_segment(sub.photos(), sub.photo_scenes()).min() > 60


def test_the_patterned_world_holds_every_look_but_the_subjects():
    held_out = subject_looks()
    combos = world.patterned_combinations(held_out)
    everything = world.patterned_combinations()
    # 4 shapes x 4 patterns x 6 x 5 colour pairs x 4 backgrounds, less each subject's look on
    # every background (both colour orders for the symmetric patterns: 8, 8, 8; dots: 4).
    assert len(everything) == 4 * 4 * 6 * 5 * 4 and len(set(everything)) == len(everything)
    assert len(everything) - len(combos) == 8 + 8 + 4 + 8
    for colour, shape, pattern, colour2, background in combos:
        assert len({colour, colour2, background}) == 3
        assert not any(world.same_look((shape, pattern, colour, colour2), look) for look in held_out)
    # the swapped colours of a symmetric pattern are the same look; of dots another one
    assert ("red", "star", "stripes", "white", "blue") not in combos
    assert ("white", "star", "stripes", "red", "blue") not in combos
    assert ("white", "circle", "dots", "blue", "red") in combos
    assert ("blue", "circle", "dots", "white", "red") not in combos

    images, captions, scenes = world.patterned_world_set(5, 60, held_out)
    again, again_captions, _ = world.patterned_world_set(5, 60, held_out)
    assert np.array_equal(images, again) and captions == again_captions
    for text, scene in zip(captions, scenes, strict=True):
        parts = world.parse_any_caption(text)
        assert (parts.colour, parts.shape, parts.pattern, parts.colour2, parts.background) in combos
        assert text == scene.caption()
        assert (parts.pattern, parts.colour2) == (scene.fill.pattern, scene.fill.colour2)
    assert world.patterned_caption("yellow", "triangle", "split", "red", "blue") == (
        "a yellow triangle with a red half on a blue background"
    )
    assert world.parse_any_caption("a red star on a blue background") == world.CaptionParts("red", "star", "blue")
    for bad in ("a red star with white zigzags on a blue background", "a red star with a white stripes on a blue"):
        with pytest.raises(ValueError):
            world.parse_any_caption(bad)
    # Patterns the pocket VAE keeps: coarser than the judge's and the codec's finest.
    periods = {p: [s.fill.period for s in scenes if s.fill.pattern == p] for p in ("stripes", "checks", "dots")}
    assert min(periods["stripes"]) >= 15 and min(periods["checks"]) >= 9 and min(periods["dots"]) >= 13


def test_objects_vary_in_size_and_position_and_stay_inside():
    images, _, scenes = world.world_set(2, 400)
    radii = np.array([s.radius for s in scenes])
    centres = np.array([(s.cx, s.cy) for s in scenes])
    assert radii.max() - radii.min() > 6
    assert centres.std(axis=0).min() > 6
    for img, s in zip(images[:100], scenes[:100], strict=True):
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(int)
        assert np.abs(border - np.array(world.rgb(s.background))).max() <= 1  # the object never touches the edge
    # anti-aliased: edge pixels take intermediate values
    assert _on_segment(images[:20], scenes[:20]).max() < 3.0
    assert any(len(np.unique(img.reshape(-1, 3), axis=0)) > 5 for img in images[:20])


def test_subjects_and_their_photos():
    assert len(SUBJECTS) >= 3
    assert {s.pattern for s in SUBJECTS.values()} >= {"stripes", "checks", "dots", "split"}
    for sub in SUBJECTS.values():
        photos = sub.photos()
        assert 3 <= len(photos) <= 6
        assert np.array_equal(photos, sub.photos())  # deterministic
        assert len({p.tobytes() for p in photos}) == len(photos)  # varied
        assert sub.shape in world.SHAPES and sub.pattern != "plain"
        assert sub.instance_prompt() == f"a sks {sub.shape}" and sub.class_prompt() == f"a {sub.shape}"
        assert sub.photo_prompts()[0] == f"a sks {sub.shape} on a {sub.photo_scenes()[0].background} background"
        backgrounds = set(sub.alignment_backgrounds())
        assert not backgrounds & set(sub.colours)
        assert backgrounds - {s.background for s in sub.photo_scenes()}, "one asked background is never in a photo"
    with pytest.raises(KeyError):
        subject("plaid_hexagon")


# ----------------------------------------------------------------------------------------------
# The judge (shipped weights)


@pytest.fixture(scope="module")
def judge() -> Judge:
    assert WEIGHTS_FILE.is_file(), f"the judge must ship at {WEIGHTS_FILE} (python -m devtools.train_judge)"
    return load_judge()


def test_judge_reads_real_world_pictures(judge: Judge):
    images, scenes = world.judge_set(424242, 600)  # a seed the judge was not trained on
    readings = judge.read(images)
    truth = [scene_labels(s) for s in scenes]
    # Measured on 2,000 held-out pictures: shape 0.999, colours 0.997 and more, pattern 0.987 (docs/pocket_world.md).
    for head, least in (("shape", 0.97), ("colour", 0.97), ("background", 0.97), ("pattern", 0.96)):
        accuracy = np.mean([r[head] == t[head] for r, t in zip(readings, truth, strict=True)])
        assert accuracy >= least, (head, accuracy)
    rng = np.random.default_rng(0)
    red_circle = world.render(world.world_scene(rng, "circle", "red", "blue"))
    reading = judge.read(red_circle[None])[0]
    assert (reading["shape"], reading["colour"], reading["background"], reading["pattern"]) == (
        "circle",
        "red",
        "blue",
        "plain",
    )


def test_judge_metadata_is_what_it_measures_on_its_held_out_pictures(judge: Judge):
    # Issue 21: trained on the current world, pattern at least 98 % on held-out pictures, and the
    # file's metadata true. The held-out set is redrawn from the seed the metadata names.
    info = judge_info()
    images, scenes = world.judge_set(int(info["seed"]) * 1000 + 12, 2000)
    readings = judge.read(images)
    truth = [scene_labels(s) for s in scenes]
    for head, recorded in info["accuracy_clean"].items():
        accuracy = float(np.mean([r[head] == t[head] for r, t in zip(readings, truth, strict=True)]))
        assert accuracy == pytest.approx(recorded, abs=0.002), (head, accuracy, recorded)
        assert accuracy >= 0.98, (head, accuracy)


def test_judge_reads_the_subjects_patterns_and_embeds_them_apart(judge: Judge):
    names = list(SUBJECTS)
    embeddings = {n: judge.embed(SUBJECTS[n].photos()) for n in names}
    for n in names:
        readings = judge.read(SUBJECTS[n].photos())
        assert metrics.rate(readings, "pattern", SUBJECTS[n].pattern) >= 0.8
        assert metrics.rate(readings, "shape", SUBJECTS[n].shape) >= 0.8
        own = metrics.mean_pairwise_cosine(embeddings[n], embeddings[n])
        for m in names:
            if m != n:
                assert own > metrics.mean_pairwise_cosine(embeddings[n], embeddings[m]) + 0.05


def test_judge_labels_order_symmetric_patterns():
    fill = world.Fill("stripes", "white", "red")
    labels = scene_labels(world.Scene("star", fill, "blue"))
    assert (labels["colour"], labels["colour2"]) == ("red", "white")  # palette order
    dots = scene_labels(world.Scene("circle", world.Fill("dots", "white", "red"), "blue"))
    assert (dots["colour"], dots["colour2"]) == ("white", "red")  # base, then dots
    idx = label_indices([labels])
    assert idx["pattern"].tolist() == [world.PATTERNS.index("stripes")]


# ----------------------------------------------------------------------------------------------
# The metrics, on constructed cases


def test_fidelity_and_drift_formulas():
    e = torch.eye(4)
    assert metrics.mean_pairwise_cosine(e[:1], e[:1]) == pytest.approx(1.0)
    assert metrics.mean_pairwise_cosine(e[:1], e[1:2]) == pytest.approx(0.0)
    # mean over all n*m pairs: one identical and one orthogonal real image -> 0.5
    assert metrics.mean_pairwise_cosine(e[:1], e[:2]) == pytest.approx(0.5)
    # scale does not matter (embeddings are normalised)
    assert metrics.mean_pairwise_cosine(3 * e[:1], e[:1]) == pytest.approx(1.0)
    assert metrics.paired_drift(e[:2], e[:2]) == pytest.approx(0.0)
    assert metrics.paired_drift(e[:2], e[2:4]) == pytest.approx(1.0)
    assert metrics.paired_drift(e[:2], torch.stack([e[0], -e[1]])) == pytest.approx(1.0)  # (0 + 2) / 2
    with pytest.raises(ValueError):
        metrics.paired_drift(e[:2], e[:3])


def test_rate_alignment_and_caption_accuracy():
    readings = [
        {"shape": "star", "colour": "red", "background": "blue", "pattern": "stripes"},
        {"shape": "star", "colour": "red", "background": "green", "pattern": "plain"},
        {"shape": "circle", "colour": "red", "background": "blue", "pattern": "stripes"},
        {"shape": "star", "colour": "white", "background": "black", "pattern": "stripes"},
    ]
    assert metrics.rate(readings, "pattern", "stripes") == pytest.approx(0.75)
    assert metrics.prompt_alignment(readings, ["blue", "blue", "blue", "black"]) == pytest.approx(0.75)
    acc = metrics.caption_accuracy(readings, [("red", "star", "blue")] * 4)
    assert (acc.shape, acc.colour, acc.background, acc.all) == pytest.approx((0.75, 0.75, 0.5, 0.25))
    with pytest.raises(ValueError):
        metrics.rate([], "pattern", "plain")


def test_the_subject_is_its_pattern_in_its_two_colours():
    seen = {"pattern": "stripes", "colour": "red", "colour2": "white"}
    assert metrics.shows_subject(seen, "stripes", ("white", "red"))  # either order
    assert not metrics.shows_subject({**seen, "colour2": "blue"}, "stripes", ("red", "white"))
    assert not metrics.shows_subject({**seen, "pattern": "checks"}, "stripes", ("red", "white"))
    assert metrics.subject_rate([seen, {**seen, "pattern": "plain"}], "stripes", ("red", "white")) == 0.5
    # the colour pair alone, whatever the pattern: checks in red and white count, red and blue do not
    pairs = [seen, {**seen, "pattern": "checks"}, {**seen, "colour2": "blue"}, {**seen, "colour2": "none"}]
    assert metrics.colour_pair_rate(pairs, ("white", "red")) == 0.5
    with pytest.raises(ValueError):
        metrics.colour_pair_rate([], ("red", "white"))


#: Constructed pictures carry a code in their first pixel: (pattern, colour, colour2, background).
CODES = {
    0: ("plain", "red", "none", "blue"),
    1: ("stripes", "red", "white", "blue"),
    2: ("stripes", "red", "white", "green"),
}


class _ConstructedJudge:
    """A judge whose readings and embeddings are written into the pictures' first pixel (constructed cases)."""

    def read(self, pictures):
        out = []
        for p in torch.as_tensor(pictures):
            pattern, colour, colour2, background = CODES[int(p[0, 0, 0])]
            shape = "star" if int(p[0, 0, 0]) == 1 else "circle"  # only the subject's code draws its class
            out.append(
                {"pattern": pattern, "colour": colour, "colour2": colour2, "background": background, "shape": shape}
            )
        return out

    def embed(self, pictures):
        pictures = torch.as_tensor(pictures, dtype=torch.float32)
        if pictures.max() > 2:  # the subject's photos (0..255): all one direction
            return torch.tensor([[1.0, 0.0]]).repeat(len(pictures), 1)
        return torch.stack(
            [torch.tensor([1.0, 0.0]) if p[0, 0, 0] >= 1 else torch.tensor([0.0, 1.0]) for p in pictures]
        )


def test_evaluate_subject_on_constructed_pictures():
    sub = SUBJECTS["striped_star"]  # red and white stripes
    prompts = metrics.evaluation_prompts(sub)
    assert prompts.fidelity == ("a sks star",) and prompts.preservation[0] == "a star"
    assert len(prompts.alignment) == len(prompts.alignment_backgrounds) >= 3

    def pictures(which, prompt):
        code = 0
        if which == "trained" and prompt in prompts.fidelity:
            code = 1  # the subject, on blue
        if which == "trained" and prompt in prompts.alignment:
            code = 2 if prompt.endswith("green background") else 1
        if which == "trained" and prompt == prompts.preservation[0]:
            code = 1  # the subject leaks into 'a star'
        x = torch.zeros(2, 4, 4, 3)
        x[:, 0, 0, 0] = code
        return x

    out = metrics.evaluate_subject(_ConstructedJudge(), sub, pictures)
    base, trained = out["base"], out["trained"]
    assert base["fidelity"] == pytest.approx(0.0) and trained["fidelity"] == pytest.approx(1.0)
    assert base["subject_rate"] == 0.0 and trained["subject_rate"] == 1.0
    assert base["colour_pair_rate"] == 0.0 and trained["colour_pair_rate"] == 1.0
    assert base["shape_rate"] == 0.0 and trained["shape_rate"] == 1.0
    # every alignment picture reads blue, except green's: the blue and green prompts read as asked
    assert prompts.alignment_backgrounds == ("green", "blue", "yellow", "black")
    assert trained["alignment"] == pytest.approx(2 / 4)
    assert trained["leak"] == pytest.approx(0.5) and trained["leak_before"] == 0.0  # one of two class prompts
    assert trained["drift"] == pytest.approx(0.5)  # half the class pictures turned orthogonal


def test_scaling_unused_token_rows_keeps_the_used_rows_and_matches_their_scale():
    from devtools.pocket_tokens import scale_unused_rows

    generator = torch.Generator().manual_seed(0)
    table = (torch.randn(200, 16, generator=generator) * 0.04).half()
    used = {0, 3, 7, 50}
    table[sorted(used)] *= 2
    scaled, factor = scale_unused_rows(table, used)
    assert scaled.dtype == table.dtype and factor > 1.5
    assert torch.equal(scaled[sorted(used)], table[sorted(used)])
    others = [i for i in range(200) if i not in used]
    norms = scaled.float().norm(dim=1)
    assert abs(float(norms[others].median() / norms[sorted(used)].median()) - 1) < 0.01
    torch.testing.assert_close(scaled[others].float(), table[others].float() * factor, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError):
        scale_unused_rows(table, set())
    with pytest.raises(ValueError):
        scale_unused_rows(table, set(range(200)))
