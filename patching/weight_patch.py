"""A ComfyUI weight patch computed by a function of the weight and the patch strength.

ComfyUI calls ``calculate_weight`` of a ``WeightAdapterBase`` when it loads a clone carrying the
patch (with the weight in fp32 and the patch's strength) and keeps the original to restore on
unload. Its dynamic-VRAM loading (the default on NVIDIA GPUs since ComfyUI 0.4x) wraps each
patch per layer and rebuilds it as ``type(p)(p.loaded_keys, p.weights)``: so all state lives
in those two attributes and the constructor takes exactly them; the function is the one
element of ``weights``. Expensive results (an OFT rotation per strength) are cached by the
function object, which survives the rebuild.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ..adapter_core.patch_plan import WeightFunction


class FunctionalWeightPatch(WeightAdapterBase):
    """A weight patch whose new weight is ``weights[0](weight, strength)``."""

    name = "taptune"

    def __init__(self, loaded_keys: set[str], weights: tuple[WeightFunction, ...]) -> None:
        self.loaded_keys = loaded_keys
        self.weights = weights

    @classmethod
    def of(cls, function: WeightFunction) -> FunctionalWeightPatch:
        """The patch applying ``function``."""
        return cls(set(), (function,))

    def calculate_weight(
        self,
        weight: torch.Tensor,
        key: str,
        strength: float,
        strength_model: float,
        offset: Any,
        function: Any,
        intermediate_dtype: torch.dtype = torch.float32,
        original_weight: Any = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            return self.weights[0](weight, strength)


def same_value(weight: torch.Tensor, strength: float) -> torch.Tensor:
    """The weight itself: a patch that only makes the host put a fresh tensor in place."""
    return weight
