"""Sampling the pocket model through ComfyUI's own KSampler and judging what comes out.

Used by ``devtools/train_pocket.py --evaluate`` and the pocket tests. Requires ComfyUI to be
prepared (``devtools.comfy_host.prepare_comfy``) before import.

    .venv/bin/python -m devtools.pocket_eval [--seeds 0 1] [--batch 4] [--cfg 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def sampler_defaults() -> dict[str, Any]:
    from taptune.pocket.architecture import SAMPLER_DEFAULTS

    return dict(SAMPLER_DEFAULTS)


class Sampler:
    """Prompts -> pictures with ComfyUI's ``common_ksampler`` (what the KSampler node runs) and ``VAE.decode``.

    ``KSampler`` with ``batch_size`` B and seed s: picture i of the batch is the i-th noise of
    seed s. Conditionings are encoded once per prompt (``CLIPTextEncode``'s calls).
    """

    def __init__(self, model: Any, clip: Any, vae: Any, **settings: Any) -> None:
        self.model, self.clip, self.vae = model, clip, vae
        self.settings = {**sampler_defaults(), **settings}
        self._conds: dict[str, Any] = {}

    def conditioning(self, prompt: str) -> Any:
        if prompt not in self._conds:
            self._conds[prompt] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        return self._conds[prompt]

    @torch.no_grad()
    def __call__(self, prompt: str, seed: int, batch: int = 1, negative: str = "", size: int = 64) -> torch.Tensor:
        """``[batch, size, size, 3]`` float pictures in 0..1."""
        import comfy.utils

        import nodes

        s = self.settings
        latent = nodes.EmptyLatentImage().generate(size, size, batch)[0]
        enabled = comfy.utils.PROGRESS_BAR_ENABLED
        comfy.utils.PROGRESS_BAR_ENABLED = False
        try:
            out = nodes.common_ksampler(
                self.model,
                seed,
                s["steps"],
                s["cfg"],
                s["sampler_name"],
                s["scheduler"],
                self.conditioning(prompt),
                self.conditioning(negative),
                latent,
            )[0]
        finally:
            comfy.utils.PROGRESS_BAR_ENABLED = enabled
        return self.vae.decode(out["samples"]).float().cpu()

    def many(self, prompts: list[str], seed: int, batch: int) -> torch.Tensor:
        return torch.cat([self(p, seed, batch) for p in prompts])


def evaluate_captions(
    source: Any = None, seeds: tuple[int, ...] = (0,), batch: int = 4, judge: Any = None, **settings: Any
) -> dict[str, Any]:
    """Sample every caption of the vocabulary (``batch`` pictures per seed) and judge them.

    ``source``: a pocket file path (default the shipped one) or a (MODEL, CLIP, VAE) triple.
    Returns overall and per-attribute rates and the per-caption all-three rate.
    """
    from taptune.patching.pocket_model import load_pocket_model
    from taptune.pocket import world
    from taptune.pocket.judge import load_judge
    from taptune.pocket.metrics import caption_accuracy

    model, clip, vae = source if isinstance(source, tuple) else load_pocket_model(source)
    judge = judge or load_judge()
    sampler = Sampler(model, clip, vae, **settings)
    start = time.perf_counter()
    readings, asked, per_caption = [], [], {}
    for text in world.all_captions():
        parsed = world.parse_caption(text)
        pics = torch.cat([sampler(text, seed, batch) for seed in seeds])
        r = judge.read(pics)
        readings += r
        asked += [parsed] * len(r)
        per_caption[text] = caption_accuracy(r, [parsed] * len(r)).all
    overall = caption_accuracy(readings, asked)
    by: dict[str, dict[str, list]] = {
        "shape": defaultdict(list),
        "colour": defaultdict(list),
        "background": defaultdict(list),
    }
    for r, (c, s, b) in zip(readings, asked, strict=True):
        ok = r["shape"] == s and r["colour"] == c and r["background"] == b
        by["shape"][s].append(ok)
        by["colour"][c].append(ok)
        by["background"][b].append(ok)
    return {
        "settings": sampler.settings,
        "seeds": list(seeds),
        "batch": batch,
        "overall": overall.as_dict(),
        "all_three_by": {k: {v: sum(x) / len(x) for v, x in d.items()} for k, d in by.items()},
        "captions_at_least_half": sum(v >= 0.5 for v in per_caption.values()) / len(per_caption),
        "worst_captions": sorted(per_caption.items(), key=lambda kv: kv[1])[:8],
        "seconds": time.perf_counter() - start,
    }


def evaluate_patterns(
    source: Any = None, seed: int = 0, batch: int = 2, per_pattern: int = 12, judge: Any = None, **settings: Any
) -> dict[str, Any]:
    """Patterned captions, judged: a seeded sample of the patterned world's looks, and the subjects' own.

    For a model trained with patterned pictures (``devtools.train_pocket --patterned-images``):
    ``per_pattern`` captions of each pattern from the looks it saw (a picture counts when the
    judge reads the asked shape, background, pattern and both colours), then each shipped
    subject's look, which it never saw, asked for by caption (how far composition alone gets).
    """
    import numpy as np

    from taptune.patching.pocket_model import load_pocket_model
    from taptune.pocket import world
    from taptune.pocket.judge import load_judge
    from taptune.pocket.metrics import shows_subject
    from taptune.pocket.subjects import SUBJECTS, subject_looks

    model, clip, vae = source if isinstance(source, tuple) else load_pocket_model(source)
    judge = judge or load_judge()
    sampler = Sampler(model, clip, vae, **settings)
    rng = np.random.default_rng(seed)
    combos = world.patterned_combinations(subject_looks())
    by_pattern: dict[str, list[bool]] = defaultdict(list)
    for pattern in world.PATTERNS[1:]:
        of_pattern = [c for c in combos if c[2] == pattern]
        for i in rng.choice(len(of_pattern), per_pattern, replace=False):
            colour, shape, _, colour2, background = of_pattern[int(i)]
            text = world.patterned_caption(colour, shape, pattern, colour2, background)
            for r in judge.read(sampler(text, seed, batch)):
                by_pattern[pattern].append(
                    r["shape"] == shape
                    and r["background"] == background
                    and shows_subject(r, pattern, (colour, colour2))
                )
    subjects = {}
    for name, subj in SUBJECTS.items():
        background = subj.alignment_backgrounds()[0]
        text = world.patterned_caption(
            str(subj.fill.colour), subj.shape, subj.pattern, str(subj.fill.colour2), background
        )
        readings = judge.read(sampler(text, seed, batch * 4))
        subjects[name] = sum(shows_subject(r, subj.pattern, subj.colours) for r in readings) / len(readings)
    seen = [ok for oks in by_pattern.values() for ok in oks]
    return {
        "seen_looks": sum(seen) / len(seen),
        "seen_looks_by_pattern": {k: sum(v) / len(v) for k, v in by_pattern.items()},
        "subjects_by_caption": subjects,
    }


# ----------------------------------------------------------------------------------------------
# DreamBooth on a subject, through the pack's nodes (API prompts for devtools.comfy_host.Host)


def write_subject_folder(input_dir: Path, subject: Any, captions: bool = True) -> str:
    """The subject's photos as ``input/pocket_<name>/NN.png`` (+ ``NN.txt`` prompts naming the background)."""
    from PIL import Image

    folder = Path(input_dir) / f"pocket_{subject.name}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for i, (photo, prompt) in enumerate(zip(subject.photos(), subject.photo_prompts(), strict=True)):
        Image.fromarray(photo).save(folder / f"{i:02d}.png")
        if captions:
            (folder / f"{i:02d}.txt").write_text(prompt)
    return folder.name


@dataclass
class DreamBoothRun:
    """An API prompt that trains on a subject and samples the evaluation prompts from the base and the trained MODEL."""

    graph: dict[str, Any]
    #: (which model: "base" / "trained", prompt) -> id of the VAEDecode node
    decoded: dict[tuple[str, str], str]
    subject: Any
    eval_seed: int
    eval_batch: int


def dreambooth_run(
    subject: Any,
    folder: str,
    spec: dict[str, Any],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int = 1,
    prior_loss_weight: float = 1.0,
    class_count: int = 50,
    seed: int = 0,
    per_image_prompts: bool = True,
    eval_seed: int = 1000,
    eval_batch: int = 4,
    base_only: bool = False,
    extra_train_inputs: dict[str, Any] | None = None,
    training_settings: dict[str, Any] | None = None,
) -> DreamBoothRun:
    """``TapTunePocketModel`` -> ``TapTuneClassImages`` + ``TapTuneLoadImageFolder`` + spec ->
    ``TapTuneDreamBoothTrain`` -> (``CLIPTextEncode``, ``EmptyLatentImage``, ``KSampler``, ``VAEDecode``)
    per evaluation prompt, for the trained MODEL and (same seeds) the base MODEL. ``training_settings``
    adds a ``TapTuneTrainingSettings`` node with those inputs on the trainer's ``settings``."""
    s = sampler_defaults()
    g: dict[str, Any] = {
        "1": {"class_type": "TapTunePocketModel", "inputs": {}},
        "3": {
            "class_type": "TapTuneLoadImageFolder",
            "inputs": {
                "folder": folder,
                "resize_mode": "none",
                "resolution": 64,
                "require_captions": per_image_prompts,
            },
        },
        "4": spec,
        "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": eval_batch}},
    }
    train_inputs: dict[str, Any] = {
        "model": ["1", 0],
        "clip": ["1", 1],
        "vae": ["1", 2],
        "spec": ["4", 0],
        "instance_images": ["3", 0],
        "instance_prompt": ["3", 1] if per_image_prompts else subject.instance_prompt(),
        "class_prompt": subject.class_prompt(),
        "prior_loss_weight": prior_loss_weight,
        "steps": steps,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "seed": seed,
        "resolution": 64,
        **(extra_train_inputs or {}),
    }
    if prior_loss_weight > 0 and class_count > 0:
        g["2"] = {
            "class_type": "TapTuneClassImages",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "class_prompt": subject.class_prompt(),
                "count": class_count,
                "seed": 0,
                "steps": s["steps"],
                "cfg": s["cfg"],
                "sampler_name": s["sampler_name"],
                "scheduler": s["scheduler"],
                "width": 64,
                "height": 64,
            },
        }
        train_inputs["class_images"] = ["2", 0]
    if training_settings is not None:
        g["6"] = {"class_type": "TapTuneTrainingSettings", "inputs": dict(training_settings)}
        train_inputs["settings"] = ["6", 0]
    if not base_only:
        g["5"] = {"class_type": "TapTuneDreamBoothTrain", "inputs": train_inputs}
    decoded: dict[tuple[str, str], str] = {}
    next_id = 20
    from taptune.pocket.metrics import evaluation_prompts

    prompts = evaluation_prompts(subject).all()
    wanted = [("base", p) for p in prompts]
    if not base_only:
        wanted += [("trained", p) for p in prompts]
    encoded: dict[str, str] = {}
    for which, prompt in wanted:
        if prompt not in encoded:
            encoded[prompt] = str(next_id)
            g[str(next_id)] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}}
            next_id += 1
        model_ref = ["1", 0] if which == "base" else ["5", 0]
        k, d = str(next_id), str(next_id + 1)
        next_id += 2
        g[k] = {
            "class_type": "KSampler",
            "inputs": {
                "model": model_ref,
                "seed": eval_seed,
                "steps": s["steps"],
                "cfg": s["cfg"],
                "sampler_name": s["sampler_name"],
                "scheduler": s["scheduler"],
                "positive": [encoded[prompt], 0],
                "negative": ["9", 0],
                "latent_image": ["10", 0],
                "denoise": 1.0,
            },
        }
        g[d] = {"class_type": "VAEDecode", "inputs": {"samples": [k, 0], "vae": ["1", 2]}}
        g[str(next_id)] = {"class_type": "PreviewImage", "inputs": {"images": [d, 0]}}  # an output node
        next_id += 1
        decoded[(which, prompt)] = d
    return DreamBoothRun(g, decoded, subject, eval_seed, eval_batch)


