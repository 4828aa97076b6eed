"""A linear layer computed through an OFT rotation with gradients: the training form.

At inference a rotation is merged into the weight once; while training, the weight
must stay frozen and the gradient must reach ``P``, so the layer is replaced (as an
object patch) by :class:`OFTLinear`. It adopts the original ``weight`` and ``bias``
Parameters under the same names, so weight paths and weight patches keep working.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .oft import OFTRotation

OFT_CHILD = "oft"


class OFTLinear(nn.Module):
    """``y = diag(m) W R^T x + b`` with ``W``, ``b`` frozen from the base layer."""

    def __init__(
        self,
        base: nn.Module,
        rotation: OFTRotation,
        strength: float = 1.0,
        neumann_terms: int | None = None,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "base_layer", base)
        self.weight = base.weight
        self.bias = getattr(base, "bias", None)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.oft = rotation
        self.strength = float(strength)
        self.neumann_terms = neumann_terms
        self.train(base.training)
        self._register_state_dict_hook(_drop_rotation_tensors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.oft.linear(x, self.weight, self.bias, self.strength, self.neumann_terms)


def _drop_rotation_tensors(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    marker = prefix + OFT_CHILD + "."
    for key in [k for k in state_dict if k.startswith(marker)]:
        del state_dict[key]
