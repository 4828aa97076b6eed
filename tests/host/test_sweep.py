"""Sweeps of job files: a plan expands to jobs, runs locally (resuming) or as Ray tasks, and gives one table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.comfy_host import ROOT
from headless.sweep import COLUMNS, PlanError, expand, run_plan

from .job_helpers import TAP_SPEC, write_image_folder

OFT_SPEC = {"kind": "oft", "config": {"r": 4, "coft": True, "eps": 6e-5}, "targets": "attention"}


def write_plan(
    folder: Path, checkpoint: Path, configurations: dict, seeds: list[int], classes: dict | None = None
) -> Path:
    write_image_folder(folder / "dog", 2)
    subject = {"instance": {"folder": "dog", "prompt": "a photo of sks dog"}}
    if classes is not None:
        subject["class"] = classes
    plan = {
        "format": "taptune-sweep/1",
        "checkpoint": str(checkpoint),
        "output": "results",
        "settings": {
            "steps": 2,
            "resolution": 64,
            "batch_size": 1,
            "prior_loss_weight": 0.0 if classes is None else 1.0,
            "precision": "fp32",
        },
        "configurations": configurations,
        "subjects": {"dog": subject},
        "seeds": seeds,
    }
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


@pytest.fixture()
def checkpoint(sd15_checkpoint_name: str, base_dir: Path) -> Path:
    return (base_dir / "models" / "checkpoints" / sd15_checkpoint_name).resolve()


def test_the_local_runner_runs_each_job_once_and_a_second_run_resumes(tmp_path, checkpoint):
    # With prior preservation from class images the job generates with the base model (cached next to the job).
    generate = {"prompt": "a photo of dog", "generate": {"count": 1, "steps": 1, "width": 64, "height": 64}}
    plan = write_plan(tmp_path, checkpoint, {"tap8": {"spec": TAP_SPEC}}, seeds=[0, 1], classes=generate)
    rows, ran = run_plan(plan, "local")
    assert [(j.configuration, j.seed) for j in ran] == [("tap8", 0), ("tap8", 1)]
    assert [r["status"] for r in rows] == ["done", "done"]
    first = {r["seed"]: r for r in rows}
    for seed in (0, 1):
        cached = list((tmp_path / "results" / "jobs" / f"tap8__dog__s{seed}" / "class_images").glob("*/class_*.png"))
        assert [p.name for p in cached] == ["class_00000.png"]
    assert first[0]["adapter"] != first[1]["adapter"] and all(Path(r["adapter"]).is_file() for r in rows)

    # A job without its result (as if the sweep had stopped there) runs again; the finished one does not.
    (tmp_path / "results" / "jobs" / "tap8__dog__s1" / "result.json").unlink()
    Path(first[1]["adapter"]).unlink()
    rows, ran = run_plan(plan, "local")
    assert [(j.configuration, j.seed) for j in ran] == [("tap8", 1)]
    assert rows[0] == first[0]  # the finished job's row, untouched
    assert rows[1]["final_loss"] == pytest.approx(first[1]["final_loss"], abs=0.0)  # the same run again
    rows, ran = run_plan(plan, "local")
    assert ran == [] and [r["status"] for r in rows] == ["done", "done"]


def test_a_plan_with_a_bad_job_is_refused_before_anything_runs(tmp_path, checkpoint):
    bad = {"kind": "tap", "groups": [{"config": {"din": "attn9o", "dout": "ffni"}}]}
    plan = write_plan(tmp_path, checkpoint, {"good": {"spec": TAP_SPEC}, "bad": {"spec": bad}}, seeds=[0])
    with pytest.raises(PlanError, match="bad__dog__s0"):
        expand(plan)
    assert not (tmp_path / "results").exists()  # not even the good job's file


def test_a_sweep_on_a_local_ray_instance_collects_one_table(tmp_path, checkpoint):
    configurations = {"tap8": {"spec": TAP_SPEC}, "coft4": {"spec": OFT_SPEC, "settings": {"learning_rate": 1e-3}}}
    plan = write_plan(tmp_path, checkpoint, configurations, seeds=[3])
    run = subprocess.run(
        [sys.executable, "-m", "headless.sweep", str(plan), "--runner", "ray", "--local-cpus", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    with open(tmp_path / "results" / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["configuration"], r["subject"], r["seed"], r["status"]) for r in table] == [
        ("tap8", "dog", "3", "done"),
        ("coft4", "dog", "3", "done"),
    ]
    assert list(table[0]) == list(COLUMNS)
    for row in table:
        assert float(row["final_loss"]) > 0 and float(row["seconds_per_step"]) > 0 and int(row["steps"]) == 2
        assert Path(row["adapter"]).is_file()
    assert int(table[0]["trainable_parameters"]) != int(table[1]["trainable_parameters"])  # tap vs COFT
    markdown = (tmp_path / "results" / "results.md").read_text()
    assert markdown.startswith("| configuration | subject | seed |") and markdown.count("| done |") == 2
    result = json.loads((tmp_path / "results" / "jobs" / "coft4__dog__s3" / "result.json").read_text())
    assert result["status"] == "done" and result["processes"] == 1
