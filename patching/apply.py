"""Putting any adapter set (or file) on a MODEL: registry lookup, architecture check, plan, clone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..adapter_core.architecture import check_architecture
from ..adapter_core.file_format import AdapterFile, load_adapter_file
from ..adapter_core.kind import AdapterSetBase
from ..adapter_core.registry import adapter_set_from_file
from .install import install_plan
from .model_access import model_architecture, model_view


def adapter_set_for_model(adapter_file: AdapterFile, model: Any | None = None) -> AdapterSetBase[Any]:
    """Rebuild the adapter set of a parsed file (``model``, if given, supplies sizes a file may leave out)."""
    return adapter_set_from_file(adapter_file, model_view(model) if model is not None else None)


def apply_adapter_set(model: Any, adapter_set: AdapterSetBase[Any], strength: float = 1.0) -> Any:
    """A clone of ``model`` carrying ``adapter_set`` at ``strength``; ``model`` is never changed.

    Strength 0 returns a plain clone (exactly the input model). The set's modules are shared
    with the clone (not copied), so training them changes what the clone computes.
    """
    view = model_view(model)
    adapter_set.check_fits(view)
    patched = model.clone()
    if strength == 0.0:
        return patched
    return install_plan(patched, adapter_set.inference_plan(view), strength)


def apply_adapter_file(model: Any, path: str | os.PathLike[str], strength: float = 1.0) -> Any:
    """Read an adapter file, refuse it if it was made for another architecture, and apply it."""
    adapter_file = load_adapter_file(path)
    check_architecture(adapter_file.base, model_architecture(model), f"adapter '{Path(path).name}'")
    return apply_adapter_set(model, adapter_set_for_model(adapter_file, model), strength)
