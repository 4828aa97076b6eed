"""Personalisation quality on the pocket world: every method, the same subjects, seeds and step budget.

    .venv/bin/python -m bench.quality [--steps 400] [--seeds 0 1 2] [--subjects A B C D]
                                      [--only REGEX] [--shard K/N] [--threads T] [--list] [--table] [--partial] [--docs]

Trains, on the shipped pocket model (``TapTunePocketModel``'s weights), each method on each
subject with each seed, and evaluates it with the pocket judge (``pocket.metrics``):

* all 20 tap-point pairs of the paper (mid_dim 60, relu, every block) -- the pack's trainer;
* OFT and COFT (r=4, every attention projection; COFT at the paper's eps 6e-5 and at an eps
  scaled to the pocket UNet's block sizes, see docs/decisions.md) -- the pack's trainer;
* LoRA through ComfyUI's own ``TrainLoraNode`` (rank 8, every layer, the node's defaults
  otherwise), with the class images in its dataset so that it gets the same prior data;
* LoRA as a TapTune kind (``lora``: every linear layer of every transformer block, alpha = rank)
  through the pack's trainer, the tap recipe's objective, data and step budget; its rank makes
  its trainable parameters about TrainLoraNode's;
* full fine-tuning of the UNet (DreamBooth itself): the pack's objective and data, every UNet
  weight trainable, on a private copy of the model;
* ``base``: no training (the reference row).

One job = (method, subject, seed), with its own result file ``<out>/<method>/<subject>-seed<k>.json``
(written atomically). A run skips jobs that have a result, so running again resumes;
``--shard K/N`` runs every N-th job starting at K (machines sharing ``--out`` split the work);
``--list`` prints the jobs. When every job has a result, the table (means over subjects and
seeds) and the analysis of variance of the 20 tap pairs are printed and written next to the
results (``quality.md``, ``quality.json``); ``--docs`` also puts them into docs/pocket_world.md
between the ``quality-table`` markers.

The measures (docs/pocket_world.md has the formulas): fidelity = mean judge-embedding cosine
between generations of ``a sks <class>`` and the subject's photos; subject = share of those
generations in which the judge reads the subject's pattern in its colours; drift = mean
(1 - cosine) between class-prompt generations after and before training, same seeds; leak =
share of class-prompt generations showing the subject; alignment = share of
``a sks <class> on a {colour} background`` generations whose background reads as asked.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devtools.demo_files import POCKET_COFT_EPS, POCKET_OFT_LEARNING_RATE, POCKET_TAP_LEARNING_RATE

from .common import setup_host

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
#: The reference page that shows the table (the README links to it).
DOC_PAGE = Path(__file__).resolve().parents[1] / "docs" / "pocket_world.md"
MARK_BEGIN = "<!-- quality-table:begin -->"
MARK_END = "<!-- quality-table:end -->"

#: Evaluation pictures per prompt: fidelity / preservation, and per alignment background.
EVAL_BATCH = 8
ALIGN_BATCH = 4
CLASS_IMAGES = 24


@dataclass(frozen=True)
class Method:
    """One trained configuration of the comparison."""

    name: str
    family: str  # base | tap | oft | lora | pack_lora | full
    learning_rate: float = 0.0
    din: str = ""
    dout: str = ""
    coft: bool = False
    eps: float = 6e-5
    rank: int = 0
    #: Training steps; 0 means the run's ``--steps`` (the recipe search varies it per method).
    steps: int = 0
    prior_loss_weight: float = 1.0
    #: The prior data: ``class`` (``a <class>``, DreamBooth's) or ``varied`` (see :func:`varied_class_prompts`).
    class_data: str = "class"
    #: The class term's target (``TrainSettings.prior_target``): class_images or base_model.
    prior_target: str = "class_images"
    #: ``TrainSettings.trigger_word_prior``: weight of the trigger word's own prior (0: off).
    trigger_word_prior: float = 0.0

    def steps_in(self, ctx: Context) -> int:
        """The steps this method trains for in a run of ``ctx``."""
        return self.steps or ctx.steps


def methods() -> list[Method]:
    """Every configuration, in table order; learning rates per family (chosen on one pilot subject)."""
    from taptune.adapter_core import PAPER_PAIRS

    rows = [Method("base", "base")]
    rows += [Method(f"tap {din}->{dout}", "tap", TAP_LR, din, dout) for din, dout in PAPER_PAIRS]
    rows += [
        Method("OFT r=4", "oft", OFT_LR),
        Method("COFT r=4, eps 6e-5 (paper)", "oft", OFT_LR, coft=True, eps=6e-5),
        Method(f"COFT r=4, eps {POCKET_COFT_EPS:g} (scaled)", "oft", OFT_LR, coft=True, eps=POCKET_COFT_EPS),
    ]
    rows += [
        Method("LoRA r=8 (TrainLoraNode)", "lora", LORA_LR),
        Method(f"LoRA r={PACK_LORA_RANK} (TapTune trainer)", "pack_lora", PACK_LORA_LR, rank=PACK_LORA_RANK),
        Method("full UNet fine-tuning", "full", FULL_LR),
    ]
    return rows


TAP_LR = POCKET_TAP_LEARNING_RATE
OFT_LR = POCKET_OFT_LEARNING_RATE
LORA_LR = 5e-3
#: The ``lora`` kind's rank on the pocket UNet's 100 transformer-block linear layers: 21 x 31,744 =
#: 666,624 trainable parameters, the closest rank to TrainLoraNode's 656,492.
PACK_LORA_RANK = 21
PACK_LORA_LR = 2e-3
FULL_LR = 1e-4


@dataclass(frozen=True)
class Job:
    method: Method
    subject: str
    seed: int

    def file(self, out: Path) -> Path:
        slug = re.sub(r"[^A-Za-z0-9=.-]+", "_", self.method.name).strip("_")
        return out / slug / f"{self.subject}-seed{self.seed}.json"


def all_jobs(subjects: list[str], seeds: list[int]) -> list[Job]:
    return [Job(m, s, seed) for m in methods() for s in subjects for seed in seeds]


# ----------------------------------------------------------------------------------------------
# Running one job


class Context:
    """What every job shares: the base pocket model, the judge, class images and base pictures."""

    def __init__(self, steps: int) -> None:
        from taptune.patching.pocket_model import load_pocket_model
        from taptune.pocket.judge import load_judge

        self.steps = steps
        self.model, self.clip, self.vae = load_pocket_model()
        self.judge = load_judge()
        self._class_images: dict[str, Any] = {}
        self._pictures: dict[tuple[int, str, int, int], Any] = {}

    def sampler(self, model: Any) -> Any:
        from devtools.pocket_eval import Sampler

        return Sampler(model, self.clip, self.vae)

    def class_images(self, subject: Any) -> Any:
        """``a <class>`` from the base model (DreamBooth's prior data), drawn once per class."""
        return self.class_data(subject, "class")[0]

    def class_data(self, subject: Any, kind: str = "class") -> tuple[list[Any], list[str]]:
        """Class images from the base model and their prompts, drawn once per class and kind.

        ``class``: :data:`CLASS_IMAGES` pictures of ``a <class>``; ``varied``: one picture of each
        of :func:`varied_class_prompts` (seed = its index).
        """
        key = f"{subject.shape}/{kind}"
        if key not in self._class_images:
            sampler = self.sampler(self.model)
            if kind == "class":
                prompts = [subject.class_prompt()] * CLASS_IMAGES
                images = list(sampler(subject.class_prompt(), 0, CLASS_IMAGES))
            elif kind == "varied":
                prompts = varied_class_prompts(subject.shape)
                images = [sampler(p, i, 1)[0] for i, p in enumerate(prompts)]
            else:
                raise ValueError(f"unknown class data {kind!r}: class or varied")
            self._class_images[key] = (images, prompts)
        return self._class_images[key]

    def pictures(self, model: Any, key: int, prompt: str, seed: int, batch: int) -> Any:
        """Generations of ``prompt`` (cached for the base model, whose ``key`` is 0)."""
        cache_key = (key, prompt, seed, batch)
        if key == 0 and cache_key in self._pictures:
            return self._pictures[cache_key]
        out = self.sampler(model)(prompt, seed, batch)
        if key == 0:
            self._pictures[cache_key] = out
        return out


#: Colour pairs the varied class prompts leave out: the fully specified preservation prompts
#: (``a red <class> on a blue background`` in the evaluation, ``green on white`` in
#: ``devtools.drift_by_prompt``), so drift is measured on prompts the prior data never shows.
HELD_OUT_PAIRS = (("red", "blue"), ("green", "white"))


def varied_class_prompts(shape: str) -> list[str]:
    """:data:`CLASS_IMAGES` class prompts over the palette: ``a {colour} <class> on a {background} background``.

    Every (object, background) colour pair of the world but :data:`HELD_OUT_PAIRS`, in a fixed
    shuffled order, the first :data:`CLASS_IMAGES`; the first prompt is ``a <class>`` itself.
    """
    import random

    from taptune.pocket.world import COLOUR_NAMES

    pairs = [(c, b) for c in COLOUR_NAMES for b in COLOUR_NAMES if c != b and (c, b) not in HELD_OUT_PAIRS]
    random.Random(0).shuffle(pairs)
    prompts = [f"a {shape}"] + [f"a {c} {shape} on a {b} background" for c, b in pairs]
    return prompts[:CLASS_IMAGES]


def _training_settings(ctx: Context, method: Method, seed: int) -> Any:
    from taptune.training.settings import TrainSettings

    return TrainSettings(
        steps=method.steps_in(ctx),
        learning_rate=method.learning_rate,
        batch_size=1,
        seed=seed,
        prior_loss_weight=method.prior_loss_weight,
        prior_target=method.prior_target,
        trigger_word_prior=method.trigger_word_prior,
        resolution=64,
        resize_mode="none",
    )


def _photos(subject: Any) -> tuple[list[Any], str]:
    from taptune.pocket.world import to_tensor_images

    photos = to_tensor_images(subject.photos())
    return list(photos), "\n".join(subject.photo_prompts())


def _class_set(ctx: Context, method: Method, subject: Any) -> tuple[list[Any], str]:
    """The method's class images and their prompt input (one line per image when they differ)."""
    images, prompts = ctx.class_data(subject, method.class_data)
    return images, prompts[0] if len(set(prompts)) == 1 else "\n".join(prompts)


def train_pack(ctx: Context, method: Method, subject: Any, seed: int) -> tuple[Any, int]:
    """Tap, OFT/COFT or the LoRA kind through the pack's own DreamBooth run; the adapted MODEL and its trainable count."""
    from taptune.adapter_core import OFTConfig, OFTSpec, TapConfig, TapGroupSpec, TapSpec
    from taptune.patching.apply import apply_adapter_set
    from taptune.training.run import run_dreambooth
    from taptune.training.run_inputs import ImageSet, RunInputs

    if method.family == "tap":
        spec: Any = TapSpec(groups=(TapGroupSpec(TapConfig(din=method.din, dout=method.dout)),))
    elif method.family == "pack_lora":
        from taptune.adapter_core.lora import LoRAConfig, LoRASpec

        config = LoRAConfig(rank=method.rank, alpha=float(method.rank), targets="all_linear")
        spec = LoRASpec(config, learning_rate=method.learning_rate)
    else:
        spec = OFTSpec(OFTConfig(r=4, coft=method.coft, eps=method.eps))
    photos, prompts = _photos(subject)
    result, _ = run_dreambooth(
        ctx.model,
        ctx.clip,
        ctx.vae,
        spec,
        RunInputs(
            ImageSet(photos, prompts),
            ImageSet(*_class_set(ctx, method, subject)),
            _training_settings(ctx, method, seed),
        ),
    )
    return apply_adapter_set(ctx.model, result.adapter_set, 1.0), result.adapter_set.num_parameters()


def train_lora_node(ctx: Context, method: Method, subject: Any, seed: int) -> tuple[Any, int]:
    """ComfyUI's ``TrainLoraNode``: instance photos (repeated to match) and class images, each with its prompt."""
    import torch

    from .common import run_train_lora_node

    photos, prompts = _photos(subject)
    class_images = ctx.class_images(subject)
    repeat = max(1, math.ceil(len(class_images) / len(photos)))
    pixels = [p[None] for p in photos] * repeat + [c[None] for c in class_images]
    texts = prompts.split("\n") * repeat + [subject.class_prompt()] * len(class_images)
    with torch.no_grad():  # as under ComfyUI's executor: data, not part of the training graph
        latents = [{"samples": ctx.vae.encode(p)} for p in pixels]
        positive = [ctx.clip.encode_from_tokens_scheduled(ctx.clip.tokenize(t)) for t in texts]
    torch.manual_seed(seed)  # the node's seed input does not seed its own initialisation
    model, lora = run_train_lora_node(
        ctx.model,
        latents,
        positive,
        steps=method.steps_in(ctx),
        learning_rate=method.learning_rate,
        seed=seed,
        batch_size=2,
        training_dtype="fp32",
    )
    return model, sum(int(v.numel()) for v in lora.values())


def train_full(ctx: Context, method: Method, subject: Any, seed: int) -> tuple[Any, int]:
    """DreamBooth itself: every UNet weight of a private copy of the pocket model, the pack's objective and data."""
    import torch

    from taptune.patching.pocket_model import load_pocket_model
    from taptune.training.objective import noisy_latents, prediction_error, prior_preservation_loss, sample_sigmas
    from taptune.training.run_data import prepare_run_data

    model, _, _ = load_pocket_model()  # a copy of its own: this method changes the weights
    settings = _training_settings(ctx, method, seed)
    photos, prompts = _photos(subject)
    data = prepare_run_data(
        model,
        ctx.clip,
        ctx.vae,
        settings,
        (photos, prompts.split("\n")),
        (list(ctx.class_images(subject)), subject.class_prompt()),
        {"spec": {"kind": "full"}, "lr": method.learning_rate},
    )
    unet = model.model.diffusion_model
    params = [p for p in unet.parameters()]
    sampling = model.get_model_object("model_sampling")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(params, lr=method.learning_rate, weight_decay=0.0)
    with torch.inference_mode(False), torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for _ in range(settings.steps):
            batches = {name: sampler.next(generator) for name, sampler in data.samplers.items()}
            latents = torch.cat([b.latents for b in batches.values()])
            prompts_of_batch = [p for b in batches.values() for p in b.prompts]
            sigma = sample_sigmas(sampling, latents.shape[0], generator)
            noise = torch.randn(latents.shape, generator=generator)
            x_t = noisy_latents(sampling, sigma, noise, latents)
            inputs = data.conds.batch(prompts_of_batch, tuple(latents.shape[1:]))
            denoised = model.model.apply_model(x_t, sigma, **inputs)
            error = prediction_error(sampling, sigma, x_t, denoised, latents)
            n = batches["instance"].latents.shape[0]
            loss = prior_preservation_loss(error[:n], error[n:], settings.prior_loss_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        for p in params:
            p.requires_grad_(False)
    return model, sum(p.numel() for p in params)


TRAINERS: dict[str, Callable[[Context, Method, Any, int], tuple[Any, int]]] = {
    "tap": train_pack,
    "oft": train_pack,
    "lora": train_lora_node,
    "pack_lora": train_pack,
    "full": train_full,
}


def run_job(ctx: Context, job: Job) -> dict[str, Any]:
    """Train (unless base) and evaluate one job; the result row."""
    import torch

    from taptune.pocket.metrics import evaluate_subject, evaluation_prompts
    from taptune.pocket.subjects import subject as subject_named

    subject = subject_named(job.subject)
    start = time.perf_counter()
    if job.method.family == "base":
        trained, parameters = ctx.model, 0
    else:
        trained, parameters = TRAINERS[job.method.family](ctx, job.method, subject, job.seed)
    seconds = time.perf_counter() - start
    steps = 0 if job.method.family == "base" else job.method.steps_in(ctx)
    eval_seed = 1000 + job.seed
    align = set(evaluation_prompts(subject).alignment)

    def pictures(which: str, prompt: str) -> torch.Tensor:
        batch = ALIGN_BATCH if prompt in align else EVAL_BATCH
        model, key = (ctx.model, 0) if which == "base" else (trained, 1)
        return ctx.pictures(model, key, prompt, eval_seed, batch)

    scores = evaluate_subject(ctx.judge, subject, pictures)
    row = scores["trained"]
    return {
        "method": job.method.name,
        "family": job.method.family,
        "din": job.method.din,
        "dout": job.method.dout,
        "subject": job.subject,
        "seed": job.seed,
        "steps": steps,
        "learning_rate": job.method.learning_rate,
        "prior_loss_weight": job.method.prior_loss_weight,
        "trainable_parameters": parameters,
        "seconds_per_step": seconds / steps if steps else 0.0,
        **row,
        "base": scores["base"],
    }


def write_row(path: Path, row: dict[str, Any]) -> None:
    from taptune.adapter_core.safe_write import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(row, indent=1) + "\n"), replace=True)


