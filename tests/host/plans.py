"""Adapter sets on MODELs the way the pack installs them, for tests that look inside."""

from __future__ import annotations

from typing import Any

from taptune.adapter_core import OFTAdapterSet, OFTSpec
from taptune.patching.apply import apply_adapter_set
from taptune.patching.install import install_plan
from taptune.patching.model_access import model_view


def with_adapters(model: Any, adapter_set: Any, strength: float = 1.0) -> Any:
    """A clone carrying ``adapter_set`` for sampling (tap hooks, or OFT merged into the weights)."""
    return apply_adapter_set(model, adapter_set, strength)


def with_oft_training_form(model: Any, oft_set: OFTAdapterSet, neumann_terms: int | None = None) -> Any:
    """A clone computing through ``oft_set``'s training wrappers (gradients reach ``P``)."""
    plan = OFTSpec(neumann_terms=neumann_terms).training_plan(oft_set, model_view(model))
    return install_plan(model.clone(), plan)
