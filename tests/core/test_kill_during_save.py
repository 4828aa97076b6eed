"""Saves survive being killed at any moment: the old file or the new one, never half of one.

A child process (``save_loop_child``) saves in a loop, adapter files the way TapTuneSaveAdapter
writes them (new numbered files) and a training checkpoint the way the trainer writes it
(``RunState.save``, replacing), and is killed with SIGKILL after a random (seeded) delay, 50
times in all. After each kill:

* every file under a final name loads and is exactly one generation the child wrote: for the
  checkpoint, the one before the kill or the one being written; for adapter files, every
  reported file unchanged and at most one more, complete;
* the dead child's temporary files are deleted by the next save into the folder, and nothing
  else is left behind.

The test also counts the kills that landed while a temporary file existed (inside a write), so
that it demonstrably covers the window that matters.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from devtools.comfy_host import ROOT
from taptune.adapter_core.file_format import read_header
from taptune.adapter_core.safe_write import TEMP_MARKER, TEMP_SUFFIX
from taptune.training.run_state import RunState

from .save_loop_child import CHECKPOINT, adapter_content, checkpoint_content, save

SEED = 50
KILLS = {"adapter": 25, "checkpoint": 25}
#: The longest random delay between letting a child start saving and killing it (several saves).
MAX_DELAY_S = 0.4


def spawn(mode: str, folder: Path) -> subprocess.Popen[str]:
    """A child saving into ``folder``, started (imports running) but waiting for its first generation."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.core.save_loop_child", mode, str(folder)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def files_under(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """(files by relative name, temporaries: the writers' temporary folders) anywhere under ``folder``.

    Every other file counts as final, whatever its name: a stray temporary of some library
    (safetensors writes through a ``.tmpXXXXXX`` of its own) must not be left in the user's folder.
    """
    finals, temporaries = {}, []
    for path in folder.rglob("*"):
        if path.name.endswith(TEMP_SUFFIX):
            temporaries.append(path)
        elif path.is_file() and not any(part.endswith(TEMP_SUFFIX) for part in path.relative_to(folder).parts):
            finals[path.relative_to(folder).as_posix()] = path
    return finals, temporaries


def adapter_generation(path: Path) -> int:
    """The generation of a complete adapter file (every tensor checked against it); fails on a partial one."""
    generation = read_header(path)["generation"]
    tensors = load_file(str(path))
    expected = adapter_content(generation).tensors
    assert tensors.keys() == expected.keys(), path
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), (path, key)
    return generation


def checkpoint_generation(path: Path) -> int:
    """The generation of a complete checkpoint (loaded as the trainer loads it); fails on a partial one."""
    state = RunState.load(path)
    generation = int(state.losses[0])
    expected = checkpoint_content(generation)
    for value, wanted in zip(state.parameters, expected.parameters, strict=True):
        assert torch.equal(value, wanted), path
    assert torch.equal(state.generator, expected.generator) and state.scheduler == expected.scheduler
    return generation


def identity(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten."""
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def killed_before_its_marker_under_a_reused_id(temporary: Path) -> bool:
    """The one temporary a save may leave: its writer died before its marker named the folder, and its id runs again.

    Then nothing tells a dead writer from a live one that has just begun (safe_write keeps such a
    folder, which holds no data, until its id is free); this happens only when another process
    takes the dead child's id between the kill and the next save.
    """
    pid = int(temporary.name.split(".")[-3])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    contents = [p for p in temporary.iterdir() if p.name != TEMP_MARKER]
    marker = temporary / TEMP_MARKER
    complete = marker.exists() and marker.read_bytes() == temporary.name.encode()
    return not contents and not complete


def kill_loop(mode: str, folder: Path, rng: random.Random) -> int:
    """Run and kill ``KILLS[mode]`` children, checking the folder after each; returns the kills inside a write."""
    known: dict[str, tuple[int, tuple[int, int, int]]] = {}  # adapter files: name -> (generation, identity)
    on_disk: int | None = None  # the checkpoint's generation
    generation = 1
    inside_write = 0
    waiting = child = spawn(mode, folder)
    try:
        for _ in range(KILLS[mode]):
            child, waiting = waiting, spawn(mode, folder)  # the next one imports while this one saves
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline() == "ready\n"
            child.stdin.write(f"{generation}\n")
            child.stdin.flush()
            time.sleep(rng.uniform(0.0, MAX_DELAY_S))
            child.send_signal(signal.SIGKILL)
            child.wait()  # reaped: its pid no longer runs, so its temporaries count as stale
            done = [line.split() for line in child.stdout.read().splitlines()]
            child.stdout.close()
            child.stdin.close()
            assert all(word == "done" for word, _, _ in done), done
            reported = {name: int(g) for _, g, name in done}
            in_flight = int(done[-1][1]) + 1 if done else generation

            finals, temporaries = files_under(folder)
            if any(f".{child.pid}." in t.name for t in temporaries):
                inside_write += 1
            if mode == "adapter":
                for name, g in reported.items():
                    assert name in finals, f"{name} was reported saved but is missing"
                    known[name] = (adapter_generation(finals[name]), identity(finals[name]))
                    assert known[name][0] == g
                unreported = [name for name in finals if name not in known]
                # Killed between the link and the report: that file must be whole.
                assert len(unreported) <= 1, unreported
                for name in unreported:
                    known[name] = (adapter_generation(finals[name]), identity(finals[name]))
                    assert known[name][0] == in_flight
                for name, (_, ident) in known.items():
                    assert identity(finals[name]) == ident, f"{name} was changed after it was saved"
            else:
                assert set(finals) <= {CHECKPOINT.as_posix()}, finals
                before_kill = int(done[-1][1]) if done else on_disk
                if CHECKPOINT.as_posix() in finals:
                    on_disk = checkpoint_generation(finals[CHECKPOINT.as_posix()])
                    assert on_disk in (before_kill, in_flight), (on_disk, before_kill, in_flight)
                else:
                    assert before_kill is None  # nothing was ever saved yet

            # The next save (here, in this process) deletes the dead child's temporaries, and its own.
            generation = in_flight + 1
            name = save(mode, folder, generation)
            finals, temporaries = files_under(folder)
            assert [t for t in temporaries if not killed_before_its_marker_under_a_reused_id(t)] == [], temporaries
            if mode == "adapter":
                known[name] = (adapter_generation(finals[name]), identity(finals[name]))
                assert len(finals) == len(known)
            else:
                on_disk = checkpoint_generation(finals[name])
                assert on_disk == generation
            generation += 1
    finally:
        for process in {waiting, child}:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()
    return inside_write


def test_killed_saves_leave_whole_files_and_stale_temporaries_are_cleaned(tmp_path):
    rng = random.Random(SEED)
    inside = {mode: kill_loop(mode, tmp_path / mode, rng) for mode in KILLS}
    assert sum(KILLS.values()) == 50
    # Both kinds of save were killed inside a write several times, so the window was covered.
    assert all(count >= 3 for count in inside.values()), inside
    assert os.listdir(tmp_path / "adapter") == ["kill"]
