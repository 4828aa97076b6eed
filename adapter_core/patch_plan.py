"""What an adapter set asks of the host, in host-neutral terms.

Adapter kinds never touch a host model. They describe what should change, with three
mechanisms the host (``patching/``, on ComfyUI) knows how to carry out and undo exactly:

* ``hooks``: modules that read and add at positions inside a block (tap adapters), per block;
* ``child_wrappers``: children of a transformer block (``attn1``, ``attn2``, ``ff``) replaced,
  for the length of the patch, by a wrapper built around the original child (OFT training);
* ``weight_functions``: a layer's weight replaced by ``function(weight, strength)`` when the
  model loads (OFT merged for sampling).

A plan carries no strength: the host applies one strength to every entry when it installs the
plan, as ComfyUI gives its own weight adapters the strength when it applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

#: ``weights_of(layer, x)``: the effective weight and bias of a linear layer for input ``x`` (after
#: the host's casting, offloading and weight functions), and an opaque handle the host needs back
#: to release them (``None`` when there is nothing to release).
WeightsOf = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None, Any]]
#: ``attention(q, k, v, heads, mask, attn_precision, transformer_options)``: the host's attention kernel.
AttentionFn = Callable[..., torch.Tensor]


def plain_weights(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """A layer's own weight and bias on ``x``'s device and dtype (a host without casting of its own)."""
    bias = getattr(layer, "bias", None)
    return layer.weight.to(x), (bias.to(x) if bias is not None else None), None


@dataclass(frozen=True)
class HostOps:
    """The host functions a child wrapper computes with."""

    attention: AttentionFn
    weights_of: WeightsOf = plain_weights
    #: ``release_weights(layer, cast)``, called with what ``weights_of`` returned once the wrapper is
    #: done with it (a host that casts layers into temporary or pinned buffers releases them here).
    release_weights: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor | None, Any]], None] | None = None


class WeightFunction(Protocol):
    """``function(weight, strength) -> new weight`` (fp32 in, any float dtype out); pure and repeatable."""

    def __call__(self, weight: torch.Tensor, strength: float) -> torch.Tensor: ...


ChildWrapper = Callable[[nn.Module, HostOps], nn.Module]


@dataclass
class PatchPlan:
    """The changes one adapter set makes to a model, keyed by module path inside ``diffusion_model``."""

    #: block path -> hook modules in stacking order
    hooks: dict[str, list[nn.Module]] = field(default_factory=dict)
    #: transformer block path -> ``{child name: wrapper factory}``
    child_wrappers: dict[str, dict[str, ChildWrapper]] = field(default_factory=dict)
    #: linear layer path -> function of its weight
    weight_functions: dict[str, WeightFunction] = field(default_factory=dict)

    def blocks(self) -> list[str]:
        """Every block path the plan replaces (hooks or wrapped children), in first-mention order."""
        return list(dict.fromkeys([*self.hooks, *self.child_wrappers]))

    def is_empty(self) -> bool:
        """True when the plan changes nothing."""
        return not (self.hooks or self.child_wrappers or self.weight_functions)
