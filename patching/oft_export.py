"""OFT -> LoRA-style weight differences, measured against the MODEL's original weights."""

from __future__ import annotations

from typing import Any

import torch

from ..adapter_core.oft_export import oft_weight_diffs
from ..adapter_core.oft_set import OFTAdapterSet
from .model_access import DIFFUSION_PREFIX
from .oft_patches import check_oft_fits


def original_weights(model: Any, paths: list[str]) -> dict[str, torch.Tensor]:
    """The unpatched weights of ``paths``, even while some clone's patches are loaded."""
    patches = model.get_key_patches(filter_prefix=DIFFUSION_PREFIX)
    out = {}
    for path in paths:
        weight, convert = patches[f"{DIFFUSION_PREFIX}{path}.weight"][0]
        out[path] = convert(weight.detach().to(torch.float32).clone(), inplace=True)
    return out


def oft_as_lora(
    model: Any, oft_set: OFTAdapterSet, strength: float = 1.0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The ``<layer>.diff`` tensors that make a stock LoRA loader reproduce ``oft_set`` on ``model``."""
    check_oft_fits(model, oft_set)
    return oft_weight_diffs(oft_set, original_weights(model, list(oft_set.rotations)), strength, dtype)
