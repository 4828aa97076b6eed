"""The pocket model in a real ComfyUI: stock graph, what it draws, and DreamBooth on it through the pack's nodes.

Uses the shipped weights (``pocket/weights/``); CI never retrains them.
"""

from __future__ import annotations

from pathlib import Path

import comfy.model_management
import pytest
import torch

import nodes
from devtools.demo_files import POCKET_COFT_EPS, POCKET_OFT_LEARNING_RATE, POCKET_TAP_LEARNING_RATE
from devtools.pocket_eval import Sampler, dreambooth_metrics, dreambooth_run, write_subject_folder
from devtools.workflows import oft_spec_node, tap_spec_node
from taptune.patching.pocket_model import MODEL_FILE, load_pocket_model, read_metadata
from taptune.pocket import architecture as arch
from taptune.pocket import world
from taptune.pocket.judge import WEIGHTS_FILE, load_judge
from taptune.pocket.metrics import caption_accuracy, mean_pairwise_cosine
from taptune.pocket.subjects import SUBJECTS

#: A fixed set of captions: every shape, object colour and background colour appears.
CAPTIONS = [
    "a red circle on a blue background",
    "a green square on a yellow background",
    "a blue triangle on a white background",
    "a yellow star on a black background",
    "a white circle on a green background",
    "a black square on a red background",
    "a red triangle on a green background",
    "a green star on a white background",
    "a blue square on a yellow background",
    "a yellow circle on a red background",
    "a white star on a blue background",
    "a black triangle on a yellow background",
]
#: The least share of samples whose shape, colour and background all read as asked. A model that
#: draws nothing in particular gets about 1/4 * 1/6 * 1/5 = 0.8 %.
MIN_ALL_THREE = 0.6


@pytest.fixture(scope="module", autouse=True)
def shipped_files() -> None:
    assert MODEL_FILE.is_file(), f"the pocket model must ship at {MODEL_FILE} (python -m devtools.train_pocket)"


@pytest.fixture(scope="module")
def judge():
    assert WEIGHTS_FILE.is_file(), f"the judge must ship at {WEIGHTS_FILE} (python -m devtools.train_judge)"
    return load_judge()


@pytest.fixture(scope="module")
def pocket():
    return load_pocket_model()


def stock_graph(captions: list[str], seed: int, batch: int) -> tuple[dict, list[str]]:
    """TapTunePocketModel -> CLIPTextEncode / EmptyLatentImage 64x64 / KSampler / VAEDecode / SaveImage."""
    s = arch.SAMPLER_DEFAULTS
    graph = {
        "1": {"class_type": "TapTunePocketModel", "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
    }
    decoded = []
    for i, text in enumerate(captions):
        p, k, d, save = (str(10 + 4 * i + j) for j in range(4))
        graph[p] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}}
        graph[k] = {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": seed,
                "steps": s["steps"],
                "cfg": s["cfg"],
                "sampler_name": s["sampler_name"],
                "scheduler": s["scheduler"],
                "positive": [p, 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "denoise": 1.0,
            },
        }
        graph[d] = {"class_type": "VAEDecode", "inputs": {"samples": [k, 0], "vae": ["1", 2]}}
        graph[save] = {
            "class_type": "SaveImage",
            "inputs": {"images": [d, 0], "filename_prefix": f"pocket/caption_{i}"},
        }
        decoded.append(d)
    return graph, decoded


def test_the_stock_graph_draws_what_the_captions_ask(host, judge, base_dir: Path):
    graph, decoded = stock_graph(CAPTIONS, seed=7, batch=2)
    result = host.run(graph)
    assert result.success, result.error() or result.validation_error
    pictures = torch.cat([result.output(d) for d in decoded])
    assert pictures.shape == (2 * len(CAPTIONS), 64, 64, 3)
    saved = result.ui["outputs"][str(10 + 3)]["images"]
    assert (base_dir / "output" / saved[0]["subfolder"] / saved[0]["filename"]).is_file()
    asked = [world.parse_caption(c) for c in CAPTIONS for _ in range(2)]
    accuracy = caption_accuracy(judge.read(pictures), asked)
    assert accuracy.all >= MIN_ALL_THREE, accuracy
    assert min(accuracy.shape, accuracy.colour, accuracy.background) >= 0.75, accuracy


def test_an_untrained_model_of_the_same_shape_fails_that_check(judge, tmp_path: Path):
    from devtools.train_pocket import write_initialised_model

    model, clip, vae = load_pocket_model(write_initialised_model(tmp_path / "untrained.safetensors"))
    sample = Sampler(model, clip, vae)
    pictures = torch.cat([sample(c, 7, 2) for c in CAPTIONS])
    accuracy = caption_accuracy(judge.read(pictures), [world.parse_caption(c) for c in CAPTIONS for _ in range(2)])
    assert accuracy.all < 0.2, accuracy