# ----------------------------------------------------------------------------------------------
# The table and the analysis of variance

COLUMNS = (
    ("fidelity", "fidelity ↑"),
    ("subject_rate", "subject ↑"),
    ("drift", "drift ↓"),
    ("leak", "leak ↓"),
    ("alignment", "alignment ↑"),
)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over subjects and seeds per method, in table order."""
    order = [m.name for m in methods()]
    out = []
    for name in order:
        mine = [r for r in rows if r["method"] == name]
        if not mine:
            continue
        entry = {"method": name, "jobs": len(mine)}
        for key, _ in COLUMNS:
            values = [float(r[key]) for r in mine]
            entry[key] = statistics.fmean(values)
            # The standard error of the mean over the jobs (subjects x seeds): what a difference must beat.
            entry[f"{key}_se"] = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
        entry["trainable_parameters"] = mine[0]["trainable_parameters"]
        entry["seconds_per_step"] = sum(r["seconds_per_step"] for r in mine) / len(mine)
        out.append(entry)
    return out


def anova(rows: list[dict[str, Any]], measure: str) -> dict[str, dict[str, float]]:
    """One-way analysis of variance of ``measure`` over the 20 tap jobs, by input and by output position.

    As the paper: each factor on its own (F statistic and p value); the observations are the
    jobs (pair x subject x seed).
    """
    from scipy.stats import f_oneway

    tap = [r for r in rows if r["family"] == "tap"]
    result = {}
    for factor in ("din", "dout"):
        groups: dict[str, list[float]] = {}
        for r in tap:
            groups.setdefault(r[factor], []).append(float(r[measure]))
        stat = f_oneway(*groups.values())
        result["input" if factor == "din" else "output"] = {
            "F": float(stat.statistic),
            "p": float(stat.pvalue),
            "levels": len(groups),
        }
    return result


def _mean_cells(entry: dict[str, Any]) -> list[str]:
    """Each column's mean, with its standard error where the mean rests on more than one job."""
    se = {key: entry.get(f"{key}_se") for key, _ in COLUMNS}
    return [f"{entry[key]:.3f}" + (f" ± {se[key]:.3f}" if se[key] is not None else "") for key, _ in COLUMNS]


