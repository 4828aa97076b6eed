"""Sweeps: a plan of configurations x subjects x seeds, run as job files locally or on Ray.

``python -m headless.sweep PLAN.yaml [--runner local|ray]`` expands the plan into one job
folder per (configuration, subject, seed) under the plan's ``output`` folder, runs every job
that has no result yet (so running the same plan again resumes it), and collects the results
into ``results.csv`` and ``results.md``. A plan (YAML; paths relative to the plan's folder)::

    format: taptune-sweep/1
    checkpoint: models/sd15.safetensors
    output: sweep-results
    settings: {steps: 400, resolution: 512, batch_size: 1}   # every job; a configuration may override
    configurations:
      tap60:  {spec: {kind: tap, groups: [{config: {din: attn2o, dout: ffni, mid_dim: 60}}]}}
      coft4:  {spec: {kind: oft, config: {r: 4, coft: true}}, settings: {learning_rate: 6.0e-5}}
    subjects:
      dog: {instance: {folder: data/dog, prompt: a photo of sks dog},
            class: {prompt: a photo of dog, generate: {count: 100}}}
    seeds: [0, 1]
    ray: {address: null, num_gpus: 1, num_cpus: 1}           # for --runner ray

Locally the jobs run one after another in this process. On Ray each job is one task
(``num_gpus`` GPUs, ``num_cpus`` CPUs; a fresh worker process per job, so every job starts
with all GPU memory free); the repository must lie at the same path on every node.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools.comfy_host import ROOT, import_pack

import_pack()
from taptune.adapter_core.errors import TapTuneError  # noqa: E402
from taptune.adapter_core.safe_write import atomic_write  # noqa: E402
from taptune.training.job_file import JOB_FILE, JOB_FORMAT, job_text, parse_job  # noqa: E402

from .worker import RESULT_FILE, train_one  # noqa: E402

PLAN_FORMAT = "taptune-sweep/1"
COLUMNS = (
    "configuration",
    "subject",
    "seed",
    "status",
    "final_loss",
    "trainable_parameters",
    "seconds_per_step",
    "steps",
    "adapter",
)


class PlanError(ValueError):
    """A plan that cannot be expanded; the message names the key."""


@dataclass(frozen=True)
class PlannedJob:
    """One (configuration, subject, seed) of a plan, with its job folder."""

    configuration: str
    subject: str
    seed: int
    folder: Path

    @property
    def job_file(self) -> Path:
        return self.folder / JOB_FILE

    @property
    def result_file(self) -> Path:
        return self.folder / RESULT_FILE

    def finished(self) -> dict[str, Any] | None:
        """The job's result if it finished (a result file saying ``done``), else None."""
        try:
            row = json.loads(self.result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return row if isinstance(row, dict) and row.get("status") == "done" else None


def _name(value: Any, where: str) -> str:
    text = str(value)
    if not text or any(not (c.isalnum() or c in "-_.") for c in text) or text.startswith("."):
        raise PlanError(f"{where}: {text[:40]!r} must be a plain name (letters, digits, - _ .)")
    return text


def _absolute(folder: Path, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PlanError(f"{where} must be a path")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def read_plan(path: Path) -> dict[str, Any]:
    """The plan as a mapping, checked for its format and required keys."""
    plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise PlanError(f"{path.name}: not a sweep plan (format: {PLAN_FORMAT})")
    for key in ("checkpoint", "configurations", "subjects"):
        if key not in plan:
            raise PlanError(f"{path.name}: '{key}' is missing")
    for key in ("configurations", "subjects"):
        if not isinstance(plan[key], dict) or not plan[key]:
            raise PlanError(f"{path.name}: '{key}' must map names to entries")
    return plan


def expand(plan_path: str | Path) -> list[PlannedJob]:
    """Write one job folder per (configuration, subject, seed); returns them in plan order.

    A job folder that already holds a result keeps its job file (the run it records is not
    redone); every other job file is (re)written from the plan.
    """
    plan_path = Path(plan_path).resolve()
    plan = read_plan(plan_path)
    here = plan_path.parent
    output = Path(_absolute(here, plan.get("output", "sweep-results"), "output"))
    seeds = plan.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise PlanError("seeds must be a list of non-negative integers")
    shared = plan.get("settings", {}) or {}
    planned: list[PlannedJob] = []
    entries: list[tuple[PlannedJob, dict[str, Any]]] = []
    for config_name, config in plan["configurations"].items():
        config_name = _name(config_name, "configurations")
        if not isinstance(config, dict) or "spec" not in config:
            raise PlanError(f"configurations.{config_name}: needs a spec")
        for subject_name, subject in plan["subjects"].items():
            subject_name = _name(subject_name, "subjects")
            if not isinstance(subject, dict) or not isinstance(subject.get("instance"), dict):
                raise PlanError(f"subjects.{subject_name}: needs instance: {{folder, prompt}}")
            for seed in seeds:
                job_id = f"{config_name}__{subject_name}__s{seed}"
                job = PlannedJob(config_name, subject_name, seed, output / "jobs" / job_id)
                planned.append(job)
                if job.finished() is not None:
                    continue
                instance = dict(subject["instance"])
                instance["folder"] = _absolute(here, instance.get("folder"), f"subjects.{subject_name}.instance.folder")
                classes = dict(subject.get("class", {"prompt": ""}))
                if "folder" in classes:
                    classes["folder"] = _absolute(here, classes["folder"], f"subjects.{subject_name}.class.folder")
                settings = {**shared, **(config.get("settings") or {}), "seed": seed}
                entry = {
                    "format": JOB_FORMAT,
                    "checkpoint": _absolute(here, plan["checkpoint"], "checkpoint"),
                    "spec": config["spec"],
                    "instance": instance,
                    "class": classes,
                    "settings": settings,
                    "output": {"adapter": str(output / "adapters" / f"{job_id}.safetensors")},
                    "checkpoints": {"folder": "checkpoints", "resume_from": None},
                }
                try:
                    parse_job(entry, job.job_file)
                except TapTuneError as exc:
                    raise PlanError(f"job {job_id}: {exc.message}") from None
                entries.append((job, entry))
    # Every job is checked before any job file is written.
    for job, entry in entries:
        job.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(job.job_file, lambda tmp, e=entry: Path(tmp).write_text(job_text(e)), replace=True)
    return planned


def run_local(jobs: list[PlannedJob], base_directory: str | None, device: str) -> list[dict[str, Any]]:
    """The jobs one after another, in this process."""
    return [train_one(str(job.job_file), base_directory, device) for job in jobs]


def run_ray(jobs: list[PlannedJob], options: dict[str, Any], base_directory: str | None) -> list[dict[str, Any]]:
    """Each job a Ray task (a fresh worker per task); waits for all of them."""
    import ray

    address = options.get("address")
    init: dict[str, Any] = {
        "include_dashboard": False,
        # Workers import this repository (headless, devtools, the pack) from the same path.
        "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT)}},
    }
    if address:
        init["address"] = address
    elif options.get("local_cpus"):
        init["num_cpus"] = int(options["local_cpus"])
    started = not ray.is_initialized()
    if started:
        ray.init(**init)
    try:
        num_gpus = float(options.get("num_gpus", 1 if ray.cluster_resources().get("GPU") else 0))
        task = ray.remote(num_cpus=float(options.get("num_cpus", 1)), num_gpus=num_gpus, max_calls=1)(train_one)
        device = "cuda" if num_gpus > 0 else "cpu"
        return ray.get([task.remote(str(job.job_file), base_directory, device) for job in jobs])
    finally:
        if started:
            ray.shutdown()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def collect(jobs: Iterable[PlannedJob], output: Path) -> list[dict[str, Any]]:
    """One row per job (its result file, or ``pending``), written to ``results.csv`` and ``results.md``."""
    rows = []
    for job in jobs:
        try:
            result = json.loads(job.result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {"status": "pending"}
        rows.append({"configuration": job.configuration, "subject": job.subject, "seed": job.seed, **result})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(row.get(k)) for k in COLUMNS} for row in rows)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / "results.csv", lambda tmp: Path(tmp).write_text(text.getvalue()), replace=True)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in COLUMNS) + " |" for row in rows]
    atomic_write(output / "results.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"), replace=True)
    return rows


