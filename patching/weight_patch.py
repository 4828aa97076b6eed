"""The shape of a ComfyUI weight patch computed by a function of the weight and the patch strength."""

from __future__ import annotations

from typing import Any

import torch
from comfy.weight_adapter.base import WeightAdapterBase


class FunctionalWeightPatch(WeightAdapterBase):
    """A weight patch whose new weight is ``self.apply(weight, strength)``.

    ComfyUI calls ``calculate_weight`` when it loads a clone carrying the patch (with the
    weight in fp32 and the patch's strength) and keeps the original to restore on unload.
    """

    name = "taptune"

    def __init__(self) -> None:
        self.loaded_keys: set[str] = set()
        self.weights: list[torch.Tensor] = []

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        raise NotImplementedError

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
            return self.apply(weight, strength)
