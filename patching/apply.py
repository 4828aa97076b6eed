"""One entry point for putting any adapter set (or file) on a MODEL, dispatching on its kind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from ..adapter_core.base_fingerprint import check_base
from ..adapter_core.file_format import AdapterFile, AdapterFileError, load_adapter_file
from ..adapter_core.oft_set import OFTAdapterSet
from ..adapter_core.tap_set import TapAdapterSet
from .model_access import model_fingerprint, model_linear_layers
from .oft_patches import with_oft_merged
from .tap_patches import with_tap_adapters

AdapterSet = Union[TapAdapterSet, OFTAdapterSet]


def adapter_set_from_file(adapter_file: AdapterFile, model: Any | None = None) -> AdapterSet:
    """Rebuild the adapter set of a parsed file (``model`` resolves shared OFT block counts)."""
    if adapter_file.kind == "tap":
        return TapAdapterSet.from_file(adapter_file)
    if adapter_file.kind == "oft":
        layers = None
        if model is not None:
            names = [m for entry in adapter_file.adapters for m in entry.get("modules", [])]
            layers = model_linear_layers(model, names)
        return OFTAdapterSet.from_file(adapter_file, layers)
    raise AdapterFileError(f"unknown adapter kind {adapter_file.kind!r}")


def apply_adapter_set(model: Any, adapter_set: AdapterSet, strength: float = 1.0) -> Any:
    """A clone of ``model`` carrying ``adapter_set`` at ``strength``."""
    if isinstance(adapter_set, OFTAdapterSet) or getattr(adapter_set, "kind", None) == "oft":
        return with_oft_merged(model, adapter_set, strength)
    return with_tap_adapters(model, adapter_set, strength)


def apply_adapter_file(model: Any, path: str | os.PathLike[str], strength: float = 1.0) -> Any:
    """Read an adapter file, refuse it if it was made for another base, and apply it."""
    adapter_file = load_adapter_file(path)
    check_base(adapter_file.base, model_fingerprint(model), f"adapter '{Path(path).name}'")
    return apply_adapter_set(model, adapter_set_from_file(adapter_file, model), strength)
