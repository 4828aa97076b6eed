"""One sweep job in a process of its own: what a Ray task (or the local runner) calls.

A module of its own, imported by name in each Ray worker, so that the task is found there by
reference (``headless.worker.train_one``) rather than shipped as a pickled copy that would
name the pack before the worker has imported it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devtools.comfy_host import import_pack

import_pack()

RESULT_FILE = "result.json"


def write_result(job_file: str, row: dict[str, Any]) -> None:
    """The job's result file (``result.json`` next to ``job.json``), written atomically."""
    from taptune.adapter_core.safe_write import atomic_write

    path = Path(job_file).parent / RESULT_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(row, indent=2) + "\n"), replace=True)


def train_one(job_file: str, base_directory: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Run one job in this process (preparing ComfyUI once), record its result file; never raises for a bad job."""
    from taptune.adapter_core.errors import TapTuneError

    from .train import prepare, run_job

    prepare(base_directory, device)
    try:
        row = run_job(job_file, quiet=True)
    except TapTuneError as exc:
        row = {"job": job_file, "status": "failed", "error": str(exc)}
    write_result(job_file, row)
    return row
