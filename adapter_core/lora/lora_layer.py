"""One LoRA layer: the ``down``/``up`` pair and ``alpha`` of a linear layer, its training and merged forms.

The change to the layer's weight ``W`` (``out x in``) at strength ``s`` is
``s * (alpha / rank) * up @ down``. At sampling it is merged into the weight once (the same
arithmetic as ComfyUI's own LoRA weight adapter, so a file loaded by either gives the same
weights); while training the weight stays frozen and the product is applied to activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .lora_config import InitMode, LoRAConfigError


def fp32_value(value: float) -> float:
    """``value`` rounded to float32, as a file's ``alpha`` tensor holds it (and every reader sees it)."""
    return float(torch.tensor(float(value), dtype=torch.float32))


class LoRALayer(nn.Module):
    """``down`` (``rank x in``), ``up`` (``out x rank``) and ``alpha`` for one linear layer.

    ``alpha`` is kept as its float32 value (what the file stores), so the scale ``alpha / rank``
    is the same number here and in any tool reading the file.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, where: str = "layer") -> None:
        super().__init__()
        if min(in_features, out_features) < 1:
            raise LoRAConfigError(f"{where}: a linear layer of shape {out_features}x{in_features} cannot carry LoRA")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.rank = int(rank)
        self.alpha = fp32_value(alpha)
        self.down = nn.Parameter(torch.zeros(self.rank, self.in_features))
        self.up = nn.Parameter(torch.zeros(self.out_features, self.rank))

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}"

    def initialise_(self, init: InitMode, generator: torch.Generator) -> LoRALayer:
        """Random ``down`` from ``generator`` (``kaiming`` uniform or ``normal``), zero ``up``; returns self."""
        with torch.no_grad():
            if init == "kaiming":
                nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
            elif init == "normal":
                self.down.copy_(torch.randn(self.down.shape, generator=generator) / self.rank)
            else:
                raise LoRAConfigError(f"unknown init {str(init)[:40]!r}", input_name="init")
            self.up.zero_()
        return self

    def delta(self, strength: float = 1.0, device: torch.device | None = None) -> torch.Tensor:
        """``strength * (alpha / rank) * up @ down`` in float32 (``out x in``)."""
        up = self.up.to(device=device, dtype=torch.float32)
        down = self.down.to(device=device, dtype=torch.float32)
        return (strength * self.scale) * torch.mm(up, down)

    def merged_weight(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """``W + strength * (alpha / rank) * up @ down``, in ``weight``'s dtype.

        The product is formed in float32 on the weight's device and scaled by one factor,
        as ComfyUI's LoRA weight adapter does, so both give the same weight.
        """
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise LoRAConfigError(
                f"a LoRA for a {self.out_features}x{self.in_features} weight cannot apply to one of shape "
                f"{tuple(weight.shape)}"
            )
        return weight + self.delta(strength, weight.device).to(weight.dtype)

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, strength: float = 1.0
    ) -> torch.Tensor:
        """The adapted layer on ``x`` with the frozen ``weight``/``bias``: gradients reach ``down`` and ``up``."""
        base = F.linear(x, weight, bias)
        low = F.linear(F.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype))
        return base + (strength * self.scale) * low


class LoRAMerge:
    """The weight function of a merged LoRA layer: ``W -> W + s * (alpha / rank) * up @ down``."""

    def __init__(self, layer: LoRALayer) -> None:
        self.layer = layer

    def __call__(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        with torch.no_grad():
            return self.layer.merged_weight(weight, strength)
