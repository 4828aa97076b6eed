"""OFT -> LoRA-style weight differences, measured against the MODEL's original weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..adapter_core.oft_export import oft_weight_diffs
from ..adapter_core.oft_set import OFTAdapterSet
from .model_access import DIFFUSION_PREFIX
from .oft_patches import check_oft_fits


def original_weight_of(model: Any) -> Callable[[str], torch.Tensor]:
    """``path -> fp32 copy of its unpatched weight``, even while some clone's patches are loaded.

    One layer at a time, so an export never holds a second copy of every rotated weight.
    """
    patches = model.get_key_patches(filter_prefix=DIFFUSION_PREFIX)

    def weight_of(path: str) -> torch.Tensor:
        weight, convert = patches[f"{DIFFUSION_PREFIX}{path}.weight"][0]
        # A copy: ``convert`` may work in place, and the model's own tensor must stay as it is.
        return convert(weight.detach().to(torch.float32, copy=True), inplace=True)

    return weight_of


def oft_as_lora(
    model: Any, oft_set: OFTAdapterSet, strength: float = 1.0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The ``<layer>.diff`` tensors that make a stock LoRA loader reproduce ``oft_set`` on ``model``."""
    check_oft_fits(model, oft_set)
    return oft_weight_diffs(oft_set, original_weight_of(model), strength, dtype)