def test_the_model_is_built_from_comfyuis_classes_with_every_tap_point(pocket):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, UNetModel

    model, clip, vae = pocket
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert isinstance(model.model, comfy.model_base.BaseModel)
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    unet = model.model.diffusion_model
    assert isinstance(unet, UNetModel)
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert len(blocks) >= 6
    for block in blocks:
        assert block.attn2 is not None and hasattr(block, "ff")  # self-, cross-attention, feed-forward
        for attn in (block.attn1, block.attn2):
            for name in ("to_q", "to_k", "to_v"):
                assert getattr(attn, name).in_features % 4 == 0  # OFT r=4 divides every target
            assert attn.to_out[0].in_features % 4 == 0
    # ResBlocks at two or more resolutions (channel widths), GroupNorm(32)-compatible
    resblocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
    assert len({m.channels for m in resblocks}) >= 2 and all(m.channels % 32 == 0 for m in resblocks)
    assert len(unet.input_blocks) > 1 + len(arch.UNET_CONFIG["channel_mult"])  # downsampling between levels
    # eps prediction on ComfyUI's standard discrete schedule
    sampling = model.get_model_object("model_sampling")
    assert len(sampling.sigmas) == 1000
    assert model.model.model_type.name == "EPS"
    # EmptyLatentImage's 64x64 latent is this VAE's 8x8x4
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]["samples"]
    pixels = vae.decode(latent)
    assert latent.shape == (1, 4, 8, 8) and pixels.shape == (1, 64, 64, 3)
    assert vae.encode(pixels).shape == (1, 4, 8, 8)
    meta = read_metadata(MODEL_FILE)
    assert model.model.latent_format.scale_factor == pytest.approx(meta["latent_scale"])


#: The least share of a subject's photos the judge must still see as the subject after the pocket
#: VAE's round trip (encode, decode): the ceiling of the subject rate a DreamBooth run can reach.
MIN_ROUND_TRIP_SUBJECT_RATE = 0.8


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_every_subject_survives_the_vaes_round_trip(judge, pocket, name):
    """A model trained on a subject learns its photos' latents; if those decode to something the judge
    does not read as the subject, no recipe can show it. Measured on 10 photos each: star 1.0,
    circle 1.0, square 0.8, triangle 0.8; the star's earlier 14 px horizontal stripes gave 0.1."""
    from dataclasses import replace

    from taptune.pocket.metrics import subject_rate

    _, _, vae = pocket
    subject = replace(SUBJECTS[name], photo_count=10)
    photos = torch.from_numpy(subject.photos()).float() / 255.0
    with torch.no_grad():
        round_trip = vae.decode(vae.encode(photos))
    assert subject_rate(judge.read(photos), subject.pattern, subject.colours) == 1.0
    rate = subject_rate(judge.read(round_trip), subject.pattern, subject.colours)
    assert rate >= MIN_ROUND_TRIP_SUBJECT_RATE, (name, rate)


def test_model_and_judge_together_stay_small():
    total = MODEL_FILE.stat().st_size + WEIGHTS_FILE.stat().st_size
    assert total < 50 * 2**20, total


