"""Errors of training runs, in the pack's error family (``adapter_core.errors``)."""

from __future__ import annotations

from ..adapter_core.errors import TapTuneError


class TrainingInputError(TapTuneError):
    """Bad training input, found before any training starts; names the input at fault."""

    def __init__(self, input_name: str, message: str) -> None:
        super().__init__(message, input_name=input_name)


class TrainingDivergedError(TapTuneError):
    """The loss or the gradients became NaN or infinite; nothing of the run is returned."""


class CheckpointWriteError(TapTuneError):
    """A training checkpoint could not be written (disk full, folder not writable...); the run stops."""
