"""Numbered adapter files of a running training: ``models/adapters/taptune/steps/<run>_stepNNNNN.safetensors``.

TapTuneDreamBoothTrain writes one every ``save_every`` steps and one when it is cancelled, so a
user can load the adapter of step 400 in another tab while the run goes on (TapTune Load
Adapter lists the file at once: ComfyUI rescans a folder whose time stamp changed). A run keeps
only its ``keep_last`` newest step files; files it did not write are never touched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..adapter_core.file_format import write_adapter_file
from ..adapter_core.safe_write import atomic_write
from ..training.trained_adapter import TrainedAdapter
from .common import adapters_output_folder

#: Below the adapters folder.
STEPS_FOLDER = "taptune/steps"


class StepAdapters:
    """The numbered files of one run, named ``<run>_stepNNNNN.safetensors``, at most ``keep_last`` of them."""

    def __init__(self, run: str, keep_last: int) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", run):
            raise ValueError(f"not a run name: {run!r}")
        self.run = run
        self.keep_last = max(1, keep_last)
        self.written: list[Path] = []

    def folder(self) -> Path:
        return adapters_output_folder() / STEPS_FOLDER

    def write(self, adapter_set: Any, base: dict[str, Any], step: int, info: dict[str, Any]) -> str:
        """Write the adapter of ``step``; returns its name as TapTune Load Adapter lists it."""
        folder = self.folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.run}_step{step:05d}.safetensors"
        content = TrainedAdapter(adapter_set, base, {**info, "steps": step}).to_file()
        atomic_write(path, lambda tmp: write_adapter_file(tmp, content), replace=True)  # cancel at a saved step
        if path not in self.written:
            self.written.append(path)
        while len(self.written) > self.keep_last:
            self.written.pop(0).unlink(missing_ok=True)
        return path.relative_to(adapters_output_folder()).as_posix()