def test_the_training_text_encoder_is_comfyuis(pocket):
    """train_pocket's autograd-friendly text forward gives what CLIPTextEncode gives."""
    from devtools.train_pocket import TextTrainer

    _, clip, _ = pocket
    texts = ["a red star on a blue background", "", "a sks circle"]
    with torch.no_grad():
        ours = TextTrainer(clip).encode(texts)
    for i, text in enumerate(texts):
        theirs = clip.encode_from_tokens(clip.tokenize(text))
        torch.testing.assert_close(ours[i : i + 1], theirs.float(), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# DreamBooth on a shipped subject, through the nodes (the settings the README reports)

SUBJECT = SUBJECTS["striped_star"]
RUN = {"steps": 200, "batch_size": 2, "class_count": 24, "seed": 0, "eval_batch": 8}
TAP_LR = POCKET_TAP_LEARNING_RATE
COFT_LR = POCKET_OFT_LEARNING_RATE
#: The least share of the room between the base model's fidelity and the photos' own (their mean
#: cosine among themselves in the judge's embedding, 0.98 for the striped star) that a trained
#: subject must close. A share, not a fixed gain: the pocket model retrained on 2026-12-03 draws
#: stars better, so its base fidelity rose from 0.73 to 0.77 and the room shrank. Measured after
#: this run on that model and today's striped star: tap 0.46, tap without prior 0.39, tap with the
#: base model as the prior's target 0.48, COFT 0.17 (base 0.783); an adapter that learned
#: nothing closes 0.
FIDELITY_SHARE = 0.25
#: COFT (eps 1e-3) closes less of it on the striped star of 2026-12-03 (16 px stripes at 30°):
#: measured 0.167, against 0.35 on the earlier star; see docs/decisions.md, "the third look".
COFT_FIDELITY_SHARE = 0.1


def fidelity_share(judge, metrics: dict) -> float:
    """How much of the base model's distance to the photos' own fidelity the trained model closed."""
    embedded = judge.embed(SUBJECT.photos())
    photos = mean_pairwise_cosine(embedded, embedded)
    base, trained = metrics["base"]["fidelity"], metrics["trained"]["fidelity"]
    return (trained - base) / (photos - base)


@pytest.fixture(scope="module")
def subject_folder(base_dir: Path) -> str:
    return write_subject_folder(base_dir / "input", SUBJECT)


def _run(host, judge, subject_folder, spec, lr, prior, settings=None):
    run = dreambooth_run(
        SUBJECT, subject_folder, spec, learning_rate=lr, prior_loss_weight=prior, training_settings=settings, **RUN
    )
    result = host.run(run.graph)
    assert result.success, result.error() or result.validation_error
    return dreambooth_metrics(run, result, judge)


@pytest.fixture(scope="module")
def tap_with_prior(host, judge, subject_folder):
    return _run(host, judge, subject_folder, tap_spec_node(), TAP_LR, 1.0)


def test_tap_recipe_learns_the_subject_and_keeps_the_background_asked(judge, tap_with_prior):
    base, trained = tap_with_prior["base"], tap_with_prior["trained"]
    assert fidelity_share(judge, tap_with_prior) >= FIDELITY_SHARE, tap_with_prior
    assert trained["subject_rate"] >= 0.25 and base["subject_rate"] <= 0.1, tap_with_prior
    assert trained["alignment"] >= 0.5, tap_with_prior


@pytest.fixture(scope="module")
def tap_with_base_model_prior(host, judge, subject_folder):
    """The same run with ``prior_target: base_model`` set on TapTune Training Settings."""
    return _run(host, judge, subject_folder, tap_spec_node(), TAP_LR, 1.0, settings={"prior_target": "base_model"})


def test_prior_preservation_against_the_base_model_limits_the_drift_of_class_prompts(
    host, judge, subject_folder, tap_with_prior, tap_with_base_model_prior
):
    """With the base model's own prediction as the class images' target, class prompts drift far less
    than without prior preservation and than under DreamBooth's loss, and the subject is still learned.

    DreamBooth's loss (the class images themselves as the target) does not hold the class on the
    pocket model: measured on this run, drift 0.349 with it against 0.348 without any prior, and
    0.174 with the base model's target (docs/decisions.md, "the third look").
    """
    without = _run(host, judge, subject_folder, tap_spec_node(), TAP_LR, 0.0)
    teacher = tap_with_base_model_prior
    assert fidelity_share(judge, without) >= FIDELITY_SHARE, without  # it learned too
    assert fidelity_share(judge, teacher) >= FIDELITY_SHARE, teacher
    drift = teacher["trained"]["drift"]
    assert drift < 0.7 * without["trained"]["drift"], (teacher, without)
    assert drift < 0.7 * tap_with_prior["trained"]["drift"], (teacher, tap_with_prior)


def test_coft_learns_the_subject(host, judge, subject_folder):
    coft = _run(host, judge, subject_folder, oft_spec_node(eps=POCKET_COFT_EPS), COFT_LR, 1.0)
    assert fidelity_share(judge, coft) >= COFT_FIDELITY_SHARE, coft
    assert coft["trained"]["subject_rate"] > coft["base"]["subject_rate"], coft
    comfy.model_management.soft_empty_cache()


def test_a_damaged_or_missing_pocket_file_is_the_packs_error(tmp_path: Path):
    from taptune.adapter_core.errors import TapTuneError
    from taptune.patching.pocket_model import PocketModelError

    damaged = tmp_path / "pocket_model.safetensors"
    damaged.write_bytes(MODEL_FILE.read_bytes()[:4096])  # a cut-off download
    for path in (damaged, tmp_path / "absent.safetensors"):
        with pytest.raises(PocketModelError) as caught:
            load_pocket_model(path)
        assert isinstance(caught.value, TapTuneError)
        assert str(caught.value).startswith(path.name) and str(tmp_path) not in str(caught.value)