def table_markdown(summary: list[dict[str, Any]], tests: dict[str, Any], command: str, meta: dict[str, Any]) -> str:
    head = "| method | " + " | ".join(title for _, title in COLUMNS) + " | trainable params | s/step |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for e in summary:
        cells = _mean_cells(e)
        params = f"{e['trainable_parameters']:,}" if e["trainable_parameters"] else "0"
        sps = f"{e['seconds_per_step']:.3f}" if e["seconds_per_step"] else "-"
        lines.append(f"| {e['method']} | " + " | ".join(cells) + f" | {params} | {sps} |")
    lines.append("")
    lines.append(
        f"Means ± standard error over {meta['subjects']} subjects x {meta['seeds']} seed(s) (one job each); "
        f"{meta['steps']} steps, batch 1 instance "
        f"+ 1 class image, {CLASS_IMAGES} class images; evaluation: {EVAL_BATCH} pictures per prompt "
        f"({ALIGN_BATCH} per alignment background), euler/normal, 20 steps, cfg 5. Command: `{command}`."
    )
    lines.append("")
    lines.append("Analysis of variance over the 20 tap pairs (one-way, each factor on its own, as the paper):")
    lines.append("")
    lines.append("| measure | input position F | p | output position F | p | larger effect |")
    lines.append("|---|---|---|---|---|---|")
    for measure, r in tests.items():
        bigger = "input" if r["input"]["F"] > r["output"]["F"] else "output"
        lines.append(
            f"| {measure} | {r['input']['F']:.2f} | {r['input']['p']:.3g} | {r['output']['F']:.2f} | "
            f"{r['output']['p']:.3g} | {bigger} |"
        )
    return "\n".join(lines) + "\n"