def dreambooth_metrics(run: DreamBoothRun, result: Any, judge: Any) -> dict[str, Any]:
    """Fidelity, preservation and alignment of a finished :func:`dreambooth_run` (``Host.run`` result)."""
    from taptune.pocket.metrics import evaluate_subject

    models = ("base", "trained") if ("trained", run.subject.instance_prompt()) in run.decoded else ("base",)
    return evaluate_subject(
        judge, run.subject, lambda which, prompt: result.output(run.decoded[(which, prompt)]), models
    )


def print_rates(result: dict[str, Any]) -> None:
    o = result["overall"]
    print(
        f"judge over {o['count']} samples ({result['settings']}): shape {o['shape']:.3f}, colour {o['colour']:.3f}, "
        f"background {o['background']:.3f}, all three {o['all']:.3f}; captions right at least half the time: "
        f"{result['captions_at_least_half']:.3f}  ({result['seconds']:.0f} s)"
    )
    for k, d in result["all_three_by"].items():
        print(f"  all three, by {k}: " + ", ".join(f"{v} {x:.2f}" for v, x in d.items()))
    print("  worst captions: " + "; ".join(f"{c} {x:.2f}" for c, x in result["worst_captions"]))


def main(argv: list[str] | None = None) -> int:
    from devtools.comfy_host import import_pack, prepare_comfy

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument(
        "--patterns", action="store_true", help="judge patterned captions instead (a model trained with patterns)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    prepare_comfy(ROOT / ".host" / "pocket-train-base")
    import_pack()
    settings = {
        k: v
        for k, v in {
            "cfg": args.cfg,
            "steps": args.steps,
            "sampler_name": args.sampler,
            "scheduler": args.scheduler,
        }.items()
        if v is not None
    }
    if args.patterns:
        result = evaluate_patterns(args.model, args.seeds[0], args.batch, **settings)
        print(json.dumps(result, indent=1))
    else:
        result = evaluate_captions(args.model, tuple(args.seeds), args.batch, **settings)
        print_rates(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
