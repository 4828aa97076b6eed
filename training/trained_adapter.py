"""What a TAPTUNE_ADAPTER socket carries: trained adapters plus what a shared file should record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..adapter_core.file_format import AdapterFile


@dataclass
class TrainedAdapter:
    """A frozen adapter set, the base architecture it fits, and the run's facts."""

    adapter_set: Any
    base: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.adapter_set.kind

    def to_file(self) -> AdapterFile:
        """The ``taptune/1`` file content (trigger word, class word, steps, final loss, configuration)."""
        return self.adapter_set.to_file(base=self.base, **self.info)
