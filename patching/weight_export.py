"""Adapter sets that change weights only, written as the weight differences stock LoRA loaders apply.

ComfyUI's ``LoraLoader``/``LoraLoaderModelOnly`` read ``diffusion_model.<layer>.diff`` tensors and
add ``strength * diff`` to the weight. Writing ``diff = new weight - weight`` reproduces the
adapter exactly at strength 1 (other strengths then scale the difference linearly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..adapter_core.kind import AdapterSetBase
from .model_access import DIFFUSION_PREFIX, model_view


def original_weight_of(model: Any) -> Callable[[str], torch.Tensor]:
    """``path -> fp32 copy of its unpatched weight``, even while some clone's patches are loaded.

    ComfyUI's ``get_key_patches`` gives each weight's original tensor with its conversion
    function first. One layer at a time, so an export never holds a second copy of every weight.
    """
    patches = model.get_key_patches(filter_prefix=DIFFUSION_PREFIX)

    def weight_of(path: str) -> torch.Tensor:
        weight, convert = patches[f"{DIFFUSION_PREFIX}{path}.weight"][0]
        # A copy: ``convert`` may work in place, and the model's own tensor must stay as it is.
        return convert(weight.detach().to(torch.float32, copy=True), inplace=True)

    return weight_of


def lora_differences(
    model: Any, adapter_set: AdapterSetBase[Any], strength: float = 1.0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The ``diffusion_model.<layer>.diff`` tensors that make a stock LoRA loader reproduce ``adapter_set``."""
    adapter_set.check_fits(model_view(model))
    diffs = adapter_set.weight_differences(original_weight_of(model), strength, dtype)
    return {f"{DIFFUSION_PREFIX}{path}.diff": diff for path, diff in diffs.items()}
