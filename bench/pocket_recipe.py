"""The pocket recipe search: steps, learning rate and prior weight for the demo's two methods.

    .venv/bin/python -m bench.pocket_recipe [--methods tap coft] [--steps 400 1000] [--lr 2e-3 5e-3]
                                            [--prior-weight 1] [--eps 0.001] [--class-data class varied]
                                            [--prior-target class_images base_model]
                                            [--trigger-prior 0 10]
                                            [--subjects ...] [--seeds 0]
                                            [--shard K/N] [--table]

Issue 21 asks the paper's tap recipe (attn2o -> ffni) and COFT, at the settings the demo uses,
for subject rate >= 0.8 on each subject with drift <= 0.05, leak <= 0.05 and alignment >= 0.95.
This trains every combination of the given settings on every subject and seed through the
same job as ``bench.quality`` (the pack's DreamBooth run on the shipped pocket model, judged by
the pocket judge), one result file per job under ``bench/results/recipe/`` (a run resumes and
splits with ``--shard``), and prints, per setting, the means, the worst subject and whether
each bound holds. The chosen recipe and why: docs/decisions.md ("The pocket recipe").
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from devtools.demo_files import POCKET_COFT_EPS

from .common import setup_host
from .quality import Job, Method, run_job, write_row

RESULTS = Path(__file__).resolve().parent / "results" / "recipe"
SUBJECTS = ("striped_star", "checked_square", "dotted_circle", "split_triangle")

#: Issue 21's bounds: (measure, at least?, bound).
BOUNDS = (("subject_rate", True, 0.8), ("drift", False, 0.05), ("leak", False, 0.05), ("alignment", True, 0.95))


@dataclass(frozen=True)
class Setting:
    """One recipe to try: a method of the quality table with its own steps, rate and prior weight."""

    method: Method

    @property
    def slug(self) -> str:
        m = self.method
        eps = f"_eps{m.eps:g}" if m.family == "oft" else ""
        name = "tap" if m.family == "tap" else ("coft" if m.coft else "oft")
        data = "" if m.class_data == "class" else f"_{m.class_data}"
        target = "" if m.prior_target == "class_images" else "_teacher"
        trigger = f"_tw{m.trigger_word_prior:g}" if m.trigger_word_prior else ""
        return f"{name}{eps}_steps{m.steps}_lr{m.learning_rate:g}_pw{m.prior_loss_weight:g}{data}{target}{trigger}"


def settings_grid(args: argparse.Namespace) -> list[Setting]:
    """Every combination of the command line's lists."""
    out = []
    for family in args.methods:
        epss = args.eps if family == "coft" else [0.0]
        for eps, steps, lr, weight, data, target, trigger in itertools.product(
            epss, args.steps, args.lr, args.prior_weight, args.class_data, args.prior_target, args.trigger_prior
        ):
            if family == "tap":
                base = Method("tap attn2o->ffni", "tap", lr, "attn2o", "ffni")
            else:
                base = Method(f"COFT r=4, eps {eps:g}", "oft", lr, coft=True, eps=eps)
            changes = {
                "steps": steps,
                "prior_loss_weight": weight,
                "class_data": data,
                "prior_target": target,
                "trigger_word_prior": trigger,
            }
            out.append(Setting(replace(base, **changes)))
    return out


