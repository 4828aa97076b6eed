"""The pack's one error family.

Every problem the pack reports about its inputs — a node input, a configuration, a file, a
model it cannot work with — is a :class:`TapTuneError`. The error carries what it concerns
(``input_name``, ``file``) as attributes, so the node layer can name the node, the input and
the file without reading the message text; the innermost code that knows a fact fills it in,
outer layers only add what is still missing (:meth:`TapTuneError.concerning`).

It derives from ``ValueError`` so that callers written against plain Python conventions
("bad value") keep working.
"""

from __future__ import annotations

from typing import TypeVar

_E = TypeVar("_E", bound="TapTuneError")


class TapTuneError(ValueError):
    """Base of every error the pack raises for bad input, files or models.

    ``input_name`` names the input (a node input or a configuration field) at fault;
    ``file`` the file (as the user knows it: a name, never a server path) it was found in.
    """

    def __init__(self, message: str, *, input_name: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.input_name = input_name
        self.file = file

    def concerning(self: _E, *, input_name: str | None = None, file: str | None = None) -> _E:
        """Record the input and/or file where not known yet; returns the error itself (for ``raise``)."""
        if self.input_name is None and input_name:
            self.input_name = input_name
        if self.file is None and file:
            self.file = file
        return self

    def __str__(self) -> str:
        if self.file and not self.message.startswith(self.file):
            return f"{self.file}: {self.message}"
        return self.message


class ConfigError(TapTuneError):
    """A configuration the method does not allow (a tap-point pair, an OFT block count, a target...)."""


class AdapterFileError(TapTuneError):
    """A file that is not a readable adapter (or importable foreign adapter) file."""


class ArchitectureMismatchError(TapTuneError):
    """An adapter made for another base architecture than the MODEL it is applied to."""


class UnsupportedModelError(TapTuneError):
    """A MODEL the pack cannot adapt (not a UNet of the SD 1.x / SD 2.x / SDXL kind)."""


class UnsupportedOperationError(TapTuneError):
    """An operation an adapter kind cannot perform (e.g. exporting activation adapters as weight differences)."""
