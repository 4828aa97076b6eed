"""Data-parallel training under torchrun (gloo, on the CPU): the same run as one process, failures that say so.

torchrun starts real processes (``python -m torch.distributed.run``), each importing ComfyUI and
loading the test checkpoint with the stock loader; the one-process runs happen in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from devtools.comfy_host import ROOT
from headless.train import KILL_AT_VARIABLE, run_job
from taptune.training.run_state import RunState

from .job_helpers import write_job


@pytest.fixture()
def checkpoint(sd15_checkpoint_name: str, base_dir: Path) -> Path:
    return (base_dir / "models" / "checkpoints" / sd15_checkpoint_name).resolve()


def torchrun(job: Path, processes: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += ["-m", "headless.train", str(job), "--device", "cpu", "--timeout", "60", *args]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


#: Plain SGD: the adapter is then the sum of the gradients, so the comparison measures the gradients themselves
#: (Adam divides by each gradient's own size, which magnifies float rounding in entries whose gradient is ~0).
SGD = {"optimizer": "sgd", "learning_rate": 0.5, "steps": 3}


def test_two_processes_train_the_adapter_of_one_process_and_their_checkpoint_resumes_in_one(tmp_path, checkpoint):
    # batch_size is the global batch: two processes compute one sample each of every batch of 2.
    two = write_job(tmp_path / "two", checkpoint, checkpoint_every=2, **SGD)
    run = torchrun(two, 2, "--result", str(tmp_path / "two.json"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    two_row = json.loads((tmp_path / "two.json").read_text())
    assert two_row["processes"] == 2 and two_row["steps"] == 3

    one_row = run_job(write_job(tmp_path / "one", checkpoint, **SGD))
    by_two, by_one = load_file(two_row["adapter"]), load_file(one_row["adapter"])
    largest = max(float(t.abs().max()) for t in by_one.values())
    assert largest > 1e-4  # it trained (the up weights start at 0)
    difference = max_difference(by_two, by_one)
    print(f"max abs difference, 2 processes x batch 1 vs 1 process x batch 2: {difference:.3g} (largest {largest:.3g})")
    assert difference < 1e-5 * largest
    assert abs(two_row["final_loss"] - one_row["final_loss"]) < 1e-5

    # The 2-process checkpoint of step 2 continues in one process to the same adapter.
    (step2,) = (two.parent / "checkpoints").glob("*/step_000002.ckpt")
    resumed = run_job(write_job(tmp_path / "resumed", checkpoint, **SGD), resume=str(step2))
    assert resumed["steps"] == 3
    assert max_difference(load_file(resumed["adapter"]), by_one) < 1e-5 * largest


def test_two_processes_train_with_the_trigger_word_prior_as_one_process_does(tmp_path, checkpoint):
    """The trigger word's prior draws its own noise for the whole batch; each process takes its rows of it."""
    settings = {**SGD, "trigger_word_prior": 10.0}
    run = torchrun(write_job(tmp_path / "two", checkpoint, **settings), 2, "--result", str(tmp_path / "two.json"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    by_two = load_file(json.loads((tmp_path / "two.json").read_text())["adapter"])
    one_row = run_job(write_job(tmp_path / "one", checkpoint, **settings))
    by_one = load_file(one_row["adapter"])
    without = load_file(run_job(write_job(tmp_path / "off", checkpoint, **SGD))["adapter"])
    largest = max(float(t.abs().max()) for t in by_one.values())
    assert max_difference(by_one, without) > 1e-3 * largest  # the term changes the run
    assert max_difference(by_two, by_one) < 1e-5 * largest


def test_a_killed_rank_stops_the_run_with_a_message_and_leaves_the_last_checkpoint(tmp_path, checkpoint):
    job = write_job(tmp_path / "killed", checkpoint, steps=6, checkpoint_every=1)
    run = torchrun(job, 2, env={KILL_AT_VARIABLE: "1:2"})  # rank 1 dies (SIGKILL) right after step 2
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "TapTune headless: rank 0 of 2" in output and "without writing the adapter" in output
    assert not (job.parent / "adapter.safetensors").exists()
    saved = sorted((job.parent / "checkpoints").glob("*/step_*.ckpt"))
    assert saved, output[-3000:]
    last = RunState.load(saved[-1])  # whole, readable, consistent
    assert 1 <= last.step <= 3 and len(last.losses) == last.step
    assert f"--resume {saved[-1]}" in output
