"""A linear layer computed through an OFT rotation with gradients: the training form.

At inference a rotation is merged into the weight once; while training, the weight
must stay frozen and the gradient must reach ``P``, so the layer is replaced (as an
object patch) by :class:`OFTLinear`.

The wrapper never holds the weight itself: ``weight`` and ``bias`` are read from and
written to the wrapped layer. Weight patching (LoRAs, ComfyUI's load/unload) swaps the
``Parameter`` objects of a layer; a wrapper that captured them once would keep a stale
one (for example the weight of another clone that happened to be loaded when the
wrapper was built).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .oft import OFTRotation

_DELEGATED = ("weight", "bias")


class OFTLinear(nn.Module):
    """``y = diag(m) W R^T x + b`` with ``W``, ``b`` (frozen) taken from the wrapped layer at call time."""

    def __init__(
        self,
        base: nn.Module,
        rotation: OFTRotation,
        strength: float = 1.0,
        neumann_terms: int | None = None,
    ) -> None:
        super().__init__()
        # Not a registered child: the module tree keeps exactly the paths it had.
        object.__setattr__(self, "base_layer", base)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.oft = rotation
        self.strength = float(strength)
        self.neumann_terms = neumann_terms
        self.train(base.training)

    def __getattr__(self, name: str) -> Any:
        if name in _DELEGATED:
            return getattr(object.__getattribute__(self, "base_layer"), name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _DELEGATED:
            setattr(self.base_layer, name, value)
        else:
            super().__setattr__(name, value)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "OFTLinear":
        # Moving the model (ComfyUI's full load) must move the wrapped layer too.
        super()._apply(fn, recurse)
        self.base_layer._apply(fn, recurse)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.oft.linear(
            x, self.base_layer.weight, getattr(self.base_layer, "bias", None), self.strength, self.neumann_terms
        )