def result_file(out: Path, setting: Setting, subject: str, seed: int) -> Path:
    return out / setting.slug / f"{subject}-seed{seed}.json"


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means, the worst subject for each measure, and whether each bound holds (on every subject's mean)."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_subject.setdefault(r["subject"], []).append(r)
    result: dict[str, Any] = {
        "jobs": len(rows),
        "seconds_per_step": statistics.fmean(r["seconds_per_step"] for r in rows),
    }
    for key, at_least, bound in (*BOUNDS, ("fidelity", True, 0.0)):
        means = [statistics.fmean(float(r[key]) for r in group) for group in by_subject.values()]
        worst = min(means) if at_least else max(means)
        result[key] = statistics.fmean(float(r[key]) for r in rows)
        result[f"{key}_worst"] = worst
        result[f"{key}_ok"] = worst >= bound if at_least else worst <= bound
    # Apart, what the subject rate joins: the pattern kind, and the two colours whatever the pattern;
    # and what it does not ask, the class's shape (rows written before a measure existed give nan,
    # not a false zero).
    for key in ("pattern_rate", "colour_pair_rate", "shape_rate"):
        result[key] = statistics.fmean(float(r.get(key, math.nan)) for r in rows)
    result["all_ok"] = all(result[f"{key}_ok"] for key, _, _ in BOUNDS)
    return result


def table(out: Path, grid: list[Setting], subjects: list[str], seeds: list[int]) -> str:
    lines = [
        "| setting | jobs | subject (worst) | pattern | colours | shape | fidelity | drift (worst) | leak (worst) "
        "| alignment (worst) | s/step | bounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in grid:
        rows = [
            json.loads(p.read_text())
            for subject in subjects
            for seed in seeds
            if (p := result_file(out, setting, subject, seed)).is_file()
        ]
        if not rows:
            continue
        v = verdict(rows)
        lines.append(
            f"| {setting.slug} | {v['jobs']} | {v['subject_rate']:.2f} ({v['subject_rate_worst']:.2f}) | "
            f"{v['pattern_rate']:.2f} | {v['colour_pair_rate']:.2f} | {v['shape_rate']:.2f} | "
            f"{v['fidelity']:.3f} | {v['drift']:.3f} ({v['drift_worst']:.3f}) | {v['leak']:.2f} ({v['leak_worst']:.2f}) | "
            f"{v['alignment']:.2f} ({v['alignment_worst']:.2f}) | {v['seconds_per_step']:.3f} | "
            + ("all hold" if v["all_ok"] else ", ".join(k for k, _, _ in BOUNDS if not v[f"{k}_ok"]) + " miss")
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=("tap", "coft"), default=["tap", "coft"])
    parser.add_argument("--steps", type=int, nargs="+", default=[400, 1000])
    parser.add_argument("--lr", type=float, nargs="+", default=[2e-3])
    parser.add_argument("--prior-weight", type=float, nargs="+", default=[1.0])
    parser.add_argument("--eps", type=float, nargs="+", default=[POCKET_COFT_EPS], help="COFT eps values")
    parser.add_argument(
        "--class-data",
        nargs="+",
        choices=("class", "varied"),
        default=["class"],
        help="prior data: 'a <class>' only, or the class over the palette's colours and backgrounds",
    )
    parser.add_argument(
        "--prior-target",
        nargs="+",
        choices=("class_images", "base_model"),
        default=["class_images"],
        help="the class term's target: the class images (DreamBooth) or the base model's own prediction",
    )
    parser.add_argument(
        "--trigger-prior",
        type=float,
        nargs="+",
        default=[0.0],
        help="weights of the trigger word's own prior (TrainSettings.trigger_word_prior; 0: off)",
    )
    parser.add_argument("--subjects", nargs="+", default=list(SUBJECTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th job starting at K")
    parser.add_argument("--table", action="store_true", help="only print the table of what has results")
    args = parser.parse_args(argv)
    match = re.fullmatch(r"(\d+)/(\d+)", args.shard)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise SystemExit("--shard K/N needs 0 <= K < N")
    k, n = int(match[1]), int(match[2])
    grid = settings_grid(args)
    setup_host()
    if not args.table:
        import torch

        from .quality import Context

        torch.set_num_threads(2)
        jobs = [(s, subject, seed) for s in grid for subject in args.subjects for seed in args.seeds]
        todo = [j for i, j in enumerate(jobs) if i % n == k and not result_file(args.out, *j).is_file()]
        print(f"{len(todo)} of {len(jobs)} jobs to run -> {args.out}", flush=True)
        ctx = Context(0) if todo else None
        for i, (setting, subject, seed) in enumerate(todo):
            t0 = time.perf_counter()
            row = run_job(ctx, Job(setting.method, subject, seed))
            write_row(result_file(args.out, setting, subject, seed), {**row, "setting": setting.slug})
            print(
                f"[{i + 1}/{len(todo)}] {setting.slug} / {subject} / seed {seed}: subject {row['subject_rate']:.2f} "
                f"(pattern {row['pattern_rate']:.2f}, colours {row['colour_pair_rate']:.2f}, shape {row['shape_rate']:.2f}) "
                f"fidelity {row['fidelity']:.3f} drift {row['drift']:.3f} leak {row['leak']:.2f} "
                f"alignment {row['alignment']:.2f}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    print(table(args.out, grid, args.subjects, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