def run_plan(
    plan_path: str | Path,
    runner: str = "local",
    *,
    base_directory: str | None = None,
    device: str = "auto",
    ray_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[PlannedJob]]:
    """Expand, run what has no result yet, collect; returns (table rows, the jobs that ran now)."""
    plan_path = Path(plan_path).resolve()
    plan = read_plan(plan_path)
    jobs = expand(plan_path)
    todo = [job for job in jobs if job.finished() is None]
    log(f"{len(jobs)} jobs, {len(jobs) - len(todo)} finished before, {len(todo)} to run ({runner})")
    if todo:
        if runner == "ray":
            run_ray(todo, {**(plan.get("ray") or {}), **(ray_options or {})}, base_directory)
        elif runner == "local":
            run_local(todo, base_directory, device)
        else:
            raise PlanError(f"unknown runner {runner!r} (local or ray)")
    output = Path(_absolute(plan_path.parent, plan.get("output", "sweep-results"), "output"))
    return collect(jobs, output), todo


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (1 if a job failed)."""
    parser = argparse.ArgumentParser(prog="python -m headless.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", help="the sweep plan (YAML, format taptune-sweep/1)")
    parser.add_argument("--runner", choices=("local", "ray"), default=None, help="default: the plan's runner, or local")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="local runner only")
    parser.add_argument("--base-directory", help="ComfyUI's base folder for the runs (default: a temporary one)")
    parser.add_argument("--ray-address", help="an existing Ray cluster (default: the plan's, or a local instance)")
    parser.add_argument("--local-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    args = parser.parse_args(argv)
    try:
        plan = read_plan(Path(args.plan))
        options = {"address": args.ray_address, "local_cpus": args.local_cpus}
        rows, _ = run_plan(
            args.plan,
            args.runner or plan.get("runner", "local"),
            base_directory=args.base_directory,
            device=args.device,
            ray_options={k: v for k, v in options.items() if v is not None},
        )
    except (PlanError, OSError, yaml.YAMLError) as exc:
        print(f"TapTune sweep: {exc}", file=sys.stderr)
        return 2
    output = Path(_absolute(Path(args.plan).resolve().parent, plan.get("output", "sweep-results"), "output"))
    print((output / "results.md").read_text())
    return 0 if all(row.get("status") == "done" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