def partial_table(rows: list[dict[str, Any]]) -> str:
    """The means (± standard error) of the jobs done so far, with their count: a sweep's progress, not its table."""
    lines = ["| method | jobs | " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for e in summarise(rows):
        lines.append(f"| {e['method']} | {e['jobs']} | " + " | ".join(_mean_cells(e)) + " |")
    return "\n".join(lines) + "\n"


def collect(out: Path, jobs: list[Job]) -> list[dict[str, Any]] | None:
    rows = []
    for job in jobs:
        path = job.file(out)
        if not path.is_file():
            return None
        rows.append(json.loads(path.read_text()))
    return rows


def with_table(page: str, text: str) -> str:
    """``page`` with ``text`` between the quality-table markers (which must be there)."""
    if MARK_BEGIN not in page or MARK_END not in page:
        raise SystemExit(f"{DOC_PAGE.name} has no {MARK_BEGIN} ... {MARK_END} section")
    head, rest = page.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    return f"{head}{MARK_BEGIN}\n{text}{MARK_END}{tail}"


def write_table(out: Path, rows: list[dict[str, Any]], command: str, meta: dict[str, Any], docs: bool) -> str:
    summary = summarise(rows)
    tests = {m: anova(rows, m) for m in ("fidelity", "subject_rate", "drift", "alignment")}
    text = table_markdown(summary, tests, command, meta)
    (out / "quality.md").write_text(text)
    (out / "quality.json").write_text(json.dumps({"summary": summary, "anova": tests, "meta": meta}, indent=1))
    if docs:
        DOC_PAGE.write_text(with_table(DOC_PAGE.read_text(), text))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--subjects", nargs="+", default=["striped_star", "checked_square", "dotted_circle", "split_triangle"]
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default=None, help="run only methods whose name matches this regular expression")
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th job starting at K")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (two shards of one thread each beat one of two)"
    )
    parser.add_argument("--list", action="store_true", help="print the jobs and whether each has a result")
    parser.add_argument("--table", action="store_true", help="only collect the results into the table")
    parser.add_argument(
        "--partial", action="store_true", help="with jobs missing, print the means of the jobs done (written nowhere)"
    )
    parser.add_argument(
        "--docs", "--readme", dest="docs", action="store_true", help="also write the table into docs/pocket_world.md"
    )
    args = parser.parse_args(argv)
    k, n = (int(v) for v in args.shard.split("/"))
    if not 0 <= k < n:
        raise SystemExit("--shard K/N needs 0 <= K < N")
    out = args.out / f"steps{args.steps}"
    setup_host()
    jobs = all_jobs(args.subjects, args.seeds)
    mine = [j for i, j in enumerate(jobs) if i % n == k and (not args.only or re.search(args.only, j.method.name))]
    if args.list:
        for j in mine:
            print(("done  " if j.file(out).is_file() else "to do ") + f"{j.method.name} / {j.subject} / seed {j.seed}")
        return 0
    if not args.table:
        import torch

        torch.set_num_threads(args.threads)
        todo = [j for j in mine if not j.file(out).is_file()]
        print(f"{len(todo)} of {len(mine)} jobs to run ({len(jobs)} in all) -> {out}", flush=True)
        ctx = Context(args.steps) if todo else None
        for i, job in enumerate(todo):
            t0 = time.perf_counter()
            row = run_job(ctx, job)
            write_row(job.file(out), row)
            print(
                f"[{i + 1}/{len(todo)}] {job.method.name} / {job.subject} / seed {job.seed}: fidelity "
                f"{row['fidelity']:.3f} subject {row['subject_rate']:.2f} drift {row['drift']:.3f} "
                f"alignment {row['alignment']:.2f}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    rows = collect(out, jobs)
    if rows is None:
        if args.partial:
            print(partial_table([json.loads(j.file(out).read_text()) for j in jobs if j.file(out).is_file()]))
        else:
            print("not every job has a result yet: no table (--partial prints the means so far)", flush=True)
        return 0
    command = "python -m bench.quality " + " ".join(
        [f"--steps {args.steps}", "--seeds " + " ".join(map(str, args.seeds)), "--subjects " + " ".join(args.subjects)]
    )
    meta = {"steps": args.steps, "subjects": len(args.subjects), "seeds": len(args.seeds), **asdict_settings()}
    print(write_table(out, rows, command, meta, args.docs))
    return 0


def asdict_settings() -> dict[str, Any]:
    return {"learning_rates": {m.name: m.learning_rate for m in methods()}, "methods": [asdict(m) for m in methods()]}


if __name__ == "__main__":
    sys.exit(main())
