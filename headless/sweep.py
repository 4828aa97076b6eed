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
    ray: {num_gpus: 1, num_cpus: 1}                          # for --runner ray

Locally the jobs run one after another in this process. On Ray each job is one task
(``num_gpus`` GPUs, ``num_cpus`` CPUs; a fresh worker process per job, so every job starts
with all GPU memory free); the repository must lie at the same path on every node. Which
cluster the jobs run on is the caller's choice: ``--ray-address`` (or ``RAY_ADDRESS`` in the
caller's environment), never the plan, which may come from someone else.

A plan is read once, as a regular file of at most :data:`MAX_PLAN_BYTES`, with no YAML aliases,
at most :data:`MAX_PLAN_DEPTH` levels and :data:`MAX_PLAN_VALUES` values, and every key is
checked before any file is written. A bad plan is exit status 2 and one line naming the key.
``results.csv``/``results.md`` are replaced only when they are the table this sweep wrote last;
anything else under those names is kept and the table goes to a new numbered name (said so).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.comfy_host import ROOT, import_pack

import_pack()
from taptune.adapter_core.bounded_yaml import YamlBoundsError, load_bounded_yaml  # noqa: E402
from taptune.adapter_core.errors import TapTuneError  # noqa: E402
from taptune.adapter_core.safe_read import read_regular_text  # noqa: E402
from taptune.adapter_core.safe_write import atomic_write, next_number  # noqa: E402
from taptune.training.job_file import JOB_FILE, JOB_FORMAT, job_text, parse_job  # noqa: E402

from .train import one_line  # noqa: E402
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
#: Largest plan read (a plan is a few kilobytes; PyYAML parses about 1 MiB/s).
MAX_PLAN_BYTES = 256 * 2**10
#: How deeply a plan may nest (job specs nest five levels) and how many values it may hold in all.
MAX_PLAN_DEPTH = 32
MAX_PLAN_VALUES = 50_000
#: Most jobs (configurations x subjects x seeds) one plan may expand to.
MAX_JOBS = 2_000
MAX_PATH_CHARS = 4096
PLAN_KEYS = ("format", "checkpoint", "output", "settings", "configurations", "subjects", "seeds", "ray", "runner")
RUNNERS = ("local", "ray")
#: ``ray`` options a plan may set, with their bounds (the cluster address is the caller's, not the plan's).
RAY_OPTIONS: dict[str, tuple[float, float]] = {"num_gpus": (0, 1024), "num_cpus": (0, 4096), "local_cpus": (1, 4096)}
#: Where the sweep records the digests of the tables it wrote (so that it replaces only its own).
TABLE_RECORD = ".taptune-sweep-tables.json"
TABLES = ("results.csv", "results.md")


class PlanError(TapTuneError):
    """A plan that cannot be expanded; ``input_name`` is the key at fault, and the message says what to do."""

    def __init__(self, message: str, input_name: str = "format", file: str | None = None) -> None:
        super().__init__(message, input_name=input_name or "format", file=file)


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
            row = json.loads(read_regular_text(self.result_file, 2**20))
        except (TapTuneError, ValueError):
            return None
        return row if isinstance(row, dict) and row.get("status") == "done" else None


@dataclass(frozen=True)
class Plan:
    """A plan read and checked once: its file, its folder, and its (checked) content."""

    path: Path
    data: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def output(self) -> Path:
        return Path(_absolute(self.folder, self.data.get("output", "sweep-results"), "output"))


def _name(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PlanError(f"{where}: names must be text, got {type(value).__name__}", where)
    text = str(value)
    if not text or len(text) > 100 or any(not (c.isalnum() or c in "-_.") for c in text) or text.startswith("."):
        raise PlanError(
            f"{where}: {text[:40]!r} must be a plain name (letters, digits, - _ .; 1..100 characters)", where
        )
    return text


def _absolute(folder: Path, value: Any, where: str) -> str:
    key = where.split(".")[0]
    if not isinstance(value, str) or not value.strip() or "\x00" in value or len(value) > MAX_PATH_CHARS:
        raise PlanError(f"{where} must be a path (text without NUL, at most {MAX_PATH_CHARS} characters)", key)
    try:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (folder / path).resolve())
    except (OSError, RuntimeError, ValueError) as exc:
        raise PlanError(f"{where}: the path cannot be used ({type(exc).__name__}); give another path", key) from None


