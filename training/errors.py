"""Errors the training nodes turn into messages that name the node and the input."""

from __future__ import annotations


class TrainingInputError(ValueError):
    """Bad training input, found before any training starts; names the input at fault."""

    def __init__(self, input_name: str, message: str) -> None:
        super().__init__(message)
        self.input_name = input_name


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the adapter of the last good step is kept."""