def _mapping(value: Any, where: str, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise PlanError(f"{where} must map keys to values, got {type(value).__name__}", where.split(".")[0])
    return value


def _check_plan(plan: Any, name: str) -> dict[str, Any]:
    """The plan's own keys, each of the right type and within bounds (the jobs are checked by expanding)."""
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise PlanError(f"{name}: not a sweep plan; its first line must be 'format: {PLAN_FORMAT}'")
    unknown = [key for key in plan if key not in PLAN_KEYS]
    if unknown:
        raise PlanError(
            f"unknown key {str(unknown[0])[:40]!r}; a plan has {', '.join(PLAN_KEYS)}", str(unknown[0])[:60]
        )
    for key in ("checkpoint", "configurations", "subjects"):
        if key not in plan:
            raise PlanError(f"'{key}' is missing; see the plan format in docs/distributed.md", key)
    _absolute(Path("/"), plan["checkpoint"], "checkpoint")
    _absolute(Path("/"), plan.get("output", "sweep-results"), "output")
    _mapping(plan.get("settings"), "settings")
    for key in ("configurations", "subjects"):
        if not isinstance(plan[key], dict) or not plan[key]:
            raise PlanError(f"'{key}' must map names to entries (at least one)", key)
    for config_name, config in plan["configurations"].items():
        config_name = _name(config_name, "configurations")
        where = f"configurations.{config_name}"
        if not isinstance(config, dict) or "spec" not in config:
            raise PlanError(f"{where}: needs a spec", "configurations")
        if set(config) - {"spec", "settings"}:
            extra = next(iter(set(config) - {"spec", "settings"}))
            raise PlanError(
                f"{where}: unknown key {str(extra)[:40]!r}; a configuration has spec and settings", "configurations"
            )
        _mapping(config.get("settings"), f"{where}.settings")
    for subject_name, subject in plan["subjects"].items():
        subject_name = _name(subject_name, "subjects")
        where = f"subjects.{subject_name}"
        if not isinstance(subject, dict) or not isinstance(subject.get("instance"), dict):
            raise PlanError(f"{where}: needs instance: {{folder, prompt}}", "subjects")
        if set(subject) - {"instance", "class"}:
            extra = next(iter(set(subject) - {"instance", "class"}))
            raise PlanError(f"{where}: unknown key {str(extra)[:40]!r}; a subject has instance and class", "subjects")
        _mapping(subject.get("class"), f"{where}.class")
    seeds = plan.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 2**63 - 1 for s in seeds)
    ):
        raise PlanError("seeds must be a list of integers within 0..2^63-1, e.g. [0, 1]", "seeds")
    if len(set(seeds)) != len(seeds):
        raise PlanError("seeds lists a seed twice; list each once", "seeds")
    jobs = len(plan["configurations"]) * len(plan["subjects"]) * len(seeds)
    if jobs > MAX_JOBS:
        raise PlanError(f"expands to {jobs:,} jobs, more than {MAX_JOBS:,}; split the plan", "seeds")
    ray = _mapping(plan.get("ray"), "ray")
    if "address" in ray:
        raise PlanError(
            "ray.address is not read from a plan (which cluster runs the jobs is the caller's choice); "
            "remove it and give --ray-address on the command line (or RAY_ADDRESS in your environment)",
            "ray",
        )
    for key, value in ray.items():
        if key not in RAY_OPTIONS:
            raise PlanError(f"ray: unknown key {str(key)[:40]!r}; a plan may set {', '.join(RAY_OPTIONS)}", "ray")
        low, high = RAY_OPTIONS[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not low <= value <= high:  # compared before any float conversion (10**400 has none)
            raise PlanError(f"ray.{key} must be a number within {low:g}..{high:g}", "ray")
    if plan.get("runner", "local") not in RUNNERS:
        raise PlanError(f"runner must be one of {', '.join(RUNNERS)}", "runner")
    return plan


def read_plan(path: str | Path) -> Plan:
    """The plan, read once and checked (format, keys, types, bounds); :class:`PlanError` naming the key otherwise."""
    try:
        plan_path = Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise PlanError(f"the plan's path cannot be used ({type(exc).__name__}); name a plan file") from None
    try:
        text = read_regular_text(plan_path, MAX_PLAN_BYTES)
        try:
            data = load_bounded_yaml(text, max_depth=MAX_PLAN_DEPTH, max_values=MAX_PLAN_VALUES, aliases=False)
        except YamlBoundsError as exc:  # a plan nests about six levels and holds a few hundred values
            raise PlanError(f"{plan_path.name}: {exc}; fix the plan (see docs/distributed.md)") from None
        return Plan(plan_path, _check_plan(data, plan_path.name))
    except PlanError as exc:
        raise exc.concerning(file=plan_path.name) from None
    except TapTuneError as exc:  # the file itself: not regular, too large, not UTF-8
        raise PlanError(exc.message, "format", plan_path.name) from None


def _plan(plan: Plan | str | Path) -> Plan:
    return plan if isinstance(plan, Plan) else read_plan(plan)


def expand(plan: Plan | str | Path, *, write: bool = True) -> list[PlannedJob]:
    """One job per (configuration, subject, seed), each checked as a job file; returns them in plan order.

    With ``write`` every job file is then written (all are checked before the first is written). A job
    folder that already holds a result keeps its job file (the run it records is not redone); every
    other job file is (re)written from the plan.
    """
    plan = _plan(plan)
    data, here = plan.data, plan.folder
    output = plan.output
    shared = data.get("settings") or {}
    checkpoint = _absolute(here, data["checkpoint"], "checkpoint")
    planned: list[PlannedJob] = []
    entries: list[tuple[PlannedJob, dict[str, Any]]] = []
    for config_name, config in data["configurations"].items():
        config_name = _name(config_name, "configurations")
        for subject_name, subject in data["subjects"].items():
            subject_name = _name(subject_name, "subjects")
            for seed in data.get("seeds", [0]):
                job_id = f"{config_name}__{subject_name}__s{seed}"
                job = PlannedJob(config_name, subject_name, seed, output / "jobs" / job_id)
                planned.append(job)
                if job.finished() is not None:
                    continue
                instance = dict(subject["instance"])
                instance["folder"] = _absolute(here, instance.get("folder"), f"subjects.{subject_name}.instance.folder")
                classes = dict(subject.get("class") or {"prompt": ""})
                if "folder" in classes:
                    classes["folder"] = _absolute(here, classes["folder"], f"subjects.{subject_name}.class.folder")
                settings = {**shared, **(config.get("settings") or {}), "seed": seed}
                entry = {
                    "format": JOB_FORMAT,
                    "checkpoint": checkpoint,
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
                    raise PlanError(
                        f"job {job_id}: {exc.message}", exc.input_name or "configurations", plan.path.name
                    ) from None
                entries.append((job, entry))
    if write:  # every job is checked before any job file is written
        for job, entry in entries:
            job.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(job.job_file, lambda tmp, e=entry: Path(tmp).write_text(job_text(e)), replace=True)
    return planned


def check_files(plan: Plan) -> None:
    """What the jobs will read, checked as a run checks it before ComfyUI: the checkpoint file's kind and
    every subject's image folders (listing, links, budgets; nothing decoded).
    """
    from .train import check_checkpoint_file, read_images

    data, here = plan.data, plan.folder
    try:
        check_checkpoint_file(Path(_absolute(here, data["checkpoint"], "checkpoint")))
        for name, subject in data["subjects"].items():
            read_images(
                Path(_absolute(here, subject["instance"].get("folder"), f"subjects.{name}.instance.folder")),
                "instance.folder",
                decode=False,
            )
            classes = subject.get("class") or {}
            if "folder" in classes:
                read_images(
                    Path(_absolute(here, classes["folder"], f"subjects.{name}.class.folder")),
                    "class.folder",
                    decode=False,
                )
    except PlanError:
        raise
    except TapTuneError as exc:
        raise PlanError(exc.message, exc.input_name or "subjects", plan.path.name) from None


def run_local(jobs: list[PlannedJob], base_directory: str | None, device: str) -> list[dict[str, Any]]:
    """The jobs one after another, in this process."""
    return [train_one(str(job.job_file), base_directory, device) for job in jobs]


def run_ray(jobs: list[PlannedJob], options: dict[str, Any], base_directory: str | None) -> list[dict[str, Any]]:
    """Each job a Ray task (a fresh worker per task); waits for all of them.

    ``options["address"]`` comes from the caller (``--ray-address``); without it Ray reads ``RAY_ADDRESS``
    from the caller's environment, else starts a local instance. A plan never names the cluster.
    """
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


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(read_regular_text(path, 64 * 2**20).encode("utf-8")).hexdigest()
    except TapTuneError:
        return None


def _write_table(output: Path, name: str, text: str, record: dict[str, str], log: Callable[[str], None]) -> Path:
    """``output/name``, replaced only if it is the table this sweep wrote last; else a new numbered name."""
    target = output / name
    exists = target.exists() or target.is_symlink()
    if exists and (target.is_symlink() or not target.is_file() or _digest(target) != record.get(name)):
        stem, suffix = name.rsplit(".", 1)
        number = next_number(output, stem, f".{suffix}")
        while True:
            fresh = output / f"{stem}_{number:05d}.{suffix}"
            try:
                atomic_write(fresh, lambda tmp: Path(tmp).write_text(text))
                break
            except FileExistsError:
                number += 1
        log(
            f"{target} is not the table this sweep wrote last (changed, or someone else's): kept it; wrote {fresh.name}"
        )
        return fresh
    atomic_write(target, lambda tmp: Path(tmp).write_text(text), replace=True)
    record[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return target


def collect(jobs: Iterable[PlannedJob], output: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per job (its result file, or ``pending``), written to ``results.csv`` and ``results.md``.

    Either table is replaced only when it is the one this sweep wrote last (its digest is recorded in
    ``output/.taptune-sweep-tables.json``); anything else is kept and the table goes to a numbered name.
    """
    rows = []
    for job in jobs:
        try:
            result = json.loads(read_regular_text(job.result_file, 2**20))
            result = result if isinstance(result, dict) else {"status": "pending"}
        except (TapTuneError, ValueError):
            result = {"status": "pending"}
        rows.append({"configuration": job.configuration, "subject": job.subject, "seed": job.seed, **result})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(row.get(k)) for k in COLUMNS} for row in rows)
    output.mkdir(parents=True, exist_ok=True)
    try:
        record = json.loads(read_regular_text(output / TABLE_RECORD, 2**16))
        record = {k: v for k, v in record.items() if isinstance(v, str)} if isinstance(record, dict) else {}
    except (TapTuneError, ValueError):
        record = {}
    _write_table(output, "results.csv", text.getvalue(), record, log)
    _write_table(output, "results.md", markdown_table(rows), record, log)
    atomic_write(output / TABLE_RECORD, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)), replace=True)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as the Markdown table of ``results.md``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_plan(
    plan_path: Plan | str | Path,
    runner: str = "local",
    *,
    base_directory: str | None = None,
    device: str = "auto",
    ray_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[PlannedJob]]:
    """Expand, run what has no result yet, collect; returns (table rows, the jobs that ran now).

    ``ray_options`` (the caller's: ``address``, ``local_cpus``...) override the plan's ``ray`` section.
    """
    plan = _plan(plan_path)
    jobs = expand(plan)
    todo = [job for job in jobs if job.finished() is None]
    log(f"{len(jobs)} jobs, {len(jobs) - len(todo)} finished before, {len(todo)} to run ({runner})")
    if todo:
        if runner == "ray":
            run_ray(todo, {**(plan.data.get("ray") or {}), **(ray_options or {})}, base_directory)
        elif runner == "local":
            run_local(todo, base_directory, device)
        else:
            raise PlanError(f"unknown runner {str(runner)[:40]!r}; use local or ray", "runner")
    return collect(jobs, plan.output, log), todo


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 a bad plan, 1 if a job failed)."""
    parser = argparse.ArgumentParser(prog="python -m headless.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", help="the sweep plan (YAML, format taptune-sweep/1)")
    parser.add_argument("--runner", choices=RUNNERS, default=None, help="default: the plan's runner, or local")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="local runner only")
    parser.add_argument("--base-directory", help="ComfyUI's base folder for the runs (default: a temporary one)")
    parser.add_argument(
        "--ray-address",
        help="an existing Ray cluster (default: RAY_ADDRESS in your environment, else a local instance)",
    )
    parser.add_argument("--local-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only read the plan and check every job it expands to; write and run nothing",
    )
    args = parser.parse_args(argv)
    try:
        plan = read_plan(args.plan)
        if args.check:
            jobs = expand(plan, write=False)
            check_files(plan)
            print(f"{plan.path.name}: {len(jobs)} jobs, every one checks cleanly (nothing was written or run)")
            return 0
        options = {"address": args.ray_address, "local_cpus": args.local_cpus}
        rows, _ = run_plan(
            plan,
            args.runner or plan.data.get("runner", "local"),
            base_directory=args.base_directory,
            device=args.device,
            ray_options={k: v for k, v in options.items() if v is not None},
        )
    except TapTuneError as exc:
        field = f" (field '{exc.input_name}')" if exc.input_name else ""
        print(one_line(f"TapTune sweep: {exc}{field}"), file=sys.stderr, flush=True)
        return 2
    except OSError as exc:  # the output folder cannot be written
        print(
            one_line(f"TapTune sweep: {exc.strerror or exc} ({exc.filename}); check the output folder"), file=sys.stderr
        )
        return 2
    print(markdown_table(rows))
    return 0 if all(row.get("status") == "done" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
